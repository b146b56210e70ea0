# Seed 000's BatchProcessor (Batch Processing, Python) as written; only the base URL and
# the key are changed (read from FLUX_BASE_URL / FLUX_API_KEY): tests/compat/test_v2_batches.py.
# ruff: noqa
# mypy: ignore-errors
# fmt: off
import os

import requests
import time
class BatchProcessor:
    def __init__(self, api_key):
        self.api_key = api_key
        self.base_url = os.environ["FLUX_BASE_URL"]
        self.headers = {"X-API-Key": api_key, "Content-Type": "application/json"}
    def batch_generate(self, prompts, common_params=None):
        """Массовая генерация изображений"""
        url = f"{self.base_url}/api/batch/generate"
        # Подготовка batch данных
        batch = []
        for prompt in prompts:
            item = {"prompt": prompt}
            if common_params:
                item.update(common_params)
            batch.append(item)
        data = {
            "batch": batch,
            "webhook_url": "https://your-webhook.com/batch-complete"
        }
        response = requests.post(url, json=data, headers=self.headers)
        if response.status_code == 201:
            result = response.json()
            print(f"✅ Batch created: {result['batch_id']}")
            print(f"📊 Total jobs: {result['total_jobs']}")
            print(f"⏱️ Estimated time: {result['estimated_time']}s")
            return result
        else:
            print(f"❌ Error: {response.status_code}")
            return None
    def check_batch_status(self, batch_id):
        """Проверка статуса batch"""
        url = f"{self.base_url}/api/batch/{batch_id}"
        response = requests.get(url, headers=self.headers)
        if response.status_code == 200:
            status = response.json()
            print(f"📊 Batch {batch_id}:")
            print(f" Completed: {status['completed']}/{status['total']}")
            print(f" Failed: {status['failed']}")
            print(f" Status: {status['status']}")
            return status
        return None
    def wait_for_batch(self, batch_id, timeout=600):
        """Ожидание завершения batch"""
        start_time = time.time()
        while time.time() - start_time < timeout:
            status = self.check_batch_status(batch_id)
            if status and status['status'] == 'completed':
                print("✅ Batch completed!")
                return status
            elif status and status['status'] == 'failed':
                print("❌ Batch failed!")
                return status
            time.sleep(5)
        print(f"⏱️ Timeout after {timeout}s")
        return None
# Использование
processor = BatchProcessor(os.environ["FLUX_API_KEY"])
# Создание batch с разными промптами
prompts = [
    "cyberpunk city at night",
    "beautiful japanese garden",
    "abstract art with vibrant colors",
    "portrait of a robot",
    "underwater coral reef"
]
batch = processor.batch_generate(
    prompts=prompts,
    common_params={
        "width": 1024,
        "height": 1024,
        "steps": 30,
        "model": "flux-dev"
    }
)
if batch:
    # Ожидание завершения
    result = processor.wait_for_batch(batch['batch_id'])
    if result:
        # Получение результатов
        for job in result['jobs']:
            print(f"\n🖼️ Image {job['id']}: {job['url']}")
