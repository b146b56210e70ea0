"""Seed 004's task API (server/compat/tasks.py) end to end: a real API and a real arq
worker (tiny pipelines) on real Postgres and Redis. Every Python example of the seed runs
as written in a subprocess (only BASE_URL, USER_KEY and the input files changed); every
submit endpoint runs a job whose result URLs are downloaded; the seed's error cases (no
account, insufficient balance, a file over 16 MB) and the common ones (429, a foreign task,
bad and hostile input) answer the seed's envelope with nothing charged."""

from __future__ import annotations

import asyncio
import io
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from billing.models import Generation
from billing.plans import default_plan_book
from billing.service import accounts
from kinds.cleanup import INSTRUCTIONS
from runtime.settings import Settings
from tests.conftest import ThreadedServer, ThreadedWorker, own_queue
from tests.factories import TestAccount, create_account
from tests.server.kinds_support import assert_charged, assert_untouched, encoded, picture

START = 1000
SUBMITS = (
    "submit_task", "submit_vector_task", "submit_face_enhance_task", "submit_seamless_task",
    "submit_remove_fabric_task", "submit_remove_diamonds_task", "submit_remove_watermark_task",
    "submit_edit_image_task", "submit_extract_pattern_task", "submit_expand_image_task",
)  # fmt: skip

# The seed's first example, whole: its submit_task, the check_task_status loop every other
# example reuses ("使用之前定义的函数检查任务状态"), and its __main__. The seed's text lost
# its indentation; it is restored here, nothing else changed.
SEED_FIRST = """\
import time
import httpx
BASE_URL = "http://www.xxx.com" # 替换为真实的服务器地址
USER_KEY = "test-key" # 替换为有效的用户密钥
def test_submit_task():
    # 准备测试数据
    sdxl_model_dropdown = "通用模型"
    style_dropdown = "通用风格"
    prompt = ""
    neg_prompt = ""
    upscale = 1.0
    s_noise = 1.003
    steps = 30
    high_fidelity = False
    strong_inpaint = False
    vector_switch = False # 是否生成矢量图
    color_count = 5 # 矢量图颜色数量
    auto_generate_prompt = False # 是否自动生成提示词
    input_image_path = "input/test3.png" # 替换为有效的图像路径
    with open(input_image_path, "rb") as image_file:
        try:
            response = httpx.post(
                f"{BASE_URL}/api/submit_task",
                data={
                    "user_key": USER_KEY,
                    "sdxl_model_dropdown": sdxl_model_dropdown,
                    "style_dropdown": style_dropdown,
                    "prompt": prompt,
                    "neg_prompt": neg_prompt,
                    "upscale": upscale,
                    "s_noise": s_noise,
                    "steps": steps,
                    "high_fidelity": high_fidelity,
                    "strong_inpaint": strong_inpaint,
                    "vector_switch": vector_switch,
                    "color_count": color_count,
                    "auto_generate_prompt": auto_generate_prompt,
                },
                files={"input_image": image_file},
                timeout=httpx.Timeout(
                    connect=5.0, # 连接超时
                    read=10.0, # 读取超时
                    write=30.0, # 写入超时
                    pool=None # 连接池超时
                )
            )
            response.raise_for_status()
        except httpx.TimeoutException:
            print("请求超时,请检查网络连接或服务器状态")
            return -1
        except httpx.HTTPStatusError as e:
            print(f"HTTP请求失败: {e.response.status_code}")
            print(f"错误详情: {e.response.json()}")
            return -1
        except httpx.RequestError as e:
            print(f"请求错误: {str(e)}")
            return -1
        except Exception as e:
            print(f"发生未知错误: {str(e)}")
            return -1
    print(response.status_code)
    result = response.json()
    print(result)
    err_code = result.get("err_code")
    if err_code != 0:
        print(f"提交任务失败,错误码: {result.get('err_msg')}")
        return -1
    task_id = result.get("task_id")
    print(f"提交任务成功,任务ID: {task_id}")
    return task_id
def test_check_task_status(task_id):
    # 为了测试,这里使用了1个死循环,请修改为适当的轮询策略,请求间隔建议2-3秒
    while True:
        response = httpx.post(
            f"{BASE_URL}/api/check_task_status",
            data={
                "user_key": USER_KEY,
                "task_id": task_id
            }
        )
        assert response.status_code == 200
        status_info = response.json()
        err_code = status_info.get("err_code")
        if err_code != 0:
            print(f"查询任务状态失败,错误码: {status_info.get('err_msg')}")
            return -1
        print(f"任务状态: {status_info['status']}")
        if status_info['status'] == 'Completed':
            # 检查是否有多图片支持(如提取印花任务)
            if 'images_urls' in status_info:
                print(f"完成任务,获得 {len(status_info['images_urls'])} 张图片:")
                for i, image_url in enumerate(status_info['images_urls']):
                    print(f" 图片 {i+1}: {image_url}")
            else:
                print(f"完成任务,图片链接: {status_info.get('images_url')}")
            if status_info.get('vector_url'): # 如果有矢量图结果
                print(f"矢量图链接: {status_info.get('vector_url')}")
            if status_info.get('grid_url'): # 如果有网格图结果
                print(f"网格图链接: {status_info.get('grid_url')}")
            break
        elif status_info['status'] in [None, 'Failed']:
            break
        time.sleep(1)
if __name__ == "__main__":
    task_id = test_submit_task()
    if task_id == -1:
        exit()
    test_check_task_status(task_id)
"""
# The seed's other examples: each one's function and __main__, run after the first
# example's definitions.
SEED_EXAMPLES = {
    "submit_vector_task": """\
def test_submit_vector_task():
    # 准备测试数据
    color_count = 5 # 矢量图颜色数量
    input_image_path = "input/logo.png" # 替换为有效的图像路径
    with open(input_image_path, "rb") as image_file:
        try:
            response = httpx.post(
                f"{BASE_URL}/api/submit_vector_task",
                data={
                    "user_key": USER_KEY,
                    "color_count": color_count,
                },
                files={"input_image": image_file},
                timeout=httpx.Timeout(
                    connect=5.0, # 连接超时
                    read=10.0, # 读取超时
                    write=30.0, # 写入超时
                    pool=None # 连接池超时
                )
            )
            response.raise_for_status()
        except httpx.TimeoutException:
            print("请求超时,请检查网络连接或服务器状态")
            return -1
        except httpx.HTTPStatusError as e:
            print(f"HTTP请求失败: {e.response.status_code}")
            print(f"错误详情: {e.response.json()}")
            return -1
        except httpx.RequestError as e:
            print(f"请求错误: {str(e)}")
            return -1
        except Exception as e:
            print(f"发生未知错误: {str(e)}")
            return -1
    print(response.status_code)
    result = response.json()
    print(result)
    err_code = result.get("err_code")
    if err_code != 0:
        print(f"提交任务失败,错误码: {result.get('err_msg')}")
        return -1
    task_id = result.get("task_id")
    print(f"提交任务成功,任务ID: {task_id}")
    return task_id
if __name__ == "__main__":
    # 提交矢量图转换任务
    task_id = test_submit_vector_task()
    if task_id == -1:
        exit()
    # 使用之前定义的函数检查任务状态
    test_check_task_status(task_id)
""",
    "submit_face_enhance_task": """\
def test_submit_face_enhance_task():
    # 准备测试数据
    input_image_path = "input/face.png" # 替换为有效的人脸图像路径
    with open(input_image_path, "rb") as image_file:
        try:
            response = httpx.post(
                f"{BASE_URL}/api/submit_face_enhance_task",
                data={
                    "user_key": USER_KEY,
                },
                files={"input_image": image_file},
                timeout=httpx.Timeout(
                    connect=5.0, # 连接超时
                    read=10.0, # 读取超时
                    write=30.0, # 写入超时
                    pool=None # 连接池超时
                )
            )
            response.raise_for_status()
        except httpx.TimeoutException:
            print("请求超时,请检查网络连接或服务器状态")
            return -1
        except httpx.HTTPStatusError as e:
            print(f"HTTP请求失败: {e.response.status_code}")
            print(f"错误详情: {e.response.json()}")
            return -1
        except httpx.RequestError as e:
            print(f"请求错误: {str(e)}")
            return -1
        except Exception as e:
            print(f"发生未知错误: {str(e)}")
            return -1
    print(response.status_code)
    result = response.json()
    print(result)
    err_code = result.get("err_code")
    if err_code != 0:
        print(f"提交任务失败,错误码: {result.get('err_msg')}")
        return -1
    task_id = result.get("task_id")
    print(f"提交任务成功,任务ID: {task_id}")
    return task_id
if __name__ == "__main__":
    # 提交人脸修复任务
    task_id = test_submit_face_enhance_task()
    if task_id == -1:
        exit()
    # 使用之前定义的函数检查任务状态
    test_check_task_status(task_id)
""",
    "submit_seamless_task": """\
def test_submit_seamless_task():
    # 准备测试数据
    fit = 0.3
    direction = 0 # 四周无缝
    expand_top = 0.2 # 向上扩图20%
    expand_bottom = 0.1 # 向下扩图10%
    expand_left = 0.0 # 不向左扩图
    expand_right = 0.0 # 不向右扩图
    input_image_path = "input/seamless.jpeg" # 替换为有效的图像路径
    with open(input_image_path, "rb") as image_file:
        try:
            response = httpx.post(
                f"{BASE_URL}/api/submit_seamless_task",
                data={
                    "user_key": USER_KEY,
                    "fit": fit,
                    "direction": direction,
                    "expand_top": expand_top,
                    "expand_bottom": expand_bottom,
                    "expand_left": expand_left,
                    "expand_right": expand_right,
                },
                files={"input_image": image_file},
                timeout=httpx.Timeout(
                    connect=5.0, # 连接超时
                    read=10.0, # 读取超时
                    write=30.0, # 写入超时
                    pool=None # 连接池超时
                )
            )
            response.raise_for_status()
        except httpx.TimeoutException:
            print("请求超时,请检查网络连接或服务器状态")
            return -1
        except httpx.HTTPStatusError as e:
            print(f"HTTP请求失败: {e.response.status_code}")
            print(f"错误详情: {e.response.json()}")
            return -1
        except httpx.RequestError as e:
            print(f"请求错误: {str(e)}")
            return -1
        except Exception as e:
            print(f"发生未知错误: {str(e)}")
            return -1
    print(response.status_code)
    result = response.json()
    print(result)
    err_code = result.get("err_code")
    if err_code != 0:
        print(f"提交任务失败,错误码: {result.get('err_msg')}")
        return -1
    task_id = result.get("task_id")
    print(f"提交任务成功,任务ID: {task_id}")
    return task_id
if __name__ == "__main__":
    # 提交无缝拼图任务
    task_id = test_submit_seamless_task()
    if task_id == -1:
        exit()
    # 使用之前定义的函数检查任务状态
    test_check_task_status(task_id)
""",
    "submit_remove_fabric_task": """\
def test_submit_remove_fabric_task():
    # 准备测试数据
    input_image_path = "input/fabric_pattern.png" # 替换为有效的图像路径
    with open(input_image_path, "rb") as image_file:
        try:
            response = httpx.post(
                f"{BASE_URL}/api/submit_remove_fabric_task",
                data={
                    "user_key": USER_KEY,
                },
                files={"input_image": image_file},
                timeout=httpx.Timeout(
                    connect=5.0, # 连接超时
                    pool=None # 连接池超时
                )
            )
            response.raise_for_status()
        except httpx.TimeoutException:
            print("请求超时,请检查网络连接或服务器状态")
            return -1
        except httpx.HTTPStatusError as e:
            print(f"HTTP请求失败: {e.response.status_code}")
            print(f"错误详情: {e.response.json()}")
            return -1
        except httpx.RequestError as e:
            print(f"请求错误: {str(e)}")
            return -1
        except Exception as e:
            print(f"发生未知错误: {str(e)}")
            return -1
    print(response.status_code)
    result = response.json()
    print(result)
    err_code = result.get("err_code")
    if err_code != 0:
        print(f"提交任务失败,错误码: {result.get('err_msg')}")
        return -1
    task_id = result.get("task_id")
    print(f"提交任务成功,任务ID: {task_id}")
    return task_id
if __name__ == "__main__":
    # 提交移除布纹任务
    task_id = test_submit_remove_fabric_task()
    if task_id == -1:
        exit()
    # 使用之前定义的函数检查任务状态
    test_check_task_status(task_id)
""",
    "submit_edit_image_task": """\
def test_submit_edit_image_task():
    # 准备测试数据
    prompt = "将这张图片转换为水彩画风格"
    model_version = "v2" # 模型版本,默认v1
    input_image_path = "input/flower2.jpg" # 替换为有效的图像路径
    with open(input_image_path, "rb") as image_file:
        try:
            response = httpx.post(
                f"{BASE_URL}/api/submit_edit_image_task",
                data={
                    "user_key": USER_KEY,
                    "prompt": prompt,
                    "model_version": model_version,
                },
                files={"input_image": image_file},
                timeout=httpx.Timeout(
                    connect=5.0, # 连接超时
                    read=10.0, # 读取超时
                    write=30.0, # 写入超时
                    pool=None # 连接池超时
                )
            )
            response.raise_for_status()
        except httpx.TimeoutException:
            print("请求超时,请检查网络连接或服务器状态")
            return -1
        except httpx.HTTPStatusError as e:
            print(f"HTTP请求失败: {e.response.status_code}")
            print(f"错误详情: {e.response.json()}")
            return -1
        except httpx.RequestError as e:
            print(f"请求错误: {str(e)}")
            return -1
        except Exception as e:
            print(f"发生未知错误: {str(e)}")
            return -1
    print(response.status_code)
    result = response.json()
    print(result)
    err_code = result.get("err_code")
    if err_code != 0:
        print(f"提交任务失败,错误码: {result.get('err_msg')}")
        return -1
    task_id = result.get("task_id")
    print(f"提交AI改图任务成功,任务ID: {task_id}")
    return task_id
if __name__ == "__main__":
    # 提交AI改图任务
    task_id = test_submit_edit_image_task()
    if task_id == -1:
        exit()
    # 使用之前定义的函数检查任务状态
    test_check_task_status(task_id)
""",
    "submit_extract_pattern_task": """\
def test_submit_extract_pattern_task():
    # 准备测试数据
    aspect_ratio = "1:1" # 出图比例,可选值:1:1, 4:3, 16:9 等
    input_image_path = "input/flower.jpeg" # 替换为有效的服装图像路径
    with open(input_image_path, "rb") as image_file:
        try:
            response = httpx.post(
                f"{BASE_URL}/api/submit_extract_pattern_task",
                data={
                    "user_key": USER_KEY,
                    "aspect_ratio": aspect_ratio,
                },
                files={"input_image": image_file},
                timeout=httpx.Timeout(
                    connect=5.0, # 连接超时
                    read=10.0, # 读取超时
                    write=30.0, # 写入超时
                    pool=None # 连接池超时
                )
            )
            response.raise_for_status()
        except httpx.TimeoutException:
            print("请求超时,请检查网络连接或服务器状态")
            return -1
        except httpx.HTTPStatusError as e:
            print(f"HTTP请求失败: {e.response.status_code}")
            print(f"错误详情: {e.response.json()}")
            return -1
        except httpx.RequestError as e:
            print(f"请求错误: {str(e)}")
            return -1
        except Exception as e:
            print(f"发生未知错误: {str(e)}")
            return -1
    print(response.status_code)
    result = response.json()
    print(result)
    err_code = result.get("err_code")
    if err_code != 0:
        print(f"提交任务失败,错误码: {result.get('err_msg')}")
        return -1
    task_id = result.get("task_id")
    print(f"提交提取印花任务成功,任务ID: {task_id}")
    return task_id
if __name__ == "__main__":
    # 提交提取印花任务
    task_id = test_submit_extract_pattern_task()
    if task_id == -1:
        exit()
    # 使用之前定义的函数检查任务状态
    test_check_task_status(task_id)
""",
    "submit_remove_diamonds_task": """\
def test_submit_remove_diamonds_task():
    # 准备测试数据
    input_image_path = "input/diamonds.jpg" # 替换为有效的图像路径
    with open(input_image_path, "rb") as image_file:
        try:
            response = httpx.post(
                f"{BASE_URL}/api/submit_remove_diamonds_task",
                data={
                    "user_key": USER_KEY,
                },
                files={"input_image": image_file},
                timeout=httpx.Timeout(
                    connect=5.0, # 连接超时
                    read=10.0, # 读取超时
                    write=30.0, # 写入超时
                    pool=None # 连接池超时
                )
            )
            response.raise_for_status()
        except httpx.TimeoutException:
            print("请求超时,请检查网络连接或服务器状态")
            return -1
        except httpx.HTTPStatusError as e:
            print(f"HTTP请求失败: {e.response.status_code}")
            print(f"错误详情: {e.response.json()}")
            return -1
        except httpx.RequestError as e:
            print(f"请求错误: {str(e)}")
            return -1
        except Exception as e:
            print(f"发生未知错误: {str(e)}")
            return -1
    print(response.status_code)
    result = response.json()
    print(result)
    err_code = result.get("err_code")
    if err_code != 0:
        print(f"提交任务失败,错误码: {result.get('err_msg')}")
        return -1
    task_id = result.get("task_id")
    print(f"提交移除烫钻任务成功,任务ID: {task_id}")
    return task_id
if __name__ == "__main__":
    # 提交移除烫钻任务
    task_id = test_submit_remove_diamonds_task()
    if task_id == -1:
        exit()
    # 使用之前定义的函数检查任务状态
    test_check_task_status(task_id)
""",
    "submit_expand_image_task": """\
def test_submit_expand_image_task():
    # 准备测试数据
    expand_top = 0.2 # 向上扩图20%
    expand_bottom = 0.1 # 向下扩图10%
    expand_left = 0.0 # 不向左扩图
    expand_right = 0.0 # 不向右扩图
    prompt = "延续原图的风格和内容" # 扩展部分的生成提示
    input_image_path = "input/test.png" # 替换为有效的图像路径
    with open(input_image_path, "rb") as image_file:
        try:
            response = httpx.post(
                f"{BASE_URL}/api/submit_expand_image_task",
                data={
                    "user_key": USER_KEY,
                    "expand_top": expand_top,
                    "expand_bottom": expand_bottom,
                    "expand_left": expand_left,
                    "expand_right": expand_right,
                    "prompt": prompt
                },
                files={"input_image": image_file},
                timeout=300.0
            )
        except Exception as e:
            print(f"请求失败: {str(e)}")
            return -1
    print(response.status_code)
    result = response.json()
    print(result)
    err_code = result.get("err_code")
    if err_code != 0:
        print(f"提交任务失败,错误码: {result.get('err_msg')}")
        return -1
    task_id = result.get("task_id")
    print(f"提交扩图任务成功,任务ID: {task_id}")
    return task_id
if __name__ == "__main__":
    # 提交扩图任务
    task_id = test_submit_expand_image_task()
    if task_id == -1:
        exit()
    # 使用之前定义的函数检查任务状态
    test_check_task_status(task_id)
""",
    "submit_remove_watermark_task": """\
def test_submit_remove_watermark_task():
    # 准备测试数据
    input_image_path = "input/watermarked.png" # 替换为有效的图像路径
    with open(input_image_path, "rb") as image_file:
        try:
            response = httpx.post(
                f"{BASE_URL}/api/submit_remove_watermark_task",
                data={
                    "user_key": USER_KEY
                },
                files={"input_image": image_file},
                timeout=300.0
            )
        except Exception as e:
            print(f"请求失败: {str(e)}")
            return -1
    print(response.status_code)
    result = response.json()
    print(result)
    err_code = result.get("err_code")
    if err_code != 0:
        print(f"提交任务失败,错误码: {result.get('err_msg')}")
        return -1
    task_id = result.get("task_id")
    print(f"提交去水印任务成功,任务ID: {task_id}")
    return task_id
if __name__ == "__main__":
    # 提交去水印任务
    task_id = test_submit_remove_watermark_task()
    if task_id == -1:
        exit()
    # 使用之前定义的函数检查任务状态
    test_check_task_status(task_id)
""",
}


# -- fixtures and helpers ---------------------------------------------------------------


@pytest.fixture(scope="module")
def task_settings(settings: Settings) -> Settings:
    return own_queue(settings, "tasks")


@pytest.fixture(scope="module")
def task_api(task_settings: Settings, database: str) -> Iterator[str]:
    with ThreadedServer.of(task_settings) as server:
        yield server.url


@pytest.fixture(scope="module")
def task_worker(task_settings: Settings, database: str) -> Iterator[ThreadedWorker]:
    with ThreadedWorker(task_settings) as w:
        yield w


@pytest.fixture
async def http(task_api: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=task_api, timeout=60) as client:
        yield client


@pytest.fixture
async def customer(
    sessions: async_sessionmaker[AsyncSession], task_settings: Settings
) -> TestAccount:
    return await create_account(sessions, task_settings, credits=START)


PNG = encoded(picture())
FINAL = ("Completed", "Failed")


async def post(
    http: httpx.AsyncClient,
    endpoint: str,
    key: str | None,
    fields: dict[str, Any] | None = None,
    files: dict[str, bytes] | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """A multipart POST of ``/api/<endpoint>`` as the seed's clients send it."""
    data = {k: str(v) for k, v in (fields or {}).items()}
    if key is not None:
        data["user_key"] = key
    uploads = {
        name: (f"{name}.png", content, "image/png") for name, content in (files or {}).items()
    }
    if not uploads:  # still multipart: the fields as parts without a file name
        return await http.post(
            f"/api/{endpoint}", files={k: (None, v) for k, v in data.items()}, headers=headers
        )
    return await http.post(f"/api/{endpoint}", data=data, files=uploads, headers=headers)


def refused(response: httpx.Response, status: int, message: str | None = None) -> str:
    """The seed's error envelope, exactly: ``{"err_code": 1, "err_msg"}``."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"err_code", "err_msg"} and body["err_code"] == 1, body
    if message is not None:
        assert body["err_msg"] == message, body
    err_msg: str = body["err_msg"]
    return err_msg


async def wait_task(
    http: httpx.AsyncClient, key: str, task_id: str, timeout: float = 120
) -> dict[str, Any]:
    """check_task_status until Completed or Failed (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        response = await post(http, "check_task_status", key, {"task_id": task_id})
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        assert body["err_code"] == 0 and body["task_id"] == task_id, body
        if body["status"] in FINAL:
            return body
        assert body["status"] in ("Pending", "Processing"), body
        assert time.monotonic() < deadline, f"task {task_id} still {body['status']}"
        await asyncio.sleep(0.1)


async def fetch(http: httpx.AsyncClient, url: str, content_type: str) -> bytes:
    response = await http.get(url)
    assert response.status_code == 200, (url, response.status_code)
    assert response.headers["content-type"] == content_type, response.headers
    return response.content


async def fetch_image(http: httpx.AsyncClient, url: str) -> Image.Image:
    image = Image.open(io.BytesIO(await fetch(http, url, "image/png")))
    image.load()
    return image


async def assert_settled(
    sessions: async_sessionmaker[AsyncSession], account: TestAccount, done: dict[str, Any]
) -> None:
    """Completed: remaining_money is the balance, the job's cost captured, nothing held."""
    assert done["status"] == "Completed", done
    spent = START - done["remaining_money"]
    assert spent > 0
    await assert_charged(sessions, account, START, spent)
    assert done["remaining_count"] == done["remaining_money"] // spent


async def assert_removal_edit(
    sessions: async_sessionmaker[AsyncSession], task_id: str, preset: str
) -> None:
    """A remove task sent without an area ran as a Kontext edit with the preset's
    instruction."""
    async with sessions() as session:
        job = await session.get(Generation, task_id)
    assert job is not None
    assert (job.kind, job.prompt) == ("edit", INSTRUCTIONS[preset])


# -- the seed's Python examples, as written ---------------------------------------------

INPUTS = (
    "test3.png", "logo.png", "face.png", "seamless.jpeg", "fabric_pattern.png",
    "flower2.jpg", "flower.jpeg", "diamonds.jpg", "test.png", "watermarked.png",
)  # fmt: skip


def run_example(api: str, key: str, workdir: Path, endpoint: str) -> str:
    """The seed's example for ``endpoint`` run by Python in a subprocess, in a directory
    holding its input files; its standard output."""
    (workdir / "input").mkdir(exist_ok=True)
    for name in INPUTS:
        fmt = "JPEG" if name.endswith((".jpg", ".jpeg")) else "PNG"
        (workdir / "input" / name).write_bytes(encoded(picture(), fmt))
    if endpoint == "submit_task":
        source = SEED_FIRST
    else:
        definitions = SEED_FIRST.split('if __name__ == "__main__":')[0]
        source = definitions + SEED_EXAMPLES[endpoint]
    source = source.replace('"http://www.xxx.com"', repr(api)).replace('"test-key"', repr(key))
    done = subprocess.run(
        [sys.executable, "-c", source], cwd=workdir, capture_output=True, text=True,
        timeout=240, env={**os.environ, "PYTHONIOENCODING": "utf-8"}, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


SUCCEEDING = {
    "submit_task": "完成任务,图片链接: ",
    "submit_vector_task": "矢量图链接: ",
    "submit_edit_image_task": "完成任务,图片链接: ",
    "submit_extract_pattern_task": "完成任务,获得 1 张图片:",
    "submit_expand_image_task": "完成任务,图片链接: ",
    "submit_remove_diamonds_task": "完成任务,图片链接: ",
    "submit_remove_watermark_task": "完成任务,图片链接: ",
    "submit_seamless_task": "网格图链接: ",
}


@pytest.mark.parametrize("endpoint", sorted(SUCCEEDING))
async def test_the_seeds_examples_run_as_written_to_a_completed_task(
    endpoint: str,
    http: httpx.AsyncClient,
    task_api: str,
    task_worker: ThreadedWorker,
    sessions: async_sessionmaker[AsyncSession],
    customer: TestAccount,
    tmp_path: Path,
) -> None:
    out = await asyncio.to_thread(run_example, task_api, customer.api_key, tmp_path, endpoint)
    assert "任务状态: Completed" in out, out
    assert SUCCEEDING[endpoint] in out, out
    [task_id] = re.findall(r"任务ID: (\S+)", out)
    done = await wait_task(http, customer.api_key, task_id)
    await assert_settled(sessions, customer, done)
    printed = re.findall(r"(http://\S+)", out)
    assert printed and all(url.startswith(task_api) for url in printed), out
    if endpoint == "submit_vector_task":
        assert done["vector_url"] == done["images_url"] in printed
        eps = await fetch(http, done["vector_url"], "application/postscript")
        assert eps.startswith(b"%!PS")
        return
    if endpoint == "submit_seamless_task":  # 20 % up, 10 % down first; both ways: 3x3
        tile = await fetch_image(http, done["images_url"])
        grid = await fetch_image(http, done["grid_url"])
        assert (tile.size, grid.size) == ((320, 336), (960, 1008))
        assert done["images_url_1m"] == done["images_url"] and done["vector_url"] == ""
        return
    assert done["vector_url"] == "" and done["grid_url"] == ""
    image = await fetch_image(http, done["images_url"])
    if endpoint == "submit_task":  # upscale 1.0: the input's size
        assert image.size == (320, 256)
    elif endpoint == "submit_expand_image_task":  # 20 % up, 10 % down, to a multiple of 16
        assert image.size == (320, 336)
    elif endpoint == "submit_extract_pattern_task":  # 1:1, every result in images_urls
        assert done["images_urls"] == [done["images_url"]]
        assert image.size == (1024, 1024)
    elif endpoint.startswith("submit_remove_"):  # no area: a Kontext edit, by instruction
        await assert_removal_edit(
            sessions, task_id, endpoint.removeprefix("submit_").removesuffix("_task")
        )


REFUSED_EXAMPLES = {
    # (the HTTP status, what the error says)
    "submit_face_enhance_task": (501, "face enhancement is not served on this deployment"),
}


@pytest.mark.parametrize("endpoint", sorted(REFUSED_EXAMPLES))
async def test_the_seeds_examples_we_do_not_serve_as_written_are_refused_for_free(
    endpoint: str,
    task_api: str,
    sessions: async_sessionmaker[AsyncSession],
    customer: TestAccount,
    tmp_path: Path,
) -> None:
    """Face enhancement is not served: refused in the seed's shape, nothing charged."""
    status, says = REFUSED_EXAMPLES[endpoint]
    out = await asyncio.to_thread(run_example, task_api, customer.api_key, tmp_path, endpoint)
    assert f"HTTP请求失败: {status}" in out and "'err_code': 1" in out, out
    assert says in out, out
    await assert_untouched(sessions, customer, START)


async def test_the_seeds_remove_fabric_request_is_an_edit_of_the_whole_image(
    http: httpx.AsyncClient,
    task_api: str,
    task_worker: ThreadedWorker,
    sessions: async_sessionmaker[AsyncSession],
    customer: TestAccount,
    tmp_path: Path,
) -> None:
    """As written the seed's example never sends: httpx refuses its Timeout(connect=5.0,
    pool=None) (the seed's own bug, client side). Its request, sent without that timeout,
    runs as the other remove tasks without an area do: a Kontext edit by instruction."""
    out = await asyncio.to_thread(
        run_example, task_api, customer.api_key, tmp_path, "submit_remove_fabric_task"
    )
    assert out.startswith("发生未知错误: httpx.Timeout must either include a default"), out
    with (tmp_path / "input" / "fabric_pattern.png").open("rb") as image_file:
        response = await http.post(
            "/api/submit_remove_fabric_task",
            data={"user_key": customer.api_key},
            files={"input_image": image_file},
        )
    assert response.status_code == 200, response.text
    task_id = response.json()["task_id"]
    done = await wait_task(http, customer.api_key, task_id)
    assert done["status"] == "Completed" and done["images_url"]
    await assert_settled(sessions, customer, done)
    await assert_removal_edit(sessions, task_id, "remove_fabric")


# -- every submit endpoint end to end ---------------------------------------------------


async def test_hd_redraw_at_upscale_times_the_size_with_a_negative_prompt(
    http: httpx.AsyncClient,
    task_worker: ThreadedWorker,
    sessions: async_sessionmaker[AsyncSession],
    customer: TestAccount,
) -> None:
    fields = {
        "sdxl_model_dropdown": "通用模型", "style_dropdown": "通用风格", "upscale": 1.5,
        "s_noise": 1.0, "steps": 20, "high_fidelity": "true", "strong_inpaint": "false",
        "prompt": "a red square", "neg_prompt": "blurry",
    }  # fmt: skip
    response = await post(http, "submit_task", customer.api_key, fields, {"input_image": PNG})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"err_code", "task_id", "remaining_count", "remaining_money"}
    assert body["err_code"] == 0
    done = await wait_task(http, customer.api_key, body["task_id"])
    await assert_settled(sessions, customer, done)
    assert (await fetch_image(http, done["images_url"])).size == (480, 384)


async def test_seamless_task_gives_the_tile_and_its_grid(
    http: httpx.AsyncClient,
    task_worker: ThreadedWorker,
    sessions: async_sessionmaker[AsyncSession],
    customer: TestAccount,
) -> None:
    response = await post(
        http, "submit_seamless_task", customer.api_key, {"fit": 0.3, "direction": 2},
        {"input_image": PNG},
    )  # fmt: skip
    assert response.status_code == 200, response.text
    done = await wait_task(http, customer.api_key, response.json()["task_id"])
    await assert_settled(sessions, customer, done)
    assert done["images_url_1m"] == done["images_url"] != done["grid_url"]
    tile = await fetch_image(http, done["images_url"])
    grid = await fetch_image(http, done["grid_url"])
    assert tile.size == (320, 256)
    # Left/right only: the tile three times side by side (scaled to fit the limits).
    assert grid.width > grid.height and abs(grid.width / grid.height - 3 * 320 / 256) < 0.05


@pytest.mark.parametrize(
    ("endpoint", "area"),
    [
        ("submit_remove_watermark_task", {"rectangles": "16,16,96,32"}),
        ("submit_remove_diamonds_task", {"rectangles": "160,128,64,64;0,0,32,32"}),
        ("submit_remove_fabric_task", "mask"),
    ],
)
async def test_remove_tasks_repaint_the_given_area_only(
    endpoint: str,
    area: dict[str, str] | str,
    http: httpx.AsyncClient,
    task_worker: ThreadedWorker,
    sessions: async_sessionmaker[AsyncSession],
    customer: TestAccount,
) -> None:
    files = {"input_image": PNG}
    fields: dict[str, Any] = {}
    if area == "mask":
        mask = Image.new("L", (320, 256), 0)
        mask.paste(255, (200, 100, 300, 200))
        files["mask"] = encoded(mask)
    else:
        assert isinstance(area, dict)
        fields = area
    response = await post(http, endpoint, customer.api_key, fields, files)
    assert response.status_code == 200, response.text
    done = await wait_task(http, customer.api_key, response.json()["task_id"])
    await assert_settled(sessions, customer, done)
    out = (await fetch_image(http, done["images_url"])).convert("RGB")
    assert out.size == (320, 256)
    # Outside the area every pixel is the input's own (PNG).
    assert out.getpixel((319, 255)) == picture().getpixel((319, 255))


async def test_edit_v1_and_vector_colour_count(
    http: httpx.AsyncClient,
    task_worker: ThreadedWorker,
    sessions: async_sessionmaker[AsyncSession],
    customer: TestAccount,
) -> None:
    edit = await post(
        http, "submit_edit_image_task", customer.api_key, {"prompt": "make it blue"},
        {"input_image": PNG},
    )  # fmt: skip
    vector = await post(
        http, "submit_vector_task", customer.api_key, {"color_count": 3}, {"input_image": PNG}
    )
    assert edit.status_code == vector.status_code == 200, (edit.text, vector.text)
    edited = await wait_task(http, customer.api_key, edit.json()["task_id"])
    traced = await wait_task(http, customer.api_key, vector.json()["task_id"])
    assert edited["status"] == traced["status"] == "Completed"
    assert (await fetch_image(http, edited["images_url"])).size == (320, 256)
    eps = await fetch(http, traced["vector_url"], "application/postscript")
    assert eps.startswith(b"%!PS")
    # Both settled: what is left is what the later check reports.
    again = await wait_task(http, customer.api_key, edit.json()["task_id"])
    await assert_charged(sessions, customer, START, START - again["remaining_money"])


async def test_an_idempotency_key_makes_one_task(
    http: httpx.AsyncClient,
    task_worker: ThreadedWorker,
    sessions: async_sessionmaker[AsyncSession],
    customer: TestAccount,
) -> None:
    key = {"Idempotency-Key": uuid.uuid4().hex}
    first, second = [
        await post(
            http, "submit_vector_task", customer.api_key, {"color_count": 4},
            {"input_image": PNG}, headers=key,
        )
        for _ in range(2)
    ]  # fmt: skip
    assert first.status_code == second.status_code == 200
    assert first.json()["task_id"] == second.json()["task_id"]
    done = await wait_task(http, customer.api_key, first.json()["task_id"])
    await assert_settled(sessions, customer, done)


# -- the seed's error cases -------------------------------------------------------------


@pytest.mark.parametrize("endpoint", [*SUBMITS, "check_task_status"])
async def test_no_key_or_a_bad_key_is_an_unknown_account(
    endpoint: str, http: httpx.AsyncClient
) -> None:
    fields = {"task_id": str(uuid.uuid4())}
    files = {"input_image": PNG}
    refused(await post(http, endpoint, None, fields, files), 401, "账户不存在")
    refused(await post(http, endpoint, "fg_not-a-key", fields, files), 401, "账户不存在")
    refused(await post(http, endpoint, " ", fields, files), 401, "账户不存在")


async def test_an_empty_balance_is_refused_and_nothing_is_held(
    http: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession], task_settings: Settings
) -> None:
    poor = await create_account(sessions, task_settings, credits=0)
    response = await post(
        http, "submit_vector_task", poor.api_key, {"color_count": 5}, {"input_image": PNG}
    )
    refused(response, 402, "账户剩余次数不足")
    await assert_untouched(sessions, poor, 0)


async def test_face_enhance_is_not_served_and_costs_nothing(
    http: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession], customer: TestAccount
) -> None:
    response = await post(
        http, "submit_face_enhance_task", customer.api_key, files={"input_image": PNG}
    )
    message = refused(response, 501)
    assert message.startswith("任务提交失败:face enhancement is not served on this deployment")
    await assert_untouched(sessions, customer, START)


def png_of_size(size: int) -> bytes:
    """A valid PNG header followed by padding: ``size`` bytes."""
    head = PNG
    return head + b"\0" * (size - len(head))


async def test_a_file_over_16_mb_is_refused_with_the_seeds_message(
    http: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession], customer: TestAccount
) -> None:
    too_large = "文件大小不能超过16MB"
    for endpoint in ("submit_remove_fabric_task", "submit_expand_image_task"):
        # Over 16 MB but within the upload body limit: the surface refuses it.
        big = png_of_size(16 * 1024 * 1024 + 1)
        response = await post(http, endpoint, customer.api_key, files={"input_image": big})
        refused(response, 413, too_large)
        # Over the body limit (34 MB), with Content-Length: the middleware refuses it.
        huge = png_of_size(35 * 1024 * 1024)
        response = await post(http, endpoint, customer.api_key, files={"input_image": huge})
        refused(response, 413, too_large)

    # Streamed without Content-Length: refused while it is read, in the same shape.
    boundary = "seed004boundary"

    def chunks() -> Iterator[bytes]:
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="user_key"\r\n\r\n'
            f"{customer.api_key}\r\n--{boundary}\r\nContent-Disposition: form-data; "
            'name="input_image"; filename="a.png"\r\nContent-Type: image/png\r\n\r\n'
        ).encode()
        for _ in range(36):
            yield b"\0" * (1024 * 1024)
        yield f"\r\n--{boundary}--\r\n".encode()

    async def stream() -> AsyncIterator[bytes]:
        for chunk in chunks():
            yield chunk

    response = await http.post(
        "/api/submit_remove_watermark_task",
        content=stream(),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    refused(response, 413, too_large)
    await assert_untouched(sessions, customer, START)
    # check_task_status takes no file: a form over the body limit (256 KB), same shape.
    response = await http.post(
        "/api/check_task_status", data={"user_key": customer.api_key, "task_id": "x" * 300_000}
    )
    assert refused(response, 413).startswith("Request body larger than")


async def test_a_rate_limited_key_gets_429_with_retry_after(
    http: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession], task_settings: Settings
) -> None:
    limited = await create_account(sessions, task_settings, credits=START, plan="free")
    async with sessions() as s:
        await accounts.set_plan(
            s, limited.id, plan=None, overrides={"requests_per_minute": 2},
            plans=default_plan_book(),
        )  # fmt: skip
        await s.commit()
    statuses = []
    for _ in range(4):
        response = await post(
            http, "submit_vector_task", limited.api_key, {"color_count": 5}, {"input_image": b"x"}
        )
        statuses.append(response.status_code)
        if response.status_code == 429:
            message = refused(response, 429)
            assert message.startswith("任务提交失败:")
            assert 0 < int(response.headers["Retry-After"]) <= 60
            break
    assert statuses[-1] == 429, statuses
    await assert_untouched(sessions, limited, START)


async def test_another_accounts_task_is_not_found(
    http: httpx.AsyncClient,
    task_worker: ThreadedWorker,
    sessions: async_sessionmaker[AsyncSession],
    customer: TestAccount,
    task_settings: Settings,
) -> None:
    other = await create_account(sessions, task_settings, credits=START)
    response = await post(
        http, "submit_vector_task", other.api_key, {"color_count": 2}, {"input_image": PNG}
    )
    task_id = response.json()["task_id"]
    not_found = "任务未找到或状态未知"
    for asked in (task_id, str(uuid.uuid4()), "not-a-task"):
        response = await post(http, "check_task_status", customer.api_key, {"task_id": asked})
        refused(response, 404, not_found)
    assert (await wait_task(http, other.api_key, task_id))["status"] == "Completed"


# The seed's messages.
RANGE = "扩展参数错误:expand_%s必须在0.0-0.3之间"
FAILED = "任务提交失败:"
BAD_INPUT = [
    # (endpoint, fields, files, the error message or its start)
    ("submit_task", {"upscale": 9}, None, "任务提交失败:upscale: "),
    ("submit_task", {"vector_switch": "true"}, None, "任务提交失败:vector_switch is not served"),
    ("submit_task", {"upscale": 8}, None, "任务提交失败:width must be between"),
    ("submit_vector_task", {"color_count": 1}, None, "任务提交失败:color_count: "),
    ("submit_vector_task", {"color_count": 17}, None, "任务提交失败:color_count: "),
    ("submit_vector_task", {}, {"input_image": b"not an image"}, "任务提交失败:image"),
    ("submit_vector_task", {}, {}, "任务提交失败:input_image: "),
    ("submit_seamless_task", {"direction": 3}, None, "任务提交失败:direction: "),
    ("submit_seamless_task", {"fit": 0.95}, None, "任务提交失败:fit: "),
    ("submit_seamless_task", {"expand_left": 0.31}, None, RANGE % "left"),
    ("submit_expand_image_task", {"expand_top": 0.5}, None, RANGE % "top"),
    ("submit_expand_image_task", {"expand_right": -0.1}, None, RANGE % "right"),
    ("submit_expand_image_task", {}, None, "任务提交失败:"),
    ("submit_edit_image_task", {"prompt": "x", "model_version": "3"}, None, FAILED + "model_"),
    ("submit_edit_image_task", {}, None, "任务提交失败:prompt: "),
    ("submit_extract_pattern_task", {"aspect_ratio": "wide"}, None, "任务提交失败:aspect_ratio"),
    ("submit_remove_watermark_task", {"rectangles": "0,0,999,10"}, None, FAILED + "rectangle 1"),
]  # fmt: skip
REDRAW: dict[str, Any] = {
    "sdxl_model_dropdown": "通用模型", "style_dropdown": "通用风格", "upscale": 1.0,
    "s_noise": 1.003, "steps": 30, "high_fidelity": False, "strong_inpaint": False,
}  # fmt: skip


@pytest.mark.parametrize(("endpoint", "fields", "files", "message"), BAD_INPUT)
async def test_bad_input_is_refused_in_the_seeds_shape_for_free(
    endpoint: str,
    fields: dict[str, Any],
    files: dict[str, bytes] | None,
    message: str,
    http: httpx.AsyncClient,
    sessions: async_sessionmaker[AsyncSession],
    customer: TestAccount,
) -> None:
    if endpoint == "submit_task":
        fields = {**REDRAW, **fields}
    response = await post(
        http, endpoint, customer.api_key, fields, {"input_image": PNG} if files is None else files
    )
    assert refused(response, 400).startswith(message), response.text
    await assert_untouched(sessions, customer, START)


async def test_hostile_input_gets_a_4xx_in_the_seeds_shape(
    http: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession], customer: TestAccount
) -> None:
    key = customer.api_key
    image = {"input_image": PNG}
    for fields in (
        {"prompt": "a\x00b"},  # a NUL byte
        {"prompt": "x", "model_version": "v1\x00"},
        {"prompt": "x" * 100_000},
    ):
        refused(await post(http, "submit_edit_image_task", key, fields, image), 400)
    for number in ("1e309", "99999999999999999999999999", "nan", "-inf", "0x10"):
        fields = {**REDRAW, "upscale": number}
        refused(await post(http, "submit_task", key, fields, image), 400)
        refused(await post(http, "submit_vector_task", key, {"color_count": number}, image), 400)
    refused(await post(http, "check_task_status", key, {"task_id": "\x00" * 10}), 400)
    # Not a form: JSON objects, arrays, deep nesting, scalars are the wrong media type.
    for body in (f'{{"user_key": "{key}"}}', "[1, 2]", "[" * 10_000 + "]" * 10_000, "3"):
        response = await http.post(
            "/api/submit_vector_task", content=body, headers={"Content-Type": "application/json"}
        )
        assert response.status_code in (401, 415), response.text
        refused(response, response.status_code)
    # A malformed multipart body.
    response = await http.post(
        "/api/submit_vector_task",
        content=b"--x\r\nnonsense",
        headers={"Content-Type": "multipart/form-data; boundary=x"},
    )
    assert 400 <= response.status_code < 500
    refused(response, response.status_code)
    await assert_untouched(sessions, customer, START)
