"""schema.graphql is the committed SDL of the served schema; this fails when it is stale
(run `make schema`)."""

from __future__ import annotations

from runtime.settings import ROOT
from schema import schema


def test_committed_schema_matches_code() -> None:
    committed = (ROOT / "schema.graphql").read_text()
    assert committed.strip() == schema.as_str().strip(), (
        "schema.graphql is stale: run `make schema`"
    )


def test_seed_operations_exist_with_seed_field_names() -> None:
    sdl = schema.as_str()
    for fragment in (
        "generate(input: GenerateInput!): Generation",
        "generateImage(input: ImageGenerationInput!): Generation",
        "generation(id: ID!): Generation!",
        "price(input: ImageGenerationInput!): PriceQuote!",
        "creditCost: Int!",
        "webhookUrl: String",
        "creditsAvailable: Int!",
        "creditsReserved: Int!",
    ):
        assert fragment in sdl, fragment
