"""The LoRA catalogue on GraphQL (issue 13): ``loras(category)`` for every caller (the
enabled ones, with their categories), and the admin-only mutations that manage it
(FORBIDDEN for other callers). Jobs name LoRAs in their ``loras`` input (kinds/lora.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import strawberry
from pydantic.alias_generators import to_camel
from strawberry.types import Info

from billing import models
from billing.db import UnitOfWork
from billing.errors import BadUserInput, Forbidden
from billing.service import admin, loras
from schema.context import Context
from schema.scalars import UtcDateTime

Ctx = Info[Context, None]
T = TypeVar("T")


@strawberry.type(description="A LoRA style jobs may apply (`loras: [{id, scale}]`).")
class Lora:
    id: strawberry.ID
    name: str
    category: str
    description: str
    trigger_words: list[str] = strawberry.field(
        description="Appended to the prompt of a job that applies it."
    )
    base_model: str = strawberry.field(
        description="The models it runs on: provider, provider/version or family:<name>."
    )
    default_scale: float = strawberry.field(description="Its scale when a job gives none.")
    enabled: bool
    created_at: UtcDateTime
    updated_at: UtcDateTime

    @classmethod
    def from_model(cls, lora: models.Lora) -> Lora:
        return cls(
            id=strawberry.ID(lora.id),
            name=lora.name,
            category=lora.category,
            description=lora.description,
            trigger_words=list(lora.trigger_words),
            base_model=lora.base_model,
            default_scale=lora.default_scale,
            enabled=lora.enabled,
            created_at=UtcDateTime(lora.created_at),
            updated_at=UtcDateTime(lora.updated_at),
        )


@strawberry.type(description="A LoRA category and how many LoRAs it has.")
class LoraCategory:
    name: str
    count: int


@strawberry.type(description="The LoRA catalogue: the LoRAs and their categories.")
class LoraCatalog:
    loras: list[Lora]
    categories: list[LoraCategory]


@strawberry.input(description="A LoRA's fields; absent ones are unchanged (on add: defaults).")
class LoraFieldsInput:
    name: str | None = None
    category: str | None = None
    base_model: str | None = strawberry.field(
        default=None, description="provider, provider/version or family:<name>."
    )
    path: str | None = strawberry.field(
        default=None, description="Absolute path of the .safetensors file on the workers."
    )
    trigger_words: list[str] | None = None
    default_scale: float | None = strawberry.field(default=None, description="0..2; default 1.")
    description: str | None = None
    enabled: bool | None = None

    def to_changes(self) -> loras.LoraChanges:
        return loras.LoraChanges(
            name=self.name,
            category=self.category,
            base_model=self.base_model,
            path=self.path,
            trigger_words=self.trigger_words,
            default_scale=self.default_scale,
            description=self.description,
            enabled=self.enabled,
        )


async def _camel(call: Awaitable[T]) -> T:
    """The service names fields in snake_case; GraphQL's inputs are camelCase."""
    try:
        return await call
    except BadUserInput as exc:
        field = to_camel(exc.field)
        raise BadUserInput(field, exc.message.replace(exc.field, field, 1)) from None


async def _audit(
    info: Ctx, uow: UnitOfWork, action: str, lora_id: str, changes: Any = None
) -> None:
    """The change in the admin audit log, in the change's own transaction."""
    caller = await info.context.caller()
    await admin.record_lora_change(
        uow.session, admin.Actor.of(caller.account), action, lora_id, changes
    )


async def _admin(info: Ctx) -> None:
    caller = await info.context.caller()
    if not caller.account.is_admin:
        raise Forbidden("Only an admin account may manage LoRAs")


@strawberry.type
class LoraQuery:
    @strawberry.field(
        description="The enabled LoRA styles (of one category, if given) and the categories "
        "of the whole catalogue. Admins may ask for the disabled ones too."
    )
    async def loras(
        self, info: Ctx, category: str | None = None, include_disabled: bool = False
    ) -> LoraCatalog:
        if include_disabled:
            await _admin(info)
        else:
            await info.context.caller()
        async with info.context.read() as session:
            every = await loras.list_loras(session, include_disabled=include_disabled)
        wanted = category.strip().lower() if category else None
        return LoraCatalog(
            loras=[Lora.from_model(x) for x in every if wanted is None or x.category == wanted],
            categories=[LoraCategory(name=n, count=c) for n, c in loras.categories(every)],
        )


def _mutation(
    run: Callable[[Ctx], Awaitable[models.Lora]],
) -> Callable[[Ctx], Awaitable[Lora]]:
    async def resolve(info: Ctx) -> Lora:
        await _admin(info)
        return Lora.from_model(await _camel(run(info)))

    return resolve


@strawberry.type
class LoraMutation:
    @strawberry.mutation(
        description="Admin only: add a LoRA (name, category, baseModel and path required). "
        "CONFLICT if the id is taken; FORBIDDEN for other callers."
    )
    async def add_lora(self, info: Ctx, id: strawberry.ID, fields: LoraFieldsInput) -> Lora:
        async def run(info: Ctx) -> models.Lora:
            changes = fields.to_changes()
            async with info.context.transaction() as uow:
                added = await loras.add(
                    uow.session, str(id), changes, catalog=info.context.services.catalog
                )
                await _audit(info, uow, admin.Action.LORA_ADD, added.id, changes)
                return added

        return await _mutation(run)(info)

    @strawberry.mutation(description="Admin only: change a LoRA's fields (enable, disable...).")
    async def update_lora(self, info: Ctx, id: strawberry.ID, fields: LoraFieldsInput) -> Lora:
        async def run(info: Ctx) -> models.Lora:
            changes = fields.to_changes()
            async with info.context.transaction() as uow:
                updated = await loras.update(
                    uow.session, str(id), changes, catalog=info.context.services.catalog
                )
                await _audit(info, uow, admin.Action.LORA_UPDATE, updated.id, changes)
                return updated

        return await _mutation(run)(info)

    @strawberry.mutation(
        description="Admin only: remove a LoRA from the catalogue (accepted jobs still run it)."
    )
    async def remove_lora(self, info: Ctx, id: strawberry.ID) -> Lora:
        async def run(info: Ctx) -> models.Lora:
            async with info.context.transaction() as uow:
                removed = await loras.remove(uow.session, str(id))
                await _audit(info, uow, admin.Action.LORA_REMOVE, removed.id)
                return removed

        return await _mutation(run)(info)
