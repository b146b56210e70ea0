"""Text that can never be stored is refused once, at the edge, for every operation.

PostgreSQL ``text`` cannot hold a NUL character and UTF-8 cannot encode a lone surrogate
(JSON's ``"\\ud800"``), so either would fail deep inside the database driver. Every
string a client sends — variables (keys and values, at any depth) and string literals in
the document — is checked before the operation runs, over HTTP, websockets and the REST
shim alike (the REST shim passes its body and path parameters as variables), and refused
with ``BAD_USER_INPUT`` naming the field.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator
from typing import Any

from graphql import (
    ArgumentNode,
    DocumentNode,
    ObjectFieldNode,
    StringValueNode,
    VariableDefinitionNode,
    Visitor,
    visit,
)
from strawberry.extensions import SchemaExtension

from billing.errors import BadUserInput
from billing.text import unstorable, unstorable_path


def refusal(field: str) -> BadUserInput:
    return BadUserInput(
        field, f"{field or 'input'}: text must not contain NUL characters or lone surrogates"
    )


class _Literals(Visitor):
    def __init__(self) -> None:
        super().__init__()
        self.found: str | None = None

    def enter_string_value(
        self, node: StringValueNode, key: Any, parent: Any, path: Any, ancestors: Any
    ) -> Any:
        if self.found is None and unstorable(node.value):
            # graphql-core passes the direct parent apart from the other ancestors.
            self.found = ".".join(_names([*ancestors, parent])) or "query"
            return Visitor.BREAK
        return None


def _names(ancestors: list[Any]) -> Iterator[str]:
    for node in ancestors:
        if isinstance(node, ArgumentNode | ObjectFieldNode):
            yield node.name.value
        elif isinstance(node, VariableDefinitionNode):
            yield node.variable.name.value


# Documents come from the parser cache, so the same document object recurs: its answer
# is kept by identity (a deep hash of a large document would cost what the visit does).
_CHECKED: OrderedDict[int, tuple[DocumentNode, str | None]] = OrderedDict()
_CHECKED_MAX = 256


def bad_literal_path(document: DocumentNode) -> str | None:
    """The argument path of the first unstorable string literal in a document."""
    checked = _CHECKED.get(id(document))
    if checked is not None and checked[0] is document:
        return checked[1]
    visitor = _Literals()
    visit(document, visitor)
    _CHECKED[id(document)] = (document, visitor.found)
    if len(_CHECKED) > _CHECKED_MAX:
        _CHECKED.popitem(last=False)
    return visitor.found


class TextInputGuard(SchemaExtension):
    """Refuses unstorable text before the operation runs (and before it is counted)."""

    async def on_execute(self) -> AsyncIterator[None]:
        context = self.execution_context
        field = unstorable_path(context.variables or {})
        if field is None and context.graphql_document is not None:
            field = bad_literal_path(context.graphql_document)
        if field is not None:
            raise refusal(field)
        yield
