"""The GraphQL extension that counts each operation against the caller's requests per
minute (``schema.limiter``: in Redis, so the limit holds across every API process).

What counts: each authenticated GraphQL query, subscription or REST call counts 1; a
mutation counts 1 per root field, aliases included, so aliasing cannot multiply the work
of one request. An operation that would exceed the limit is refused whole, before any
field runs, and costs nothing. One that can never fit (it counts more than the limit) is
bad input, not a rate limit: retrying cannot help. With Redis unreachable every counted
request is refused with SERVICE_UNAVAILABLE (503, Retry-After), again costing nothing.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    InlineFragmentNode,
    OperationType,
    SelectionSetNode,
)
from graphql.utilities import get_operation_ast
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from strawberry.extensions import SchemaExtension

from billing.errors import BadUserInput, FluxgateError, RateLimited, ServiceUnavailable
from schema.context import Context

log = logging.getLogger(__name__)


def operation_cost(document: DocumentNode, operation_name: str | None) -> int:
    """1 for a query or subscription; for a mutation, the number of root fields it selects
    through aliases, inline fragments and fragment spreads (each fragment counted once)."""
    operation = get_operation_ast(document, operation_name)
    if operation is None or operation.operation != OperationType.MUTATION:
        return 1
    fragments = {
        d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)
    }
    seen: set[str] = set()

    def count(selection_set: SelectionSetNode) -> int:
        total = 0
        for node in selection_set.selections:
            if isinstance(node, FieldNode):
                total += not node.name.value.startswith("__")
            elif isinstance(node, InlineFragmentNode):
                total += count(node.selection_set)
            elif isinstance(node, FragmentSpreadNode) and node.name.value not in seen:
                seen.add(node.name.value)
                fragment = fragments.get(node.name.value)
                if fragment is not None:
                    total += count(fragment.selection_set)
        return total

    return max(1, count(operation.selection_set))


class RequestRateLimit(SchemaExtension):
    async def on_execute(self) -> AsyncIterator[None]:
        context = self.execution_context.context
        assert isinstance(context, Context)
        try:
            caller = await context.caller()
        except FluxgateError:
            yield  # unauthenticated: the resolvers answer UNAUTHENTICATED
            return
        if context.rate is not None and getattr(context.state, "fluxgate_rest_call", False):
            # A compatible REST endpoint (server/compat) runs several operations for one
            # request: the request counts once, on its first.
            yield
            return
        document = self.execution_context.graphql_document
        cost = 1
        if document is not None:
            cost = operation_cost(document, self.execution_context.operation_name)
        limits = await context.limits()
        try:
            status = await context.services.limiter.hit(
                caller.account.id, limits.requests_per_minute, cost
            )
        except (RedisConnectionError, RedisTimeoutError) as exc:
            # Redis is down or stalled (the pool's socket timeouts bound the wait): refuse
            # before anything runs, so nothing is charged, and skip the headers' Redis read.
            context.rate_unavailable()
            log.warning("rate limiter unavailable: %s", exc)
            raise ServiceUnavailable() from None
        if status is None:
            yield
            return
        context.rate = status
        if cost > status.limit:
            # Retrying cannot help, so this is bad input rather than RATE_LIMITED, and
            # carries no retryAfter (nor a Retry-After header): nothing was counted.
            raise BadUserInput(
                "query",
                f"This operation counts {cost} requests and can never fit in the limit "
                f"of {status.limit} per minute; send fewer fields at a time",
            )
        if not status.allowed:
            message = f"Rate limit of {status.limit} requests per minute reached" + (
                f" (this operation counts {cost})" if cost > 1 else ""
            )
            raise RateLimited("rate", status.retry_after, message)
        yield
