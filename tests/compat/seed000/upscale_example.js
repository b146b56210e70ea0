// Seed 000's /api/upscale JavaScript example, verbatim (lines as in the seed's text).
// The test replaces only the base URL, the key and the example's ids.
async function upscaleImage(apiKey, imageId, options = {}) {
const url = `https://image.nalitek.com/api/upscale/${imageId}`;
const data = {
scale: options.scale || 2,
face_enhance: options.face_enhance || false,
denoise: options.denoise || 0.5
};
try {
const response = await fetch(url, {
method: 'POST',
headers: {
'X-API-Key': apiKey,
'Content-Type': 'application/json'
},
body: JSON.stringify(data)
});
if (response.status === 201) {
const result = await response.json();
console.log(`✅ Success! Upscaled URL: ${result.url}`);
console.log(`📐 New dimensions: ${result.dimensions}`);
console.log(`🔍 Scale: ${result.scale}x`);
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
// Простое увеличение в 2 раза
upscaleImage('your-api-key', 123);
// Увеличение в 4 раза с улучшением лиц
upscaleImage('your-api-key', 123, {
scale: 4,
face_enhance: true,
denoise: 0.7
});
