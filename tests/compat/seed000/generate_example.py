# ruff: noqa
# mypy: ignore-errors
# fmt: off
# Seed 000's /api/generate Python example (class FluxAPI and its usage), verbatim: only the
# indentation, lost in the seed's text, is restored. The test replaces the base URL and key.
import requests
import time
class FluxAPI:
    def __init__(self, api_key):
        self.api_key = api_key
        self.base_url = "https://image.nalitek.com"
        self.headers = {"X-API-Key": api_key, "Content-Type": "application/json"}
    def generate_image(self, prompt, **kwargs):
        """Генерация изображения по промпту"""
        url = f"{self.base_url}/api/generate"
        data = {
            "prompt": prompt,
            "negative_prompt": kwargs.get("negative_prompt", ""),
            "width": kwargs.get("width", 1024),
            "height": kwargs.get("height", 1024),
            "steps": kwargs.get("steps", 30),
            "guidance_scale": kwargs.get("guidance_scale", 7.5),
            "seed": kwargs.get("seed", -1),
            "model": kwargs.get("model", "flux-dev"),
            "format": kwargs.get("format", "png")
        }
        if "lora_id" in kwargs:
            data["lora_id"] = kwargs["lora_id"]
        # Добавляем параметры smart_upscale если указаны
        if kwargs.get("smart_upscale"):
            data["smart_upscale"] = kwargs.get("smart_upscale")
        if "target_width" in kwargs:
            data["target_width"] = kwargs["target_width"]
        if "target_height" in kwargs:
            data["target_height"] = kwargs["target_height"]
        response = requests.post(url, json=data, headers=self.headers)
        if response.status_code == 201:
            result = response.json()
            print(f"✅ Success! Generation ID: {result['generation_id']}")
            print(f"📍 Progress URL: {result['progress_url']}")
            print(f"🌱 Seed: {result['seed']}")
            return result
        else:
            print(f"❌ Error: {response.status_code}")
            print(response.json())
            return None
    def check_status(self, image_id):
        """Проверка статуса генерации"""
        url = f"{self.base_url}/api/images/{image_id}"
        response = requests.get(url, headers=self.headers)
        return response.json()
    def wait_for_completion(self, image_id, timeout=120):
        """Ожидание завершения генерации"""
        start_time = time.time()
        while time.time() - start_time < timeout:
            status = self.check_status(image_id)
            if status['status'] == 'completed':
                print(f"✅ Completed! URL: {status['url']}")
                return status
            elif status['status'] == 'failed':
                print(f"❌ Failed: {status.get('error_message')}")
                return status
            time.sleep(2)
        print(f"⏱️ Timeout after {timeout} seconds")
        return None
# Использование
api = FluxAPI("your-api-key")
# Пример 1: Простая генерация (smart upscale включен по умолчанию)
# При запросе 1024x1024, сгенерирует в 512x512 и масштабирует до 1024x1024
image = api.generate_image(
    prompt="cyberpunk city at night, neon lights",
    width=1024, # Целевой размер 1024x1024
    height=1024, # Автоматически генерирует в 512x512 и масштабирует
    steps=30,
    guidance_scale=7.5
)
# Пример 2: Отключение smart upscale для прямой генерации
image = api.generate_image(
    prompt="detailed portrait",
    width=512,
    height=512,
    smart_upscale=False, # Генерировать напрямую в 512x512
    steps=30
)
if image:
    result = api.wait_for_completion(image['image_id'])
    print(f"Generated and upscaled to {result['dimensions']}")
# Расширенная генерация с LoRA
image = api.generate_image(
    prompt="beautiful japanese garden, cherry blossoms, koi pond",
    negative_prompt="blurry, low quality, distorted",
    width=1024,
    height=1024,
    steps=50,
    guidance_scale=8.0,
    model="flux-dev",
    lora_id="anime-style-v2"
)
# Генерация с автоматическим upscale
# Генерируем в низком разрешении для скорости, затем автоматически увеличиваем
image = api.generate_image(
    prompt="ultra realistic portrait, 8k quality, professional photography",
    width=512, # Генерируем в низком разрешении
    height=512,
    smart_upscale=True, # Включаем автоматический upscale
    target_width=2048, # Целевой размер после upscale
    target_height=2048,
    steps=30,
    model="flux-dev"
)
if image:
    result = api.wait_for_completion(image['image_id'])
    print(f"Image automatically upscaled to {result['dimensions']}")
