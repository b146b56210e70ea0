// Seed 000's /api/images JavaScript example, verbatim (lines as in the seed's text).
// The test replaces only the base URL, the key and the example's ids.
class ImageManager {
constructor(apiKey) {
this.apiKey = apiKey;
this.baseUrl = 'https://image.nalitek.com';
}
async getImages(page = 1, perPage = 20, filters = {}) {
const url = new URL(`${this.baseUrl}/api/images`);
// Добавление параметров
url.searchParams.append('page', page);
url.searchParams.append('per_page', perPage);
// Добавление фильтров
if (filters.status) url.searchParams.append('status', filters.status);
if (filters.is_upscaled !== undefined) {
url.searchParams.append('is_upscaled', filters.is_upscaled);
}
if (filters.sort) url.searchParams.append('sort', filters.sort);
try {
const response = await fetch(url, {
headers: { 'X-API-Key': this.apiKey }
});
if (response.status === 200) {
const data = await response.json();
console.log(`📸 Found ${data.total} images`);
console.log(`📄 Page ${data.current_page} of ${data.total_pages}`);
data.images.forEach(image => {
console.log(`\n🆔 ID: ${image.id}`);
console.log(`📝 Prompt: ${image.prompt.substring(0, 50)}...`);
console.log(`📐 Size: ${image.width}x${image.height}`);
console.log(`✅ Status: ${image.status}`);
});
return data;
} else {
console.error(`❌ Error: ${response.status}`);
return null;
}
} catch (error) {
console.error('Request failed:', error);
return null;
}
}
async getImageDetails(imageId) {
const url = `${this.baseUrl}/api/images/${imageId}`;
try {
const response = await fetch(url, {
headers: { 'X-API-Key': this.apiKey }
});
if (response.status === 200) {
const image = await response.json();
console.log(`🆔 Image ID: ${image.id}`);
console.log(`📝 Prompt: ${image.prompt}`);
console.log(`🔗 URL: ${image.url}`);
console.log(`📐 Dimensions: ${image.width}x${image.height}`);
console.log(`🌱 Seed: ${image.seed}`);
console.log(`⏱️ Generation time: ${image.generation_time}s`);
return image;
} else {
console.error(`❌ Error: ${response.status}`);
return null;
}
} catch (error) {
console.error('Request failed:', error);
return null;
}
}
async deleteImage(imageId) {
const url = `${this.baseUrl}/api/images/${imageId}`;
try {
const response = await fetch(url, {
method: 'DELETE',
headers: { 'X-API-Key': this.apiKey }
});
if (response.status === 204) {
console.log(`✅ Image ${imageId} deleted successfully`);
return true;
} else {
console.error(`❌ Error: ${response.status}`);
return false;
}
} catch (error) {
console.error('Request failed:', error);
return false;
}
}
async getAllImages() {
const allImages = [];
let page = 1;
let totalPages = 1;
while (page <= totalPages) {
const data = await this.getImages(page, 100);
if (!data) break;
allImages.push(...data.images);
totalPages = data.total_pages;
page++;
}
console.log(`\n📊 Total images collected: ${allImages.length}`);
return allImages;
}
}
// Использование
const manager = new ImageManager('your-api-key');
// Получить последние изображения
manager.getImages(1, 10);
// Получить только завершенные изображения
manager.getImages(1, 20, { status: 'completed', sort: 'date_desc' });
// Получить детали конкретного изображения
manager.getImageDetails(123);
// Удалить изображение
manager.deleteImage(456);
// Получить все изображения
manager.getAllImages();
