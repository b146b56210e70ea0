"""The GraphQL schema (strawberry). ``schema.graphql`` at the repository root is its
exported SDL; a test fails when it is stale (`make schema` rewrites it)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import strawberry
from graphql import ASTValidationRule, GraphQLError
from strawberry.extensions import (
    AddValidationRules,
    DisableIntrospection,
    MaxTokensLimiter,
    ParserCache,
    SchemaExtension,
    ValidationCache,
)
from strawberry.extensions.max_aliases import create_validator as alias_rule
from strawberry.extensions.query_depth_limiter import create_validator as depth_rule
from strawberry.schema.config import StrawberryConfig
from strawberry.tools import merge_types
from strawberry.types import ExecutionContext

from schema.errors import ErrorMapping, map_errors_in_place
from schema.kind_schema import kind_mutations, kind_queries
from schema.ratelimit import RequestRateLimit
from schema.resolvers import Mutation, Query, Subscription
from schema.scalars import SCALARS
from schema.textguard import TextInputGuard


class ParseOnce(ParserCache):
    """strawberry's ParserCache, except for a document that does not parse: that one is
    left to strawberry's own parse, which reports it as a pre-execution error (code
    GRAPHQL_PARSE_FAILED) on every transport. Raised from the cache, it escaped the
    websocket paths (``Schema.stream``), and the client got no error at all."""

    def on_parse(self) -> Iterator[None]:
        context = self.execution_context
        with contextlib.suppress(GraphQLError):
            context.graphql_document = self.cached_parse_document(
                context.query, **context.parse_options
            )
        yield


class FluxgateSchema(strawberry.Schema):
    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        # Client mistakes are not server errors: they are answered, not logged as ERROR.
        # Unexpected errors are logged by ErrorMapping when it masks them.
        map_errors_in_place(errors)


@dataclass(frozen=True, slots=True)
class Hardening:
    """Limits on what one document may ask (FLUXGATE_GRAPHQL_* settings)."""

    introspection: bool = True
    max_depth: int = 10
    max_aliases: int = 30
    max_tokens: int = 2000


def build_schema(hardening: Hardening = Hardening()) -> FluxgateSchema:  # frozen
    rules: list[type[ASTValidationRule]] = [
        depth_rule(hardening.max_depth, None),
        alias_rule(hardening.max_aliases),
    ]
    extensions: list[Callable[[], SchemaExtension] | type[SchemaExtension]] = [
        ErrorMapping,
        # The token limit stops a huge document while it is parsed; depth and alias
        # limits stop deep or wide ones (circular fragments included) in validation.
        lambda: MaxTokensLimiter(max_token_count=hardening.max_tokens),
        lambda: ParseOnce(maxsize=256),
        # The depth and alias rules are made once, here: strawberry's QueryDepthLimiter and
        # MaxAliasesLimiter make a new rule class per request, and ValidationCache is keyed
        # by the rules, so with them no document was ever validated from the cache.
        lambda: AddValidationRules(rules),
        lambda: ValidationCache(maxsize=256),
        # Before the rate limit: unstorable text is refused without counting or running.
        TextInputGuard,
        RequestRateLimit,
    ]
    if not hardening.introspection:
        extensions.append(DisableIntrospection)
    return FluxgateSchema(
        query=merge_types("Query", (Query, kind_queries())),
        mutation=merge_types("Mutation", (Mutation, kind_mutations())),
        subscription=Subscription,
        extensions=extensions,
        config=StrawberryConfig(scalar_map=SCALARS),
    )


schema = build_schema()
