"""The registry of job kinds: a kind registered here is priced, accepted, queued, run,
settled and announced on every surface with no other change."""

from __future__ import annotations

from billing.errors import BadUserInput
from kinds.base import JobKind

_KINDS: dict[str, JobKind] = {}


def register(kind: JobKind) -> JobKind:
    """Add ``kind`` (its ``name`` must be new). Returns it, for use as a decorator-like
    call at the end of a kind's module."""
    if kind.name in _KINDS and _KINDS[kind.name] is not kind:
        raise ValueError(f"job kind {kind.name!r} is already registered")
    _KINDS[kind.name] = kind
    return kind


def unregister(name: str) -> None:
    """Remove a kind (tests register their own and remove it afterwards)."""
    _KINDS.pop(name, None)


def get(name: str, *, field: str = "kind") -> JobKind:
    try:
        return _KINDS[name]
    except KeyError:
        raise BadUserInput(
            field, f"unknown job kind {name!r}; available: {', '.join(names())}"
        ) from None


def find(name: str) -> JobKind | None:
    """The kind called ``name``, or None (a worker that lacks a job's kind fails the job)."""
    return _KINDS.get(name)


def names() -> list[str]:
    return sorted(_KINDS)


def all_kinds() -> list[JobKind]:
    return [_KINDS[name] for name in names()]
