// Seed 000's JavaScript SDK (flux-api-sdk.js), verbatim (lines as in the seed's text).
// Tests replace only the key and base URL of its example usage.
// flux-api-sdk.js
/**
* FLUX API SDK for JavaScript
* Complete integration example
*/
class FluxAPISDK {
constructor(apiKey, baseUrl = 'https://image.nalitek.com') {
this.apiKey = apiKey;
this.baseUrl = baseUrl;
}
/**
* Generate an image from text prompt
*/
async generate(options = {}) {
const url = `${this.baseUrl}/api/generate`;
const data = {
prompt: options.prompt,
negative_prompt: options.negative_prompt || '',
width: options.width || 1024,
height: options.height || 1024,
steps: options.steps || 30,
guidance_scale: options.guidance_scale || 7.5,
seed: options.seed || -1,
model: options.model || 'flux-dev',
format: options.format || 'png'
};
if (options.lora_id) data.lora_id = options.lora_id;
if (options.webhook_url) data.webhook_url = options.webhook_url;
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
if (options.waitForCompletion !== false) {
return await this.waitForImage(result.image_id);
}
return result;
} else {
const error = await response.json();
throw new Error(`API Error ${response.status}: ${error.error}`);
}
}
/**
* Transform an existing image
*/
async img2img(imageFile, options = {}) {
const url = `${this.baseUrl}/api/img2img`;
const formData = new FormData();
formData.append('image', imageFile);
formData.append('prompt', options.prompt);
formData.append('negative_prompt', options.negative_prompt || '');
formData.append('strength', options.strength || 0.75);
formData.append('steps', options.steps || 30);
formData.append('guidance_scale', options.guidance_scale || 7.5);
formData.append('seed', options.seed || -1);
const response = await fetch(url, {
method: 'POST',
headers: {
'X-API-Key': this.apiKey
},
body: formData
});
if (response.status === 201) {
const result = await response.json();
if (options.waitForCompletion !== false && result.image_id) {
return await this.waitForImage(result.image_id);
}
return result;
} else {
const error = await response.json();
throw new Error(`API Error ${response.status}: ${error.error}`);
}
}
/**
* Upscale an image
*/
async upscale(imageId, options = {}) {
const url = `${this.baseUrl}/api/upscale/${imageId}`;
const data = {
scale: options.scale || 2,
face_enhance: options.face_enhance || false,
denoise: options.denoise || 0.5
};
const response = await fetch(url, {
method: 'POST',
headers: {
'X-API-Key': this.apiKey,
'Content-Type': 'application/json'
},
body: JSON.stringify(data)
});
if (response.status === 201) {
return await response.json();
} else {
const error = await response.json();
throw new Error(`API Error ${response.status}: ${error.error}`);
}
}
/**
* Get image details
*/
async getImage(imageId) {
const url = `${this.baseUrl}/api/images/${imageId}`;
const response = await fetch(url, {
headers: { 'X-API-Key': this.apiKey }
});
if (response.status === 200) {
return await response.json();
} else {
const error = await response.json();
throw new Error(`API Error ${response.status}: ${error.error}`);
}
}
/**
* List images with filters
*/
async listImages(options = {}) {
const url = new URL(`${this.baseUrl}/api/images`);
url.searchParams.append('page', options.page || 1);
url.searchParams.append('per_page', options.per_page || 20);
url.searchParams.append('sort', options.sort || 'date_desc');
if (options.status) url.searchParams.append('status', options.status);
if (options.is_upscaled !== undefined) {
url.searchParams.append('is_upscaled', options.is_upscaled);
}
const response = await fetch(url, {
headers: { 'X-API-Key': this.apiKey }
});
if (response.status === 200) {
return await response.json();
} else {
const error = await response.json();
throw new Error(`API Error ${response.status}: ${error.error}`);
}
}
/**
* Delete an image
*/
async deleteImage(imageId) {
const url = `${this.baseUrl}/api/images/${imageId}`;
const response = await fetch(url, {
method: 'DELETE',
headers: { 'X-API-Key': this.apiKey }
});
return response.status === 204;
}
/**
* Get available LoRA models
*/
async getLoras() {
const url = `${this.baseUrl}/api/loras`;
const response = await fetch(url, {
headers: { 'X-API-Key': this.apiKey }
});
if (response.status === 200) {
const data = await response.json();
return data.loras;
} else {
const error = await response.json();
throw new Error(`API Error ${response.status}: ${error.error}`);
}
}
/**
* Get user statistics
*/
async getUserStats() {
const url = `${this.baseUrl}/api/user/stats`;
const response = await fetch(url, {
headers: { 'X-API-Key': this.apiKey }
});
if (response.status === 200) {
return await response.json();
} else {
const error = await response.json();
throw new Error(`API Error ${response.status}: ${error.error}`);
}
}
/**
* Check API status
*/
async checkApiStatus() {
const url = `${this.baseUrl}/api/status`;
const response = await fetch(url);
if (response.status === 200) {
return await response.json();
} else {
throw new Error(`API Error ${response.status}`);
}
}
/**
* Batch generate images
*/
async batchGenerate(prompts, commonParams = {}, webhookUrl = null) {
const url = `${this.baseUrl}/api/batch/generate`;
const batch = prompts.slice(0, 10).map(prompt => ({
prompt,
...commonParams
}));
const data = { batch };
if (webhookUrl) data.webhook_url = webhookUrl;
const response = await fetch(url, {
method: 'POST',
headers: {
'X-API-Key': this.apiKey,
'Content-Type': 'application/json'
},
body: JSON.stringify(data)
});
if (response.status === 201) {
return await response.json();
} else {
const error = await response.json();
throw new Error(`API Error ${response.status}: ${error.error}`);
}
}
/**
* Wait for image generation to complete
*/
async waitForImage(imageId, timeout = 120000) {
const startTime = Date.now();
while (Date.now() - startTime < timeout) {
const image = await this.getImage(imageId);
if (image.status === 'completed') {
return image;
} else if (image.status === 'failed') {
throw new Error(`Generation failed: ${image.error_message}`);
}
await new Promise(resolve => setTimeout(resolve, 2000));
}
throw new Error(`Generation timeout after ${timeout}ms`);
}
}
// Example usage
(async () => {
// Initialize SDK
const sdk = new FluxAPISDK('your-api-key');
try {
// Check API status
const status = await sdk.checkApiStatus();
console.log(`API Status: ${status.status}`);
// Generate an image
const image = await sdk.generate({
prompt: 'beautiful sunset over mountains, professional photography',
width: 1024,
height: 1024,
steps: 30,
model: 'flux-dev'
});
console.log(`Generated image: ${image.url}`);
// Upscale the image
const upscaled = await sdk.upscale(image.id, { scale: 2 });
console.log(`Upscaled image: ${upscaled.url}`);
// Get user statistics
const stats = await sdk.getUserStats();
console.log(`Remaining generations: ${stats.quota.remaining_generations}`);
// List available LoRA models
const loras = await sdk.getLoras();
loras.forEach(lora => {
console.log(`LoRA: ${lora.name} (${lora.id})`);
});
} catch (error) {
console.error(`Error: ${error.message}`);
}
})();
// Export for use in other modules
if (typeof module !== 'undefined' && module.exports) {
module.exports = FluxAPISDK;
}
