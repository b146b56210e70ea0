// Seed 000's Socket.IO example for batches ("WebSocket события для Batch") as written,
// on the connection of its "Подключение" example; only the base URL, the key and the
// batch id are changed (FLUX_BASE_URL, FLUX_API_KEY, FLUX_CHANNEL). The lines after the
// seed's end the run for the test (tests/compat/test_v2_socketio.py).
import { io } from 'socket.io-client';

const socket = io(process.env.FLUX_BASE_URL, {
auth: {
token: process.env.FLUX_API_KEY
}
});
// Подписка на batch канал
socket.emit('subscribe', { channel: process.env.FLUX_CHANNEL });
// События
socket.on('batch_started', (data) => {
console.log('Batch processing started');
});
socket.on('job_completed', (data) => {
console.log(`Job ${data.job_id} completed`);
});
socket.on('batch_completed', (data) => {
console.log('All jobs completed');
});

// --- the test's own lines ---
socket.on('batch_completed', (data) => {
  console.log(`status ${data.status} ${data.completed}/${data.total}`);
  socket.close();
});
socket.on('connect_error', (err) => {
  console.log(`connect_error ${err.message}`);
  process.exit(2);
});
