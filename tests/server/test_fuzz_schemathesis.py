"""Schemathesis against the GraphQL schema (issue 9, "Done when"): every query and
mutation of ``schema.graphql``, with generated arguments, sent by an authenticated
account to the real API. Zero 5xx, zero ERROR logs or tracebacks, every error in the
documented shape with a code (never INTERNAL_SERVER_ERROR), and the ledger reconciled:
refused requests charged nothing, accepted jobs hold exactly their price.

Deterministic (derandomized, no example database) and bounded (a few examples per
operation). The hostile-input table is tests/server/test_hostile_input.py."""

from __future__ import annotations

import asyncio
from typing import Any

import graphql
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from schemathesis.core.result import Ok
from schemathesis.graphql import nodes
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from billing.models import Generation
from runtime.settings import ROOT, Settings
from tests.factories import audit, create_account
from tests.server.test_hostile_input import (
    Collector,
    assert_error_shape,
    server_logs,  # noqa: F401  # the fixture
)

EXAMPLES_PER_OPERATION = 30
CREDITS = 100_000

# The JSON scalar (createJob's and priceJob's input): objects of the job kinds' own field
# names (and a few others) with scalar values, so the kinds' validation is exercised.
_JSON_KEYS = st.sampled_from([
    "prompt", "service", "version", "strength", "width", "height", "count", "format",
    "seed", "steps", "guidance", "left", "right", "top", "bottom", "aspect_ratio",
    "imageUrl", "image_id", "maskId", "negativePrompt", "output_quality", "preview",
    "webhookUrl", "webhook_events", "unknown",
])  # fmt: skip
_JSON_VALUES = st.one_of(
    st.text(max_size=20).map(nodes.String),
    st.integers(min_value=-(2**40), max_value=2**40).map(nodes.Int),
    st.floats(allow_nan=False, allow_infinity=False).map(nodes.Float),
    st.booleans().map(nodes.Boolean),
)
schemathesis.graphql.scalar(
    "JSON",
    st.dictionaries(_JSON_KEYS, _JSON_VALUES, max_size=6).map(
        lambda d: nodes.Object(
            [graphql.ObjectFieldNode(name=graphql.NameNode(value=k), value=v) for k, v in d.items()]
        )
    ),
)
# Uploads come as multipart parts, which a generated document cannot carry: null.
schemathesis.graphql.scalar("Upload", st.just(graphql.NullValueNode()))


def fuzz(url: str, api_key: str) -> tuple[int, list[str]]:
    """Runs every operation's examples; returns how many were served without errors and
    what went wrong (empty: nothing)."""
    schema = schemathesis.graphql.from_path(ROOT / "schema.graphql")
    problems: list[str] = []
    served = 0
    headers = {"Authorization": f"Bearer {api_key}"}
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result  # our own schema always loads
        operation = result.ok()

        @given(case=operation.as_strategy())
        @hypothesis_settings(
            max_examples=EXAMPLES_PER_OPERATION,
            derandomize=True,
            database=None,
            deadline=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def run(case: Any) -> None:
            nonlocal served
            response = case.call(base_url=f"{url}/graphql", headers=headers)
            where = f"{case.operation.label} {case.body!r}: {response.status_code}"
            if response.status_code >= 500:
                problems.append(f"{where} {response.text[:500]}")
                return
            try:
                body = response.json()
                if "errors" in body:
                    error = assert_error_shape(body)
                    codes = {e["extensions"]["code"] for e in body["errors"]}
                    assert "INTERNAL_SERVER_ERROR" not in codes, body
                    assert error["message"]
                else:
                    assert response.status_code == 200 and body.get("data") is not None, body
                    served += 1
            except (AssertionError, ValueError, KeyError, TypeError) as exc:
                problems.append(f"{where} {exc!r}")

        run()
    return served, problems


# Hypothesis flags any change of the global `random` state while it draws a case. The
# API, the worker and the libraries under them (redis-py's backoff jitter, for one) run in
# other threads of this process and may use that module meanwhile; the strategies here
# do not. A flake of the harness, not a finding.
@pytest.mark.filterwarnings(
    "ignore:Do not use the `random` module inside strategies"
    ":hypothesis.errors.HypothesisDeprecationWarning"
)
async def test_schemathesis_graphql(
    api: str,
    sessions: async_sessionmaker[AsyncSession],
    settings: Settings,
    server_logs: Collector,  # noqa: F811  # the fixture imported above
) -> None:
    account = await create_account(sessions, settings, credits=CREDITS)
    # The fuzzer is synchronous (requests); it runs in a thread while the API serves.
    served, problems = await asyncio.to_thread(fuzz, api, account.api_key)
    assert not problems, "\n".join(problems[:20])
    assert served > 0  # authenticated: the fuzzer reached the resolvers, not only the door
    assert not server_logs.problems(), server_logs.problems()[:10]

    # No worker serves this run's jobs: accepted ones still hold their price, cancelled
    # ones released it, and every refusal cost nothing.
    cached, summed = await audit(sessions, account.id)
    assert cached == summed
    async with sessions() as session:
        held = await session.execute(
            select(func.coalesce(func.sum(Generation.credit_cost), 0)).where(
                Generation.account_id == account.id,  # type: ignore[arg-type]
                Generation.status.in_(("queued", "processing")),  # type: ignore[attr-defined]
            )
        )
    assert cached.reserved == int(held.scalar_one())
    assert cached.available + cached.reserved == CREDITS


pytestmark = pytest.mark.filterwarnings(
    # Hypothesis warns when @given runs outside a collected test: intended here.
    "ignore::hypothesis.errors.NonInteractiveExampleWarning"
)
