"""Where images go: jobs' inputs and outputs. ``Storage`` is the interface;
``LocalStorage`` writes under a directory the API serves at ``/files/``. An S3-compatible
backend implements the same methods."""

from __future__ import annotations

import asyncio
import os
import re
import tempfile
from pathlib import Path
from typing import Protocol

_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}(/[A-Za-z0-9][A-Za-z0-9._-]{0,200}){0,3}$")


def check_key(key: str) -> str:
    """Keys are simple relative paths: no '..', no absolute paths, no odd characters."""
    if not _KEY.match(key) or ".." in key:
        raise ValueError(f"invalid storage key {key!r}")
    return key


class Storage(Protocol):
    async def put(self, key: str, data: bytes, content_type: str) -> None: ...

    async def get(self, key: str) -> bytes:
        """The stored bytes; FileNotFoundError when there are none."""
        ...

    async def delete(self, key: str) -> None: ...

    def url(self, key: str) -> str: ...

    def local_path(self, key: str) -> Path | None:
        """The file on this machine, if the backend keeps one (served by the API)."""
        ...


class LocalStorage:
    def __init__(self, root: Path, public_base: str) -> None:
        self.root = root.resolve()
        self.public_base = public_base.rstrip("/")

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        await asyncio.to_thread(self._write, check_key(key), data)

    def _write(self, key: str, data: bytes) -> None:
        target = self.root / key
        target.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename: a reader never sees a half-written image.
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    async def get(self, key: str) -> bytes:
        return await asyncio.to_thread((self.root / check_key(key)).read_bytes)

    async def delete(self, key: str) -> None:
        await asyncio.to_thread((self.root / check_key(key)).unlink, missing_ok=True)

    def url(self, key: str) -> str:
        return f"{self.public_base}/files/{check_key(key)}"

    def local_path(self, key: str) -> Path | None:
        try:
            path = (self.root / check_key(key)).resolve()
        except ValueError:
            return None
        if not path.is_relative_to(self.root) or not path.is_file():
            return None
        return path
