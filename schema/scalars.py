from __future__ import annotations

from datetime import UTC, datetime
from typing import NewType

import strawberry

# ISO-8601 UTC with a "Z", as the seed shows: 2024-01-01T00:00:00Z.
DateTime = strawberry.scalar(
    NewType("DateTime", datetime),
    serialize=lambda v: v.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
    parse_value=lambda v: datetime.fromisoformat(v),
    description="ISO-8601 timestamp in UTC, e.g. 2024-01-01T00:00:00Z",
)
