"""Seed 000's REST v2 (``/api/...``): one surface, its endpoints in modules by area —
``jobs`` (generate, img2img, upscale, get, images, loras), ``batches`` (and the Socket.IO
events, ``events``), ``account`` (user profile, API keys, stats, status, admin)."""

from __future__ import annotations

from server.compat.v2 import account, batches, jobs
from server.compat.v2.common import surface

__all__ = ["account", "batches", "jobs", "surface"]
