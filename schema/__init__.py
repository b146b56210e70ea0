"""The GraphQL schema (strawberry). ``schema.graphql`` at the repository root is its
exported SDL; a test fails when it is stale (`make schema` rewrites it)."""

from __future__ import annotations

import strawberry
from strawberry.extensions import ParserCache, ValidationCache
from strawberry.schema.config import StrawberryConfig

from schema.errors import ErrorMapping
from schema.resolvers import Mutation, Query
from schema.scalars import SCALARS

schema = strawberry.Schema(
    query=Query,
    mutation=Mutation,
    extensions=[
        ErrorMapping,
        lambda: ParserCache(maxsize=256),
        lambda: ValidationCache(maxsize=256),
    ],
    config=StrawberryConfig(scalar_map=SCALARS),
)
