# ruff: noqa
# mypy: ignore-errors
# fmt: off
# Seed 000's Python SDK (flux_api_sdk.py), verbatim: only the indentation, lost in the
# seed's text, is restored. Tests pass base_url and the key to FluxAPISDK(...).
# flux_api_sdk.py
"""
FLUX API SDK for Python
Complete integration example
"""
import requests
import time
import json
from typing import Optional, Dict, Any, List
from enum import Enum
class Model(Enum):
    FLUX_DEV = "flux-dev"
    FLUX_SCHNELL = "flux-schnell"
class ImageFormat(Enum):
    PNG = "png"
    JPEG = "jpeg"
    WEBP = "webp"
class FluxAPISDK:
    """Complete FLUX API SDK for Python"""
    def __init__(self, api_key: str, base_url: str = "https://image.nalitek.com"):
        self.api_key = api_key
        self.base_url = base_url
        self.headers = {
            "X-API-Key": api_key,
            "Content-Type": "application/json"
        }
    def generate(
        self,
        prompt: str,
        negative_prompt: str = "",
        width: int = 1024,
        height: int = 1024,
        steps: int = 30,
        guidance_scale: float = 7.5,
        seed: int = -1,
        model: Model = Model.FLUX_DEV,
        format: ImageFormat = ImageFormat.PNG,
        lora_id: Optional[str] = None,
        webhook_url: Optional[str] = None,
        wait_for_completion: bool = True
    ) -> Dict[str, Any]:
        """
        Generate an image from text prompt
        Args:
        prompt: Text description of desired image
        negative_prompt: What to exclude from generation
        width: Image width (512-2048, divisible by 64)
        height: Image height (512-2048, divisible by 64)
        steps: Number of generation steps (10-100)
        guidance_scale: Prompt adherence strength (1.0-20.0)
        seed: Seed for reproducibility (-1 for random)
        model: Model to use (FLUX_DEV or FLUX_SCHNELL)
        format: Output format (PNG, JPEG, or WEBP)
        lora_id: LoRA model ID for styling
        webhook_url: URL for completion notifications
        wait_for_completion: Whether to wait for generation to complete
        Returns:
        Dictionary with image data or generation status
        """
        url = f"{self.base_url}/api/generate"
        data = {
            "prompt": prompt,
            "negative_prompt": negative_prompt,
            "width": width,
            "height": height,
            "steps": steps,
            "guidance_scale": guidance_scale,
            "seed": seed,
            "model": model.value,
            "format": format.value
        }
        if lora_id:
            data["lora_id"] = lora_id
        if webhook_url:
            data["webhook_url"] = webhook_url
        response = requests.post(url, json=data, headers=self.headers)
        if response.status_code == 201:
            result = response.json()
            if wait_for_completion:
                return self._wait_for_image(result["image_id"])
            return result
        else:
            raise Exception(f"API Error {response.status_code}: {response.text}")
    def img2img(
        self,
        image_path: str,
        prompt: str,
        negative_prompt: str = "",
        strength: float = 0.75,
        steps: int = 30,
        guidance_scale: float = 7.5,
        seed: int = -1,
        wait_for_completion: bool = True
    ) -> Dict[str, Any]:
        """
        Transform an existing image based on text prompt
        Args:
        image_path: Path to input image file
        prompt: Description of desired transformation
        negative_prompt: What to exclude from generation
        strength: Transformation strength (0.0-1.0)
        steps: Number of generation steps (10-100)
        guidance_scale: Prompt adherence strength (1.0-20.0)
        seed: Seed for reproducibility (-1 for random)
        wait_for_completion: Whether to wait for completion
        Returns:
        Dictionary with transformed image data
        """
        url = f"{self.base_url}/api/img2img"
        with open(image_path, 'rb') as f:
            files = {'image': (image_path, f, 'image/png')}
            data = {
                'prompt': prompt,
                'negative_prompt': negative_prompt,
                'strength': strength,
                'steps': steps,
                'guidance_scale': guidance_scale,
                'seed': seed
            }
            headers = {"X-API-Key": self.api_key}
            response = requests.post(url, headers=headers, files=files, data=data)
        if response.status_code == 201:
            result = response.json()
            if wait_for_completion and 'image_id' in result:
                return self._wait_for_image(result["image_id"])
            return result
        else:
            raise Exception(f"API Error {response.status_code}: {response.text}")
    def upscale(
        self,
        image_id: int,
        scale: int = 2,
        face_enhance: bool = False,
        denoise: float = 0.5
    ) -> Dict[str, Any]:
        """
        Upscale an existing image
        Args:
        image_id: ID of image to upscale
        scale: Upscaling factor (2 or 4)
        face_enhance: Whether to enhance faces with GFPGAN
        denoise: Denoising level (0.0-1.0)
        Returns:
        Dictionary with upscaled image data
        """
        url = f"{self.base_url}/api/upscale/{image_id}"
        data = {
            "scale": scale,
            "face_enhance": face_enhance,
            "denoise": denoise
        }
        response = requests.post(url, json=data, headers=self.headers)
        if response.status_code == 201:
            return response.json()
        else:
            raise Exception(f"API Error {response.status_code}: {response.text}")
    def get_image(self, image_id: int) -> Dict[str, Any]:
        """Get details of a specific image"""
        url = f"{self.base_url}/api/images/{image_id}"
        response = requests.get(url, headers=self.headers)
        if response.status_code == 200:
            return response.json()
        else:
            raise Exception(f"API Error {response.status_code}: {response.text}")
    def list_images(
        self,
        page: int = 1,
        per_page: int = 20,
        status: Optional[str] = None,
        is_upscaled: Optional[bool] = None,
        sort: str = "date_desc"
    ) -> Dict[str, Any]:
        """
        List user's images with pagination and filters
        Args:
        page: Page number
        per_page: Items per page (1-100)
        status: Filter by status (generating/completed/failed)
        is_upscaled: Filter by upscale status
        sort: Sort order (date_desc/date_asc)
        Returns:
        Dictionary with paginated image list
        """
        url = f"{self.base_url}/api/images"
        params = {
            'page': page,
            'per_page': per_page,
            'sort': sort
        }
        if status:
            params['status'] = status
        if is_upscaled is not None:
            params['is_upscaled'] = is_upscaled
        response = requests.get(url, params=params, headers=self.headers)
        if response.status_code == 200:
            return response.json()
        else:
            raise Exception(f"API Error {response.status_code}: {response.text}")
    def delete_image(self, image_id: int) -> bool:
        """Delete an image"""
        url = f"{self.base_url}/api/images/{image_id}"
        response = requests.delete(url, headers=self.headers)
        return response.status_code == 204
    def get_loras(self) -> List[Dict[str, Any]]:
        """Get list of available LoRA models"""
        url = f"{self.base_url}/api/loras"
        response = requests.get(url, headers=self.headers)
        if response.status_code == 200:
            return response.json()['loras']
        else:
            raise Exception(f"API Error {response.status_code}: {response.text}")
    def get_user_stats(self) -> Dict[str, Any]:
        """Get user statistics and quota information"""
        url = f"{self.base_url}/api/user/stats"
        response = requests.get(url, headers=self.headers)
        if response.status_code == 200:
            return response.json()
        else:
            raise Exception(f"API Error {response.status_code}: {response.text}")
    def check_api_status(self) -> Dict[str, Any]:
        """Check API status and service availability"""
        url = f"{self.base_url}/api/status"
        response = requests.get(url)
        if response.status_code == 200:
            return response.json()
        else:
            raise Exception(f"API Error {response.status_code}: {response.text}")
    def batch_generate(
        self,
        prompts: List[str],
        common_params: Optional[Dict[str, Any]] = None,
        webhook_url: Optional[str] = None
    ) -> Dict[str, Any]:
        """
        Generate multiple images in batch
        Args:
        prompts: List of prompts (max 10)
        common_params: Common parameters for all generations
        webhook_url: URL for batch completion notification
        Returns:
        Dictionary with batch information
        """
        url = f"{self.base_url}/api/batch/generate"
        batch = []
        for prompt in prompts[:10]: # Limit to 10
            item = {"prompt": prompt}
            if common_params:
                item.update(common_params)
            batch.append(item)
        data = {"batch": batch}
        if webhook_url:
            data["webhook_url"] = webhook_url
        response = requests.post(url, json=data, headers=self.headers)
        if response.status_code == 201:
            return response.json()
        else:
            raise Exception(f"API Error {response.status_code}: {response.text}")
    def _wait_for_image(self, image_id: int, timeout: int = 120) -> Dict[str, Any]:
        """Wait for image generation to complete"""
        start_time = time.time()
        while time.time() - start_time < timeout:
            image = self.get_image(image_id)
            if image['status'] == 'completed':
                return image
            elif image['status'] == 'failed':
                raise Exception(f"Generation failed: {image.get('error_message')}")
            time.sleep(2)
        raise Exception(f"Generation timeout after {timeout} seconds")
# Example usage
if __name__ == "__main__":
    # Initialize SDK
    sdk = FluxAPISDK("your-api-key")
    # Check API status
    status = sdk.check_api_status()
    print(f"API Status: {status['status']}")
    # Generate an image
    try:
        image = sdk.generate(
            prompt="beautiful sunset over mountains, professional photography",
            width=1024,
            height=1024,
            steps=30,
            model=Model.FLUX_DEV,
            format=ImageFormat.PNG
        )
        print(f"Generated image: {image['url']}")
        # Upscale the image
        upscaled = sdk.upscale(image['id'], scale=2)
        print(f"Upscaled image: {upscaled['url']}")
    except Exception as e:
        print(f"Error: {e}")
    # Get user statistics
    stats = sdk.get_user_stats()
    print(f"Remaining generations: {stats['quota']['remaining_generations']}")
    # List available LoRA models
    loras = sdk.get_loras()
    for lora in loras:
        print(f"LoRA: {lora['name']} ({lora['id']})")
