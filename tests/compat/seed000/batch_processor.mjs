// Seed 000's BatchProcessor (Batch Processing, JavaScript) as written; only the base URL
// and the key are changed (read from FLUX_BASE_URL / FLUX_API_KEY):
// tests/compat/test_v2_batches.py runs it with Node.
class BatchProcessor {
constructor(apiKey) {
this.apiKey = apiKey;
this.baseUrl = process.env.FLUX_BASE_URL;
}
async batchGenerate(prompts, commonParams = {}) {
const url = `${this.baseUrl}/api/batch/generate`;
// Подготовка batch данных
const batch = prompts.map(prompt => ({
prompt,
...commonParams
}));
const data = {
batch,
webhook_url: 'https://your-webhook.com/batch-complete'
};
try {
const response = await fetch(url, {
method: 'POST',
headers: {
'X-API-Key': this.apiKey,
'Content-Type': 'application/json'
},
body: JSON.stringify(data)
});
if (response.status === 201) {
const result = await response.json();
console.log(`✅ Batch created: ${result.batch_id}`);
console.log(`📊 Total jobs: ${result.total_jobs}`);
console.log(`⏱️ Estimated time: ${result.estimated_time}s`);
return result;
} else {
console.error(`❌ Error: ${response.status}`);
return null;
}
} catch (error) {
console.error('Request failed:', error);
return null;
}
}
async checkBatchStatus(batchId) {
const url = `${this.baseUrl}/api/batch/${batchId}`;
try {
const response = await fetch(url, {
headers: { 'X-API-Key': this.apiKey }
});
if (response.status === 200) {
const status = await response.json();
console.log(`📊 Batch ${batchId}:`);
console.log(` Completed: ${status.completed}/${status.total}`);
console.log(` Failed: ${status.failed}`);
console.log(` Status: ${status.status}`);
return status;
}
return null;
} catch (error) {
console.error('Request failed:', error);
return null;
}
}
async waitForBatch(batchId, timeout = 600000) {
const startTime = Date.now();
while (Date.now() - startTime < timeout) {
const status = await this.checkBatchStatus(batchId);
if (status && status.status === 'completed') {
console.log('✅ Batch completed!');
return status;
} else if (status && status.status === 'failed') {
console.log('❌ Batch failed!');
return status;
}
await new Promise(resolve => setTimeout(resolve, 5000));
}
console.log(`⏱️ Timeout after ${timeout}ms`);
return null;
}
}
// Использование
const processor = new BatchProcessor(process.env.FLUX_API_KEY);
// Создание batch с разными промптами
const prompts = [
'cyberpunk city at night',
'beautiful japanese garden',
'abstract art with vibrant colors',
'portrait of a robot',
'underwater coral reef'
];
async function runBatch() {
const batch = await processor.batchGenerate(prompts, {
width: 1024,
height: 1024,
steps: 30,
model: 'flux-dev'
});
if (batch) {
const result = await processor.waitForBatch(batch.batch_id);
if (result) {
result.jobs.forEach(job => {
console.log(`\n🖼️ Image ${job.id}: ${job.url}`);
});
}
}
}
runBatch();
