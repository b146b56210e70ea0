"""The README stays true: every setting is documented, and its pasteable examples run
against the real schema."""

from __future__ import annotations

import re

from runtime.settings import ROOT, Settings
from schema import schema

README = (ROOT / "README.md").read_text()
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def test_every_setting_is_documented() -> None:
    documented = set(re.findall(r"FLUXGATE_[A-Z0-9_]+", README))
    for name in Settings.model_fields:
        assert f"FLUXGATE_{name.upper()}" in documented, name


def test_readme_graphql_examples_validate_against_the_schema() -> None:
    from graphql import parse, validate

    documents = re.findall(r"```graphql\n(.*?)```", README, flags=re.S)
    documents += [
        q.replace('\\"', '"') for q in re.findall(r'"query": "(.*?)"(?:, "variables"|})', README)
    ]
    assert len(documents) >= 6
    graphql_schema = schema._schema
    for document in documents:
        body = "\n".join(line for line in document.splitlines() if not line.startswith("#"))
        errors = validate(graphql_schema, parse(body))
        assert not errors, (document, errors)


def test_readme_states_what_the_service_does() -> None:
    """The mismatches issue 9 (item 20) found: the image URL form, what `queuePosition`
    counts, and the progress events' names. The behaviour itself is asserted against the
    running service in tests/gpu_worker/test_progress_marks.py (URL form, marks) and
    tests/server/test_queue_position.py (0 = next, running jobs not counted)."""
    assert "/files/<job id>.png" not in README and "/files/{id}.png" not in README
    assert "/files/<job id>-<16 hex>-<n>.<png|jpg|webp>" in README
    assert "not counting those already running; 0 = next" in README
    for mark in ("`progress.25`", "`progress.50`", "`progress.75`"):
        assert mark in README


def test_readme_states_what_hardening_decided() -> None:
    """Issue 9 items 17 and 18 asked the README to say two things the code decides: a
    webhook host *name* that resolves privately is refused only at delivery
    (tests/gpu_worker/test_webhooks.py), and a key in `connection_init` wins over the
    handshake header (tests/server/test_websocket_protocols.py)."""
    prose = " ".join(README.split())
    assert "resolves to a private address is accepted at submit and refused only at" in prose
    assert "A key in the `connection_init` payload wins over one in the handshake" in prose


def test_readme_deploying_names_every_pool_of_the_example_registry() -> None:
    """The compose section lists the example registry's pools and counts their GPUs, and
    the GPU sizing table has a row for each pool (a pool's worker is what a GPU holds)."""
    from tests.deploy.common import example_pools

    pools = example_pools()
    deploying = README.split("## Deploying", 1)[1].split("\n## ", 1)[0]
    compose = " ".join(deploying.split("### Docker Compose", 1)[1].split("\n### ", 1)[0].split())
    sizing = deploying.split("### GPU sizing per model", 1)[1].split("\n### ", 1)[0]
    listed = re.search(r"models\.example\.toml` \(([^)]*)\)", compose)
    assert listed is not None
    assert set(re.findall(r"`([\w-]+)`", listed.group(1))) == pools
    assert f"The {NUMBERS[len(pools)]} workers need {NUMBERS[len(pools)]} GPUs" in compose
    for pool in pools:
        assert f"pool `{pool}`)" in sizing, pool
