"""The GraphQL schema (strawberry). ``schema.graphql`` at the repository root is its
exported SDL; a test fails when it is stale (`make schema` rewrites it)."""

from __future__ import annotations

import strawberry
from graphql import GraphQLError
from strawberry.extensions import ParserCache, ValidationCache
from strawberry.schema.config import StrawberryConfig
from strawberry.types import ExecutionContext

from schema.errors import ErrorMapping, stamp_document_errors
from schema.resolvers import Mutation, Query, Subscription
from schema.scalars import SCALARS


class FluxgateSchema(strawberry.Schema):
    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        # Client mistakes are not server errors: they are answered, not logged as ERROR.
        # Unexpected errors are logged by ErrorMapping when it masks them.
        stamp_document_errors(errors)


schema = FluxgateSchema(
    query=Query,
    mutation=Mutation,
    subscription=Subscription,
    extensions=[
        ErrorMapping,
        lambda: ParserCache(maxsize=256),
        lambda: ValidationCache(maxsize=256),
    ],
    config=StrawberryConfig(scalar_map=SCALARS),
)
