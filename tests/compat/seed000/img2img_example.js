// Seed 000's /api/img2img JavaScript example: transformImage, verbatim (its usage needs a
// browser's file input; the test calls it with the usage's options and a Blob).
async function transformImage(apiKey, imageFile, prompt, options = {}) {
const url = 'https://image.nalitek.com/api/img2img';
// Создание FormData
const formData = new FormData();
formData.append('image', imageFile);
formData.append('prompt', prompt);
formData.append('negative_prompt', options.negative_prompt || '');
formData.append('strength', options.strength || 0.75);
formData.append('steps', options.steps || 30);
formData.append('seed', options.seed || -1);
formData.append('width', options.width || 1024);
formData.append('height', options.height || 1024);
formData.append('guidance_scale', options.guidance_scale || 7.5);
formData.append('format', options.format || 'png');
formData.append('model', options.model || 'flux-dev');
// Добавляем параметры smart_upscale если указаны
if (options.smart_upscale) {
formData.append('smart_upscale', 'true');
if (options.target_width) {
formData.append('target_width', options.target_width);
}
if (options.target_height) {
formData.append('target_height', options.target_height);
}
}
// Добавляем lora_models если указаны
if (options.lora_models && options.lora_models.length > 0) {
options.lora_models.forEach(lora => {
formData.append('lora_models[]', lora);
});
}
try {
const response = await fetch(url, {
method: 'POST',
headers: {
'X-API-Key': apiKey
},
body: formData
});
if (response.status === 201) {
const result = await response.json();
console.log(`✅ Success! Image URL: ${result.url}`);
console.log(`📐 Dimensions: ${result.dimensions}`);
console.log(`🌱 Seed: ${result.seed}`);
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
