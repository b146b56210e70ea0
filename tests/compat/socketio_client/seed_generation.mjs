// Seed 000's Socket.IO example ("WebSocket События": Подключение) as written; only the
// base URL, the key and the channel's id are changed (FLUX_BASE_URL, FLUX_API_KEY,
// FLUX_CHANNEL). The lines after the seed's end the run for the test
// (tests/compat/test_v2_socketio.py).
import { io } from 'socket.io-client';

const socket = io(process.env.FLUX_BASE_URL, {
auth: {
token: process.env.FLUX_API_KEY
}
});
// Подписка на канал генерации
socket.emit('subscribe', { channel: process.env.FLUX_CHANNEL });
// Обработка событий
socket.on('generation_progress', (data) => {
console.log(`Progress: ${data.progress}%`);
});

// --- the test's own lines ---
socket.on('generation_started', (data) => console.log(`started ${data.image_id}`));
socket.on('generation_complete', (data) => {
  console.log(`complete ${JSON.stringify(data)}`);
  socket.close();
});
socket.on('connect_error', (err) => {
  console.log(`connect_error ${err.message}`);
  process.exit(2);
});
