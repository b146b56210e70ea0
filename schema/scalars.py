from __future__ import annotations

from datetime import UTC, datetime
from typing import NewType

import strawberry
from strawberry.types.scalar import ScalarDefinition

# Timestamps go out as ISO-8601 UTC with a "Z", as seed 001 shows: 2024-01-01T00:00:00Z.
UtcDateTime = NewType("UtcDateTime", datetime)


def _serialize(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


SCALARS: dict[object, ScalarDefinition] = {
    UtcDateTime: strawberry.scalar(
        name="DateTime",
        serialize=_serialize,
        parse_value=datetime.fromisoformat,
        description="ISO-8601 timestamp in UTC, e.g. 2024-01-01T00:00:00Z",
    )
}
