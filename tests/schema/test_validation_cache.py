"""A repeated document is validated once (issue 15): strawberry's ValidationCache is keyed
by the document and the validation rules, so the depth and alias rules must be the same
objects on every request, not made anew per request (they were: every request was
validated from scratch, a quarter of the API's CPU under load)."""

from __future__ import annotations

from typing import Any

from strawberry.extensions.validation_cache import _get_validate_cache

from schema import build_schema

# Refused in validation, so nothing runs (no context needed): the cache is what is tested.
DOCUMENT = """query Q { generation(id: "x") { id nope } }"""
# Deeper than the default 10 (the fields need not exist: every rule reports).
TOO_DEEP = "query { " + "a { " * 12 + "b" + " }" * 12 + " }"


async def test_a_repeated_document_is_validated_from_the_cache() -> None:
    schema = build_schema()
    cache: Any = _get_validate_cache(256)  # an lru_cache-wrapped function
    first = await schema.execute(DOCUMENT)
    before = cache.cache_info()
    answers = [await schema.execute(DOCUMENT) for _ in range(5)]
    after = cache.cache_info()
    assert after.hits - before.hits == 5, (before, after)
    assert after.misses == before.misses
    assert first.errors and all(a.errors == first.errors for a in answers)


async def test_the_cached_rules_still_limit_depth() -> None:
    schema = build_schema()
    for _ in range(2):  # the second time from the cache
        refused = await schema.execute(TOO_DEEP)
        assert refused.errors is not None
        messages = [e.message for e in refused.errors]
        assert any("exceeds maximum operation depth" in m for m in messages), messages
