// Seed 000's /api/generate JavaScript example, verbatim (lines as in the seed's text).
// The test replaces only the base URL, the key and the example's ids.
class FluxAPI {
constructor(apiKey) {
this.apiKey = apiKey;
this.baseUrl = 'https://image.nalitek.com';
}
async generateImage(prompt, options = {}) {
const url = `${this.baseUrl}/api/generate`;
const data = {
prompt: prompt,
negative_prompt: options.negative_prompt || '',
width: options.width || 1024,
height: options.height || 1024,
steps: options.steps || 30,
guidance_scale: options.guidance_scale || 7.5,
seed: options.seed || -1,
model: options.model || 'flux-dev',
format: options.format || 'png'
};
if (options.lora_id) {
data.lora_id = options.lora_id;
}
// Добавляем параметры smart_upscale если указаны
if (options.smart_upscale) {
data.smart_upscale = true;
if (options.target_width) {
data.target_width = options.target_width;
}
if (options.target_height) {
data.target_height = options.target_height;
}
}
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
console.log(`✅ Success! Generation ID: ${result.generation_id}`);
console.log(`📍 Progress URL: ${result.progress_url}`);
return result;
} else {
const error = await response.json();
console.error(`❌ Error: ${response.status}`, error);
return null;
}
} catch (error) {
console.error('Request failed:', error);
return null;
}
}
async checkStatus(imageId) {
const url = `${this.baseUrl}/api/images/${imageId}`;
const response = await fetch(url, {
headers: { 'X-API-Key': this.apiKey }
});
return response.json();
}
async waitForCompletion(imageId, timeout = 120000) {
const startTime = Date.now();
while (Date.now() - startTime < timeout) {
const status = await this.checkStatus(imageId);
if (status.status === 'completed') {
console.log(`✅ Completed! URL: ${status.url}`);
return status;
} else if (status.status === 'failed') {
console.error(`❌ Failed: ${status.error_message}`);
return status;
}
await new Promise(resolve => setTimeout(resolve, 2000));
}
console.error(`⏱️ Timeout after ${timeout}ms`);
return null;
}
}
// Использование
const api = new FluxAPI('your-api-key');
// Простая генерация с автоматическим upscale
async function generateSimple() {
const image = await api.generateImage('cyberpunk city at night, neon lights', {
width: 512, // Генерируем быстро в низком разрешении
height: 512,
smart_upscale: true, // Автоматически увеличиваем после генерации
target_width: 2048, // Финальный размер
target_height: 2048
});
if (image) {
const result = await api.waitForCompletion(image.image_id);
console.log(`Generated and upscaled to ${result.dimensions}`);
}
}
// Расширенная генерация
async function generateAdvanced() {
const image = await api.generateImage('beautiful japanese garden', {
negative_prompt: 'blurry, low quality',
width: 1024,
height: 1024,
steps: 50,
guidance_scale: 8.0,
model: 'flux-dev',
lora_id: 'anime-style-v2'
});
if (image) {
const result = await api.waitForCompletion(image.image_id);
}
}
// Генерация с автоматическим upscale
async function generateWithSmartUpscale() {
const image = await api.generateImage('ultra realistic portrait, 8k quality', {
width: 512, // Генерируем в низком разрешении для скорости
height: 512,
smart_upscale: true, // Включаем автоматический upscale
target_width: 2048, // Целевой размер после upscale
target_height: 2048,
steps: 30,
model: 'flux-dev'
});
if (image) {
const result = await api.waitForCompletion(image.image_id);
console.log(`Image automatically upscaled to ${result.dimensions}`);
}
}
generateSimple();
generateAdvanced();
generateWithSmartUpscale();
