"""Thin adapters: read the typed context, call one service function, convert the result."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncGenerator, Mapping
from typing import Annotated, Any

import strawberry
from pydantic import ValidationError
from strawberry.types import Info

from billing import models
from billing.errors import BadUserInput, Forbidden, NotFound
from billing.requests import GENERATE_FIELDS, IMAGE_FIELDS, ImageRequest, RawImageRequest, validate
from billing.service import accounts, admin, generations, ledger, loras, payments, webhooks
from kinds import lora, text_to_image
from kinds.base import KindParams, Plan, PlanContext, bad_input
from kinds.lora import LoraChoice, loras_field
from kinds.presets import apply_presets, presets_fingerprint
from kinds.text_to_image import plan_request
from schema.admin import AdminMutation, AdminQuery
from schema.batches import BatchMutation, BatchQuery, BatchSubscription
from schema.context import Context
from schema.inputs import GenerateInput, ImageGenerationInput, LimitOverridesInput, ProfileInput
from schema.kind_schema import camel_errors, plain
from schema.library import LibraryMutation, LibraryQuery
from schema.live import follow, follow_account, present
from schema.loras import LoraMutation, LoraQuery
from schema.quotas import QuotaMutation, QuotaQuery
from schema.status import StatusQuery
from schema.types import (
    Account,
    AccountPlan,
    ApiKey,
    CheckoutSession,
    CreditPack,
    Generation,
    GenerationPage,
    NewApiKey,
    PriceQuote,
    WebhookDelivery,
)

Ctx = Info[Context, None]


def _validate(ctx: Context, raw: RawImageRequest, fields: Mapping[str, str]) -> ImageRequest:
    s = ctx.services
    return validate(
        raw, catalog=s.catalog, prices=s.prices, limits=s.limits, fields=fields, policy=s.policy
    )


class _Loras(KindParams):
    """The ``loras`` of a seed-001 request, checked as the job kinds check theirs."""

    loras: tuple[LoraChoice, ...] | None = loras_field()


def _lora_choices(raw: list[Any] | None) -> tuple[LoraChoice, ...]:
    if not raw:
        return ()
    try:
        return _Loras.model_validate({"loras": plain(raw)}).loras or ()
    except ValidationError as exc:
        raise bad_input(exc) from None


async def _with_loras(
    ctx: Context, plan: Plan, choices: tuple[LoraChoice, ...], request: ImageRequest
) -> Plan:
    """``plan`` with its LoRAs frozen and priced (``kinds.lora.apply``): one query for
    the catalogue rows named, none without LoRAs."""
    if not choices:
        return plan
    async with ctx.read() as session:
        found = await loras.lookup(session, [c.id for c in choices])
    s = ctx.services
    return lora.apply(
        plan,
        choices,
        request.model,
        PlanContext(catalog=s.catalog, prices=s.prices, limits=s.limits, loras=found),
    )


async def _submit(
    ctx: Context,
    raw: RawImageRequest,
    fields: Mapping[str, str],
    presets: dict[str, str | None] | None = None,
    raw_loras: list[Any] | None = None,
) -> Generation:
    caller = await ctx.caller()
    request = _validate(ctx, raw, fields)
    chosen = presets or {"style": None, "medium": None, "filter": None}
    choices = _lora_choices(raw_loras)
    plan = await _with_loras(ctx, apply_presets(plan_request(request), **chosen), choices, request)
    # Retries match on what was asked: the presets and the LoRAs count too (and nothing
    # changes for a request without them).
    asked: dict[str, str | None] = {**chosen}
    if choices:
        asked["loras"] = json.dumps([c.model_dump() for c in choices], sort_keys=True)
    job = plan.job(
        text_to_image.KIND.name,
        request_hash=presets_fingerprint(request.request_hash, asked),
        webhook_url=request.webhook_url,
        webhook_events=request.webhook_events,
        preview=request.preview,
    )
    async with ctx.transaction() as uow:
        generation = await generations.submit(
            uow,
            account_id=caller.account.id,
            api_key_id=caller.api_key_id,
            request=job,
            idempotency_key=ctx.idempotency_key,
            plans=ctx.services.plans,
            limits=await ctx.limits(),
        )
    return await present(ctx, generation)


def _account(ctx: Context, account: models.Account) -> Account:
    return Account.from_model(
        account, ctx.services.plans.limits(account.plan, account.limit_overrides)
    )


def _uuid(value: str, field: str) -> uuid.UUID:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise NotFound("API key" if field == "id" else "Account") from None


@strawberry.type
class Query(AdminQuery, BatchQuery, LibraryQuery, LoraQuery, QuotaQuery, StatusQuery):
    @strawberry.field(description="The caller's account, balance and limits.")
    async def me(self, info: Ctx) -> Account:
        caller = await info.context.caller()
        async with info.context.read() as session:
            account = await accounts.get_account(session, caller.account.id)
        return _account(info.context, account)

    @strawberry.field(description="Credit packs for sale (empty list: purchases are off).")
    async def credit_packs(self, info: Ctx) -> list[CreditPack]:
        await info.context.caller()
        if info.context.services.payments.gateway is None:
            return []
        return [
            CreditPack(id=strawberry.ID(p.id), name=p.name, credits=p.credits, price=p.price,
                       currency=p.currency)
            for p in info.context.services.packs.packs
        ]  # fmt: skip

    @strawberry.field(description="The caller's API keys, revoked ones included.")
    async def api_keys(self, info: Ctx) -> list[ApiKey]:
        caller = await info.context.caller()
        async with info.context.read() as session:
            found = await accounts.list_keys(session, caller.account.id)
        return [ApiKey.from_model(k) for k in found]

    @strawberry.field(description="One of the caller's generations (NOT_FOUND otherwise).")
    async def generation(self, info: Ctx, id: strawberry.ID) -> Generation:
        caller = await info.context.caller()
        async with info.context.read() as session:
            g = await generations.get(session, caller.account.id, str(id))
        return await present(info.context, g)

    @strawberry.field(description="The caller's generations, newest first.")
    async def generations(
        self,
        info: Ctx,
        first: int = 20,
        after: str | None = None,
        status: str | None = None,
    ) -> GenerationPage:
        caller = await info.context.caller()
        async with info.context.read() as session:
            page = await generations.list_page(
                session, caller.account.id, first=first, after=after, status=status
            )
        return GenerationPage.from_page(page, info.context.services.storage)

    @strawberry.field(
        description="Webhook events and their attempts, newest first: the caller's, or one "
        "generation's."
    )
    async def webhook_deliveries(
        self, info: Ctx, generation_id: strawberry.ID | None = None, first: int = 20
    ) -> list[WebhookDelivery]:
        caller = await info.context.caller()
        async with info.context.read() as session:
            if generation_id is not None:
                await generations.get(session, caller.account.id, str(generation_id))
            found = await webhooks.list_deliveries(
                session,
                caller.account.id,
                generation_id=str(generation_id) if generation_id is not None else None,
                first=first,
            )
        return [WebhookDelivery.from_delivery(d) for d in found]

    @strawberry.field(description="Price a generateImage request without running it.")
    async def price(self, info: Ctx, input: ImageGenerationInput) -> PriceQuote:
        caller = await info.context.caller()
        request = _validate(info.context, input.to_raw(), IMAGE_FIELDS)
        plan = await _with_loras(
            info.context, plan_request(request), _lora_choices(input.lora_choices()), request
        )
        async with info.context.read() as session:
            balance = await ledger.balance(session, caller.account.id)
        return PriceQuote.from_quote(
            plan.quote, service=request.provider, available=balance.available
        )


@strawberry.type
class Mutation(AdminMutation, BatchMutation, LibraryMutation, LoraMutation, QuotaMutation):
    # Nullable results: when one of several aliased mutations fails, the others' jobs
    # (already accepted and charged) are still returned instead of nulling the whole data.
    @strawberry.mutation(description="Queue a generation (seed 001, first form).")
    async def generate(self, info: Ctx, input: GenerateInput) -> Generation | None:
        return await _submit(
            info.context, input.to_raw(), GENERATE_FIELDS, input.presets(), input.lora_choices()
        )

    @strawberry.mutation(description="Queue an image generation (seed 001, second form).")
    async def generate_image(self, info: Ctx, input: ImageGenerationInput) -> Generation | None:
        return await _submit(
            info.context, input.to_raw(), IMAGE_FIELDS, input.presets(), input.lora_choices()
        )

    @strawberry.mutation(
        description="Cancel a queued or processing generation; its credits are released in "
        "full. CONFLICT if it already finished, NOT_FOUND if it is not the caller's."
    )
    async def cancel_generation(self, info: Ctx, id: strawberry.ID) -> Generation:
        caller = await info.context.caller()
        async with info.context.transaction() as uow:
            g = await generations.cancel(uow, caller.account.id, str(id))
        return await present(info.context, g)

    @strawberry.mutation(
        description="Start buying a credit pack: a Stripe Checkout Session to send the buyer "
        "to. The credits are granted when Stripe reports the payment."
    )
    async def create_checkout_session(self, info: Ctx, pack_id: strawberry.ID) -> CheckoutSession:
        caller = await info.context.caller()
        stripe = info.context.services.payments
        session = await payments.create_checkout(
            stripe.gateway,
            info.context.services.packs,
            account_id=caller.account.id,
            pack_id=str(pack_id),
            success_url=stripe.success_url,
            cancel_url=stripe.cancel_url,
            nonce=info.context.idempotency_key or uuid.uuid4().hex,
        )
        return CheckoutSession(id=strawberry.ID(session.id), url=session.url)

    @strawberry.mutation(description="Create an API key; its secret is returned only now.")
    async def create_api_key(self, info: Ctx, name: str = "default") -> NewApiKey:
        caller = await info.context.caller()
        if not 0 < len(name) <= 100:
            raise BadUserInput("name", "name must be 1 to 100 characters")
        async with info.context.transaction() as uow:
            new = await accounts.create_key(
                uow.session, caller.account.id, info.context.services.pepper, name=name
            )
        return NewApiKey(key=ApiKey.from_model(new.key), secret=new.secret)

    @strawberry.mutation(
        description="Change the caller's display name and settings (seed 000's profile)."
    )
    async def update_profile(self, info: Ctx, input: ProfileInput) -> Account:
        caller = await info.context.caller()
        changes = input.to_dict()

        async def run() -> models.Account:
            async with info.context.transaction() as uow:
                return await accounts.update_profile(
                    uow,
                    caller.account.id,
                    changes,
                    models=info.context.services.catalog.providers,
                )

        return _account(info.context, await camel_errors(run))

    @strawberry.mutation(
        description="Revoke one of the caller's keys; it stops working at once, on every "
        "API process. The caller's other keys keep working."
    )
    async def revoke_api_key(self, info: Ctx, id: strawberry.ID) -> ApiKey:
        caller = await info.context.caller()
        key_id = _uuid(id, "id")
        async with info.context.transaction() as uow:
            key = await accounts.revoke_key(uow, key_id, account_id=caller.account.id)
        return ApiKey.from_model(key)

    @strawberry.mutation(
        description="Admin only: change an account's plan and limit overrides (an empty "
        "overrides object clears them). FORBIDDEN for other callers."
    )
    async def set_account_plan(
        self,
        info: Ctx,
        account_id: strawberry.ID,
        plan: str | None = None,
        overrides: LimitOverridesInput | None = None,
        merge_overrides: Annotated[
            bool,
            strawberry.argument(
                description="Change only the limits `overrides` names (`daily` per kind) "
                "and keep the other stored overrides, instead of replacing them all."
            ),
        ] = False,
    ) -> AccountPlan:
        # Not an Account: an admin changes plans, and sees no other account's secrets.
        caller = await info.context.caller()
        if not caller.account.is_admin:
            raise Forbidden("Only an admin account may change plans")
        async with info.context.transaction() as uow:
            account = await admin.set_plan(  # recorded in the admin audit log
                uow,
                admin.Actor.of(caller.account),
                _uuid(account_id, "accountId"),
                plan=plan,
                overrides=overrides.to_dict() if overrides is not None else None,
                plans=info.context.services.plans,
                merge=merge_overrides,
            )
        limits = _account(info.context, account).limits
        return AccountPlan(
            account_id=strawberry.ID(str(account.id)), plan=account.plan, limits=limits
        )

    @strawberry.mutation(
        description="Replace the webhook signing secret. The old one keeps signing (as a "
        "second signature) for the grace period, so receivers can switch without a gap."
    )
    async def rotate_webhook_secret(self, info: Ctx) -> Account:
        caller = await info.context.caller()
        async with info.context.transaction() as uow:
            account = await webhooks.rotate_secret(
                uow, caller.account.id, info.context.services.webhook_grace
            )
        return _account(info.context, account)

    @strawberry.mutation(
        description="Send a webhook event again, with the same webhook-id and body."
    )
    async def redeliver_webhook(self, info: Ctx, id: strawberry.ID) -> WebhookDelivery:
        caller = await info.context.caller()
        async with info.context.transaction() as uow:
            event = await webhooks.redeliver(uow, caller.account.id, str(id))
        return WebhookDelivery.from_delivery(webhooks.Delivery(event=event, attempts=[]))


@strawberry.type
class Subscription(BatchSubscription):
    @strawberry.subscription(
        description="Every state of one generation: queued (queuePosition, etaSeconds) → "
        "processing (progress, step, totalSteps, etaSeconds, preview) → completed, failed "
        "or cancelled; then the stream ends. Starts with the current state."
    )
    async def generation_updated(
        self, info: Ctx, id: strawberry.ID
    ) -> AsyncGenerator[Generation, None]:
        caller = await info.context.caller()
        async for g in follow(info.context, caller, str(id)):
            yield g

    @strawberry.subscription(description="Every change of any of the caller's generations.")
    async def generations_updated(self, info: Ctx) -> AsyncGenerator[Generation, None]:
        caller = await info.context.caller()
        async for g in follow_account(info.context, caller):
            yield g
