"""The compatible REST surfaces: each seed's API as a thin adapter on the same job kinds,
ledger, limits, library and events (README "Compatible APIs").

- ``v2``: seed 000's REST v2 under ``/api/...`` (and its Socket.IO events);
- ``images_v1``: seed 002's ``/api/v1/images``;
- ``flux_images``: seed 003's ``POST /flux/images`` (JSON or NDJSON streaming);
- ``tasks``: seed 004's task API (``submit_*_task``, ``check_task_status``).
"""

from __future__ import annotations

from server.compat import flux_images, images_v1, tasks, v2
from server.compat.surface import Surface

# Order matters for routing: seed 002's /api/v1/images before seed 000's /api/images.
SURFACES: tuple[Surface, ...] = (
    images_v1.surface,
    v2.surface,
    flux_images.surface,
    tasks.surface,
)

__all__ = ["SURFACES", "Surface"]
