# ruff: noqa
# mypy: ignore-errors
# fmt: off
# Seed 000's /api/upscale Python example, verbatim: only the indentation, lost in the
# seed's text, is restored. The test replaces the base URL, the key and the image id.
import requests
def upscale_image(api_key, image_id, scale=2, face_enhance=False, denoise=0.5):
    """Увеличение разрешения изображения"""
    url = f"https://image.nalitek.com/api/upscale/{image_id}"
    headers = {
        "X-API-Key": api_key,
        "Content-Type": "application/json"
    }
    data = {
        "scale": scale,
        "face_enhance": face_enhance,
        "denoise": denoise
    }
    response = requests.post(url, json=data, headers=headers)
    if response.status_code == 201:
        result = response.json()
        print(f"✅ Success! Upscaled URL: {result['url']}")
        print(f"📐 New dimensions: {result['dimensions']}")
        print(f"🔍 Scale: {result['scale']}x")
        return result
    else:
        print(f"❌ Error: {response.status_code}")
        print(response.json())
        return None
# Простое увеличение в 2 раза
result = upscale_image(
    api_key="your-api-key",
    image_id=4738,
    scale=2
)
# Увеличение в 4 раза с улучшением лиц
result = upscale_image(
    api_key="your-api-key",
    image_id=4738,
    scale=4,
    face_enhance=True,
    denoise=0.7
)
