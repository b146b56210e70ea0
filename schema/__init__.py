"""The GraphQL schema (strawberry). ``schema.graphql`` at the repository root is its
exported SDL; a test fails when it is stale (`make schema` rewrites it)."""

from __future__ import annotations

import strawberry
from strawberry.extensions import ParserCache, ValidationCache

from schema.errors import ErrorMapping
from schema.resolvers import Mutation, Query

schema = strawberry.Schema(
    query=Query,
    mutation=Mutation,
    extensions=[ErrorMapping(), ParserCache(maxsize=256), ValidationCache(maxsize=256)],
)
