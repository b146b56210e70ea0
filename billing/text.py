"""Text PostgreSQL cannot store: a NUL character (``text`` and ``jsonb`` refuse it) and a
lone surrogate (UTF-8 cannot encode one; JSON's ``"\\ud800"``). Either would fail deep
inside the database driver, so input is checked where it enters: GraphQL variables and
literals (schema/textguard.py), image keys (server/app.py), Stripe events and prompts
(billing/service/payments.py, billing/requests.py).
"""

from __future__ import annotations

import re
from typing import Any

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def unstorable(text: str) -> bool:
    """True when ``text`` has a NUL or a lone surrogate."""
    return _UNSTORABLE.search(text) is not None


def unstorable_path(value: Any, path: str = "") -> str | None:
    """The dotted path ("input.prompt", "ids.2") of the first unstorable string in a JSON
    value (keys included), or None. Iterative, so any nesting depth is safe."""
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            if unstorable(item):
                return where
        elif isinstance(item, dict):
            for key, child in item.items():
                name = f"{where}.{key}" if where else str(key)
                if isinstance(key, str) and unstorable(key):
                    return where or "variables"
                stack.append((child, name))
        elif isinstance(item, list):
            stack.extend((child, f"{where}.{i}") for i, child in enumerate(item))
    return None
