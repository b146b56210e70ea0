# ruff: noqa
# mypy: ignore-errors
# fmt: off
# Seed 000's /api/images Python example (class ImageManager and its usage), verbatim: only
# the indentation, lost in the seed's text, is restored. The test replaces the base URL,
# the key and the example's image ids (4738, 4739).
import requests
class ImageManager:
    def __init__(self, api_key):
        self.api_key = api_key
        self.base_url = "https://image.nalitek.com"
        self.headers = {"X-API-Key": api_key}
    def get_images(self, page=1, per_page=20, **filters):
        """Получение списка изображений"""
        url = f"{self.base_url}/api/images"
        params = {
            'page': page,
            'per_page': per_page
        }
        # Добавление фильтров
        if 'status' in filters:
            params['status'] = filters['status']
        if 'is_upscaled' in filters:
            params['is_upscaled'] = filters['is_upscaled']
        if 'sort' in filters:
            params['sort'] = filters['sort']
        response = requests.get(url, params=params, headers=self.headers)
        if response.status_code == 200:
            data = response.json()
            print(f"📸 Found {data['total']} images")
            print(f"📄 Page {data['current_page']} of {data['total_pages']}")
            for image in data['images']:
                print(f"\n🆔 ID: {image['id']}")
                print(f"📝 Prompt: {image['prompt'][:50]}...")
                print(f"📐 Size: {image['width']}x{image['height']}")
                print(f"✅ Status: {image['status']}")
            return data
        else:
            print(f"❌ Error: {response.status_code}")
            return None
    def get_image_details(self, image_id):
        """Получение деталей изображения"""
        url = f"{self.base_url}/api/images/{image_id}"
        response = requests.get(url, headers=self.headers)
        if response.status_code == 200:
            image = response.json()
            print(f"🆔 Image ID: {image['id']}")
            print(f"📝 Prompt: {image['prompt']}")
            print(f"🔗 URL: {image['url']}")
            print(f"📐 Dimensions: {image['width']}x{image['height']}")
            print(f"🌱 Seed: {image['seed']}")
            print(f"⏱️ Generation time: {image['generation_time']}s")
            return image
        else:
            print(f"❌ Error: {response.status_code}")
            return None
    def delete_image(self, image_id):
        """Удаление изображения"""
        url = f"{self.base_url}/api/images/{image_id}"
        response = requests.delete(url, headers=self.headers)
        if response.status_code == 204:
            print(f"✅ Image {image_id} deleted successfully")
            return True
        else:
            print(f"❌ Error: {response.status_code}")
            return False
    def get_all_images(self):
        """Получение всех изображений (с пагинацией)"""
        all_images = []
        page = 1
        while True:
            data = self.get_images(page=page, per_page=100)
            if not data:
                break
            all_images.extend(data['images'])
            if page >= data['total_pages']:
                break
            page += 1
        print(f"\n📊 Total images collected: {len(all_images)}")
        return all_images
# Использование
manager = ImageManager("your-api-key")
# Получить последние изображения
manager.get_images(page=1, per_page=10)
# Получить только завершенные изображения
manager.get_images(status='completed', sort='date_desc')
# Получить детали конкретного изображения
manager.get_image_details(4738)
# Удалить изображение
manager.delete_image(4739)
# Получить все изображения
all_images = manager.get_all_images()
