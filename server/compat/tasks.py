"""Seed 004's task API: ``POST /api/submit_*_task`` (multipart, the key in the
``user_key`` field) queue a job of one of Fluxgate's kinds through GraphQL ``createJob``
with the uploaded ``input_image``; ``POST /api/check_task_status`` polls it through
``generation(id)``. Every answer is the seed's envelope: ``{"err_code": 0, ...}`` on
success, ``{"err_code": 1, "err_msg": "..."}`` on a refusal, with the HTTP status of the
refusal (401, 402, 404, 413, 429, 501, ...) and the seed's messages (README, "Seed 004").

Endpoint -> kind (the parameters each maps, and those that have no effect, are in the
README and in each model's field descriptions):

* ``submit_task`` (HD redraw) -> ``image_to_image``: FLUX redraws the image at ``upscale``
  times its size (a diffusion redraw at that size, not super-resolution);
* ``submit_vector_task`` -> ``vectorize`` (EPS, ``color_count``);
* ``submit_face_enhance_task`` -> refused (501): face restoration is not served here;
* ``submit_seamless_task`` -> ``seamless`` (``fit``, ``direction``, ``expand_*``);
* ``submit_remove_fabric_task`` / ``_diamonds_`` / ``_watermark_`` -> ``cleanup`` with the
  preset of that name where the area is given (a ``mask`` file or ``rectangles``: only it
  is repainted); without one, as the seed sends them, -> ``edit`` (FLUX Kontext) with the
  preset's instruction (``kinds.cleanup.INSTRUCTIONS``), over the whole image;
* ``submit_edit_image_task`` -> ``edit`` (``model_version`` v1: flux-kontext-pro, v2:
  flux-kontext-max);
* ``submit_extract_pattern_task`` -> ``extract_pattern`` (``aspect_ratio``);
* ``submit_expand_image_task`` -> ``outpaint`` (``expand_*`` fractions as pixels).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from kinds.cleanup import INSTRUCTIONS
from kinds.flux import DIMENSION_STEP
from server.compat.surface import Call, FormFile, Handler, Refused, Surface
from server.middleware import TOO_LARGE_BODIES

MULTIPART = ("multipart/form-data",)
# The seed's messages.
NO_ACCOUNT = "账户不存在"
NO_BALANCE = "账户剩余次数不足"
TOO_LARGE = "文件大小不能超过{mb}MB"
NOT_FOUND = "任务未找到或状态未知"
FAILED = "任务提交失败:{message}"
EXPAND_RANGE = "扩展参数错误:{field}必须在0.0-0.3之间"
# GraphQL status -> the seed's status (its examples stop polling on Completed or Failed).
STATUS = {
    "queued": "Pending",
    "processing": "Processing",
    "completed": "Completed",
    "failed": "Failed",
    "cancelled": "Failed",
}
# An empty prompt where the kind needs one (the seed's prompt is optional).
REDRAW_PROMPT = "high quality, detailed, sharp"
EXPAND_PROMPT = "a natural continuation of the image, same style, colours and light"

CREATE_JOB = """mutation Submit($kind: String!, $input: JSON!, $image: Upload, $mask: Upload) {
  job: createJob(kind: $kind, input: $input, image: $image, mask: $mask) { id creditCost }
}"""
BALANCE = "query Balance { me { creditsAvailable } }"
TASK = """query Task($id: ID!) {
  job: generation(id: $id) { id kind status creditCost outputs { url } }
  me { creditsAvailable }
}"""


def error(request: Request, refused: Refused) -> Response:
    """The seed's error body ``{"err_code": 1, "err_msg"}`` with the refusal's status."""
    checking = request.url.path.endswith("/check_task_status")
    if refused.status == 401:
        message = NO_ACCOUNT
    elif refused.status == 402:
        message = NO_BALANCE
    elif refused.status == 413:
        message = refused.message
    elif checking and refused.status == 404:
        message = NOT_FOUND
    elif (
        refused.status == 400
        and (refused.field or "").startswith("expand_")
        and refused.message.startswith(f"{refused.field}: ")  # the form's range check
    ):
        message = EXPAND_RANGE.format(field=refused.field)
    elif checking:
        message = refused.message
    else:
        message = FAILED.format(message=refused.message)
    return JSONResponse(
        {"err_code": 1, "err_msg": message}, status_code=refused.status, headers=refused.headers()
    )


def too_large(limit: int) -> dict[str, Any]:
    """A body over the upload limit (server.middleware.BodySizeLimit), in the seed's shape."""
    return {"err_code": 1, "err_msg": TOO_LARGE.format(mb=16)}


def too_large_check(limit: int) -> dict[str, Any]:
    return {"err_code": 1, "err_msg": f"Request body larger than {limit} bytes"}


surface = Surface(
    "seed-004 task API", error=error, prefixes=("/api/submit_", "/api/check_task_status")
)
TOO_LARGE_BODIES["/api/submit_"] = too_large
TOO_LARGE_BODIES["/api/check_task_status"] = too_large_check


# -- wire models ----------------------------------------------------------------------


class TaskForm(BaseModel):
    """What every submit takes: the key and the image."""

    user_key: str = Field(description="API 用户认证密钥: a Fluxgate API key.", max_length=256)
    input_image: FormFile = Field(description="要处理的图像文件: PNG, JPEG or WebP, at most 16 MB.")


class RedrawForm(TaskForm):
    sdxl_model_dropdown: str = Field(
        max_length=200, description='处理模型选择 (e.g. "通用模型"). No effect: FLUX redraws.'
    )
    style_dropdown: str = Field(
        max_length=200, description='处理风格选择 (e.g. "通用风格"). No effect.'
    )
    upscale: float = Field(
        ge=1, le=8,
        description="图像放大倍数 1-8: the output is this many times the image's size (each "
        "side rounded to a multiple of 16, within the size limits); FLUX redraws it there.",
    )  # fmt: skip
    s_noise: float = Field(ge=1, le=1.1, description="噪声强度 1-1.1. No effect (FLUX).")
    steps: float = Field(ge=20, le=40, description="采样步数 20-40: denoising steps.")
    high_fidelity: bool = Field(
        description="高保真: strength 0.3 instead of 0.5 (closer to the input)."
    )
    strong_inpaint: bool = Field(
        description="强力修复: strength strong_inpaint_intensity instead (how far to redraw)."
    )
    strong_inpaint_intensity: float = Field(
        default=0.5, ge=0, le=1, description="强力修复的强度 0-1, used with strong_inpaint."
    )
    prompt: str = Field(default="", description=f'正面提示; empty: "{REDRAW_PROMPT}".')
    neg_prompt: str = Field(
        default="",
        description="负面提示: negative_prompt, with true CFG 1.5 (twice the model runs).",
    )  # fmt: skip
    vector_switch: bool = Field(
        default=False,
        description="矢量图: only false. Vectorize the result with submit_vector_task.",
    )
    color_count: int = Field(
        default=5, ge=2, le=16, description="矢量图颜色数量. No effect (vector_switch is false)."
    )
    auto_generate_prompt: bool = Field(
        default=False,
        description="自动生成提示词. No effect: no captioning model runs; generated_prompt "
        "is never returned.",
    )


class VectorForm(TaskForm):
    color_count: int = Field(default=5, ge=2, le=16, description="矢量图颜色数量 2-16.")


class ImageForm(TaskForm):
    """Only the image (face enhance)."""


class SeamlessForm(TaskForm):
    fit: float = Field(
        default=0.5, ge=0.1, le=0.9, description="接缝拼合度 0.1-0.9: the seam band's width."
    )
    direction: int = Field(default=0, ge=0, le=2, description="0 四周无缝, 1 仅上下, 2 仅左右.")
    expand_top: float = Field(
        default=0.0, ge=0.0, le=0.3,
        description="向上扩图比例 0-0.3: extended first (an outpaint, priced as one).",
    )  # fmt: skip
    expand_bottom: float = Field(default=0.0, ge=0.0, le=0.3, description="向下扩图比例 0-0.3.")
    expand_left: float = Field(default=0.0, ge=0.0, le=0.3, description="向左扩图比例 0-0.3.")
    expand_right: float = Field(default=0.0, ge=0.0, le=0.3, description="向右扩图比例 0-0.3.")


class RemoveForm(TaskForm):
    mask: FormFile | None = Field(
        default=None,
        description="Fluxgate: where to remove, white = remove, the image's size (or "
        "rectangles). Only that area is repainted. Without either, the whole image is "
        "edited by instruction (FLUX Kontext), which finds what to remove itself.",
    )
    rectangles: str | None = Field(
        default=None,
        max_length=4096,
        description='Fluxgate: where to remove, "x,y,w,h;x,y,w,h" in the image\'s pixels.',
    )


class EditForm(TaskForm):
    prompt: str = Field(min_length=1, description="AI编辑指令.")
    model_version: Literal["v1", "v2"] = Field(
        default="v1", description="v1: flux-kontext-pro; v2: flux-kontext-max."
    )


class PatternForm(TaskForm):
    aspect_ratio: str = Field(default="1:1", max_length=16, description='出图比例 "W:H".')


class ExpandForm(TaskForm):
    expand_top: float = Field(default=0.0, ge=0.0, le=0.3, description="向上扩图比例 0-0.3.")
    expand_bottom: float = Field(default=0.0, ge=0.0, le=0.3, description="向下扩图比例 0-0.3.")
    expand_left: float = Field(default=0.0, ge=0.0, le=0.3, description="向左扩图比例 0-0.3.")
    expand_right: float = Field(default=0.0, ge=0.0, le=0.3, description="向右扩图比例 0-0.3.")
    prompt: str = Field(default="", description=f'扩展部分的提示词; empty: "{EXPAND_PROMPT}".')


class StatusForm(BaseModel):
    user_key: str = Field(description="API 用户认证密钥.", max_length=256)
    task_id: str = Field(min_length=1, max_length=64, description="The submit's task_id.")


class Submitted(BaseModel):
    err_code: int = Field(description="0: accepted.")
    task_id: str = Field(description="The job's id (24 hex characters).")
    remaining_count: int = Field(description="Jobs of this price the balance still covers.")
    remaining_money: int = Field(description="Credits available (Fluxgate credits, not yuan).")


class TaskStatus(BaseModel):
    err_code: int = Field(description="0: found.")
    task_id: str
    status: str = Field(description="Pending | Processing | Completed | Failed.")
    images_url: str | None = Field(default=None, description="The first output (Completed).")
    images_url_1m: str | None = Field(default=None, description="Seamless: the tile.")
    images_urls: list[str] | None = Field(
        default=None, description="Every output: extract_pattern, or a job with several."
    )
    vector_url: str | None = Field(default=None, description="Vector tasks: the EPS; else ''.")
    grid_url: str | None = Field(default=None, description="Seamless: the preview; else ''.")
    remaining_count: int | None = Field(default=None, description="When Completed.")
    remaining_money: int | None = Field(default=None, description="When Completed.")


class TaskError(BaseModel):
    err_code: int = Field(description="1: refused.")
    err_msg: str


ERRORS: dict[int, type[BaseModel] | None] = {
    status: TaskError for status in (400, 401, 402, 403, 404, 413, 415, 422, 429, 501, 503)
}
SUBMITTED: dict[int, type[BaseModel] | None] = {200: Submitted, **ERRORS}


# -- helpers ----------------------------------------------------------------------------


def check_size(call: Call, *uploads: Any) -> None:
    """The seed's own refusal for a file over the input limit (413, its message)."""
    limit = call.context.services.inputs.max_bytes
    for upload in uploads:
        if upload is not None and (upload.size or 0) > limit:
            raise Refused(
                413, "BAD_USER_INPUT", TOO_LARGE.format(mb=limit // (1024 * 1024)), "input_image"
            )


def image_size(upload: Any) -> tuple[int, int] | None:
    """The image's size from its header (None when it is not an image: createJob then
    refuses it with its own message)."""
    from PIL import Image

    try:
        with Image.open(upload.file) as image:
            size: tuple[int, int] = image.size
            return size
    except Exception:
        return None
    finally:
        upload.file.seek(0)


async def submit(
    call: Call, kind: str, values: dict[str, Any], image: Any, mask: Any = None
) -> dict[str, Any]:
    check_size(call, image, mask)
    data = await call.run(CREATE_JOB, {"kind": kind, "input": values, "image": image, "mask": mask})
    job = data["job"]
    available = (await call.run(BALANCE))["me"]["creditsAvailable"]
    return Submitted(
        err_code=0,
        task_id=job["id"],
        remaining_count=remaining_count(available, job["creditCost"]),
        remaining_money=available,
    ).model_dump()


def remaining_count(available: int, cost: int) -> int:
    return available // cost if cost > 0 else available


def submit_endpoint(path: str, summary: str, form: type[BaseModel]) -> Callable[[Handler], Handler]:
    return surface.endpoint(
        "POST", path, summary=summary, body=form, media=MULTIPART, responses=SUBMITTED,
        auth="form", key_field="user_key",
    )  # fmt: skip


# -- endpoints --------------------------------------------------------------------------


@submit_endpoint("/api/submit_task", "HD redraw (image_to_image at upscale x the size)", RedrawForm)
async def submit_task(call: Call) -> dict[str, Any]:
    form: RedrawForm = call.body
    if form.vector_switch:
        raise Refused.bad_input(
            "vector_switch is not served with a redraw: vectorize the result with "
            "/api/submit_vector_task",
            "vector_switch",
        )
    if form.strong_inpaint:
        strength = form.strong_inpaint_intensity
    else:
        strength = 0.3 if form.high_fidelity else 0.5
    values: dict[str, Any] = {
        "prompt": form.prompt.strip() or REDRAW_PROMPT,
        "steps": round(form.steps),
        "strength": strength,
    }
    if form.neg_prompt.strip():
        values.update(negative_prompt=form.neg_prompt, true_cfg_scale=1.5)
    size = image_size(form.input_image)
    if size is not None and form.upscale != 1:
        values["width"], values["height"] = (
            max(DIMENSION_STEP, round(side * form.upscale / DIMENSION_STEP) * DIMENSION_STEP)
            for side in size
        )
    return await submit(call, "image_to_image", values, form.input_image)


@submit_endpoint("/api/submit_vector_task", "Vectorize to EPS (vectorize)", VectorForm)
async def submit_vector_task(call: Call) -> dict[str, Any]:
    form: VectorForm = call.body
    values = {"format": "eps", "preset": "logo", "color_count": form.color_count}
    return await submit(call, "vectorize", values, form.input_image)


@submit_endpoint("/api/submit_face_enhance_task", "Face enhance (not served)", ImageForm)
async def submit_face_enhance_task(call: Call) -> dict[str, Any]:
    raise Refused(
        501,
        "NOT_IMPLEMENTED",
        "face enhancement is not served on this deployment (no face restoration or "
        "upscaling model runs here); nothing was charged",
    )


@submit_endpoint("/api/submit_seamless_task", "Seamless tile (seamless)", SeamlessForm)
async def submit_seamless_task(call: Call) -> dict[str, Any]:
    form: SeamlessForm = call.body
    values = form.model_dump(
        include={"fit", "direction", "expand_top", "expand_bottom", "expand_left", "expand_right"}
    )
    return await submit(call, "seamless", values, form.input_image)


async def remove(call: Call, preset: str) -> dict[str, Any]:
    form: RemoveForm = call.body
    if form.mask is None and form.rectangles is None:
        return await submit(call, "edit", {"prompt": INSTRUCTIONS[preset]}, form.input_image)
    values: dict[str, Any] = {"preset": preset}
    if form.rectangles is not None:
        values["rectangles"] = form.rectangles
    return await submit(call, "cleanup", values, form.input_image, form.mask)


@submit_endpoint(
    "/api/submit_remove_fabric_task", "Remove fabric texture (cleanup, remove_fabric)", RemoveForm
)
async def submit_remove_fabric_task(call: Call) -> dict[str, Any]:
    return await remove(call, "remove_fabric")


@submit_endpoint(
    "/api/submit_remove_diamonds_task",
    "Remove rhinestones (cleanup, remove_diamonds)",
    RemoveForm,
)
async def submit_remove_diamonds_task(call: Call) -> dict[str, Any]:
    return await remove(call, "remove_diamonds")


@submit_endpoint(
    "/api/submit_remove_watermark_task",
    "Remove a watermark (cleanup, remove_watermark)",
    RemoveForm,
)
async def submit_remove_watermark_task(call: Call) -> dict[str, Any]:
    return await remove(call, "remove_watermark")


@submit_endpoint("/api/submit_edit_image_task", "Edit by instruction (edit)", EditForm)
async def submit_edit_image_task(call: Call) -> dict[str, Any]:
    form: EditForm = call.body
    values: dict[str, Any] = {"prompt": form.prompt}
    if form.model_version == "v2":
        values["service"] = "flux-kontext-max"
    return await submit(call, "edit", values, form.input_image)


@submit_endpoint(
    "/api/submit_extract_pattern_task", "Extract a print (extract_pattern)", PatternForm
)
async def submit_extract_pattern_task(call: Call) -> dict[str, Any]:
    form: PatternForm = call.body
    return await submit(
        call, "extract_pattern", {"aspect_ratio": form.aspect_ratio}, form.input_image
    )


@submit_endpoint("/api/submit_expand_image_task", "Expand an image (outpaint)", ExpandForm)
async def submit_expand_image_task(call: Call) -> dict[str, Any]:
    form: ExpandForm = call.body
    values: dict[str, Any] = {"prompt": form.prompt.strip() or EXPAND_PROMPT}
    size = image_size(form.input_image)
    if size is not None:
        width, height = size
        values.update(
            top=round(form.expand_top * height),
            bottom=round(form.expand_bottom * height),
            left=round(form.expand_left * width),
            right=round(form.expand_right * width),
        )
    return await submit(call, "outpaint", values, form.input_image)


@surface.endpoint(
    "POST", "/api/check_task_status", summary="A task's status and results",
    body=StatusForm, media=MULTIPART, responses={200: TaskStatus, **ERRORS},
    auth="form", key_field="user_key",
)  # fmt: skip
async def check_task_status(call: Call) -> dict[str, Any]:
    form: StatusForm = call.body
    data = await call.run(TASK, {"id": form.task_id})
    job = data["job"]
    status = TaskStatus(err_code=0, task_id=job["id"], status=STATUS.get(job["status"], "Failed"))
    if job["status"] == "completed":
        urls = [output["url"] for output in job["outputs"]]
        first = urls[0] if urls else ""
        status.images_url = first
        status.vector_url = first if job["kind"] == "vectorize" else ""
        status.grid_url = ""
        if job["kind"] == "seamless":
            status.images_url_1m = first
            status.grid_url = urls[1] if len(urls) > 1 else ""
        elif job["kind"] == "extract_pattern" or len(urls) > 1:
            status.images_urls = urls
        available = data["me"]["creditsAvailable"]
        status.remaining_count = remaining_count(available, job["creditCost"])
        status.remaining_money = available
    return status.model_dump(exclude_none=True)
