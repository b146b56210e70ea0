"""The GraphQL surface of the job kinds, derived from the registry: one typed mutation per
kind (its input type made from the kind's parameter model, so the fields are declared once)
and ``createJob`` for any kind by name. Image inputs are ``Upload`` arguments (the GraphQL
multipart request spec) or ``<input>Url`` / ``<input>Id`` fields of the input."""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable
from typing import Any, Literal, Optional, get_args, get_origin

import strawberry
from pydantic import BaseModel
from pydantic.alias_generators import to_camel, to_snake
from strawberry.file_uploads import Upload
from strawberry.scalars import JSON
from strawberry.types import Info

import kinds
from billing.errors import BadUserInput, NotFound
from billing.service import ledger
from kinds.base import JobKind
from schema import jobs
from schema.context import Context
from schema.live import present
from schema.types import Generation, PriceQuote

Ctx = Info[Context, None]

WEBHOOK_EVENTS = (
    "Events to POST to webhookUrl: started, progress (at 25/50/75 %), completed, failed, "
    "cancelled. Default: completed, failed, cancelled."
)
DELIVERY_FIELDS = ("webhook_url", "webhook_events", "preview")


def _graphql_type(annotation: Any) -> Any:
    """The GraphQL-able type of a pydantic field annotation (optionality aside)."""
    origin = get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        return _graphql_type(args[0])
    if origin is Literal:
        return type(get_args(annotation)[0])
    if origin in (list, tuple):
        return list[_graphql_type(get_args(annotation)[0])]  # type: ignore[misc]  # a runtime type for strawberry
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _nested_input(annotation)
    if annotation in (str, int, float, bool):
        return annotation
    raise TypeError(f"no GraphQL type for parameter annotation {annotation!r}")


_NESTED: dict[type[BaseModel], type] = {}


def _nested_input(model: type[BaseModel]) -> type:
    """A GraphQL input for a parameter model inside a kind's parameters (``LoraChoice``
    becomes ``LoraChoiceInput``), made once per model since kinds share it."""
    made = _NESTED.get(model)
    if made is None:
        annotations: dict[str, Any] = {}
        namespace: dict[str, Any] = {}
        for name, info in model.model_fields.items():
            gql = _graphql_type(info.annotation)
            if info.is_required():
                annotations[name] = gql
                namespace[name] = strawberry.field(description=info.description)
            else:
                annotations[name] = Optional[gql]  # noqa: UP045  # a runtime type for strawberry
                namespace[name] = strawberry.field(default=None, description=info.description)
        cls = type(f"{model.__name__}Input", (), {"__annotations__": annotations, **namespace})
        made = strawberry.input(cls, description=model.__doc__)
        _NESTED[model] = made
    return made


def nested_input(model: type[BaseModel]) -> type:
    """The GraphQL input of a nested parameter model, shared with the kinds' own inputs
    (seed 001's ``generate``/``generateImage`` take the same ``LoraChoiceInput``)."""
    return _nested_input(model)


def plain(value: Any) -> Any:
    """A GraphQL input value as JSON-like data (nested inputs as dicts) for pydantic."""
    return _plain(value)


def _plain(value: Any) -> Any:
    """A GraphQL input value as JSON-like data (nested inputs as dicts) for pydantic."""
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if hasattr(value, "__strawberry_definition__"):
        return {k: _plain(v) for k, v in vars(value).items() if not k.startswith("_")}
    return value


def input_type(kind: JobKind) -> type:
    """The GraphQL input of ``kind``: its parameters (required ones required), the URL or
    id of each image input, and the delivery options every job has."""
    annotations: dict[str, Any] = {}
    namespace: dict[str, Any] = {}
    fields = sorted(kind.Params.model_fields.items(), key=lambda item: not item[1].is_required())
    for name, info in fields:
        gql = _graphql_type(info.annotation)
        description = info.description
        if info.is_required():
            annotations[name] = gql
            namespace[name] = strawberry.field(description=description)
        else:
            annotations[name] = Optional[gql]  # noqa: UP045  # a runtime type for strawberry
            default = info.get_default(call_default_factory=True)
            described = description or ""
            if default is not None:
                described = f"{described} Default: {default}.".strip()
            namespace[name] = strawberry.field(default=None, description=described or None)
    for spec in kind.inputs:
        for suffix, what in (("url", "fetched by the server"), ("id", "an earlier output")):
            annotations[f"{spec.name}_{suffix}"] = Optional[str]  # noqa: UP045
            namespace[f"{spec.name}_{suffix}"] = strawberry.field(
                default=None, description=f"The {spec.name} as a URL {what}."
                if suffix == "url" else f"The {spec.name}: {what}'s id (or its job's id).",
            )  # fmt: skip
    annotations["webhook_url"] = Optional[str]  # noqa: UP045
    namespace["webhook_url"] = strawberry.field(default=None)
    annotations["webhook_events"] = Optional[list[str]]  # noqa: UP045
    namespace["webhook_events"] = strawberry.field(default=None, description=WEBHOOK_EVENTS)
    annotations["preview"] = bool
    namespace["preview"] = strawberry.field(
        default=False, description="Send small preview images with progress updates."
    )
    name = to_camel(kind.name)
    cls = type(
        f"{name[0].upper()}{name[1:]}Input", (), {"__annotations__": annotations, **namespace}
    )
    return strawberry.input(cls, description=f"Input of the {kind.name} job kind ({kind.title}).")


def camel_errors(call: Callable[[], Any]) -> Any:
    """GraphQL names fields in camelCase: so do its errors."""

    async def run() -> Any:
        try:
            return await call()
        except BadUserInput as exc:
            raise BadUserInput(_camel_path(exc.field), _camel_message(exc)) from None
        except NotFound as exc:
            if exc.field is None:
                raise
            raise NotFound("Image", _camel_path(exc.field)) from None

    return run()


def _camel_path(field: str) -> str:
    return ".".join(to_camel(part) for part in field.split("."))


def _camel_message(exc: BadUserInput) -> str:
    return exc.message.replace(exc.field, _camel_path(exc.field), 1)


async def _collect(
    info: Ctx, kind_name: str, values: dict[str, Any], uploads: dict[str, Upload | None]
) -> tuple[dict[str, Any], dict[str, jobs.Source], jobs.Delivery]:
    """A request's kind parameters, image sources and delivery options, apart."""
    kind = kinds.get(kind_name)
    sources: dict[str, jobs.Source] = jobs.sources_from(values, kind)
    for name, upload in uploads.items():
        if upload is None:
            continue
        if name in sources:
            raise BadUserInput(name, f"send {name} one way only")
        sources[name] = jobs.Upload(
            await read_upload(upload, info.context.services.inputs.max_bytes, name)
        )
    inputs = jobs.input_names(kind)
    raw = {
        k: v for k, v in values.items()
        if v is not None and k not in inputs and k not in DELIVERY_FIELDS
    }  # fmt: skip
    delivery = jobs.Delivery(
        webhook_url=values.get("webhook_url"),
        webhook_events=values.get("webhook_events"),
        preview=_flag(values.get("preview"), "preview"),
        fields=("webhookUrl", "webhookEvents"),
    )
    return raw, sources, delivery


async def _submit(
    info: Ctx, kind_name: str, values: dict[str, Any], uploads: dict[str, Upload | None]
) -> Generation:
    raw, sources, delivery = await _collect(info, kind_name, values, uploads)
    generation = await jobs.submit(info.context, kind_name, raw, sources, delivery)
    return await present(info.context, generation)


def _flag(value: Any, field: str) -> bool:
    """A boolean from JSON, or from a form field's text."""
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in {"true", "1", "yes", "on"}:
        return True
    if isinstance(value, str) and value.strip().lower() in {"false", "0", "no", "off", ""}:
        return False
    raise BadUserInput(field, f"{field} must be true or false")


async def read_upload(upload: Any, limit: int, name: str) -> bytes:
    """An uploaded file's bytes, at most ``limit`` (BAD_USER_INPUT on ``name`` beyond).
    The Upload scalar takes any JSON value in a variable: only a multipart file is one."""
    if not callable(getattr(upload, "read", None)):
        raise BadUserInput(name, f"{name} must be a file sent as a multipart upload")
    data: bytes = await upload.read(limit + 1)
    if len(data) > limit:
        raise BadUserInput(name, f"{name} is larger than {limit // (1024 * 1024)} MB")
    return data


def _values(input: object) -> dict[str, Any]:
    return {k: _plain(v) for k, v in vars(input).items() if not k.startswith("_")}


def kind_mutation(kind: JobKind) -> Any:
    input_cls = input_type(kind)
    uploads = [spec.name for spec in kind.inputs]

    async def resolve(info: Ctx, input: Any, **files: Upload | None) -> Generation | None:
        return await camel_errors(  # type: ignore[no-any-return]
            lambda: _submit(info, kind.name, _values(input), files)
        )

    parameters = [
        inspect.Parameter("info", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Ctx),
        inspect.Parameter("input", inspect.Parameter.KEYWORD_ONLY, annotation=input_cls),
        *(
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None,
                              annotation=Optional[Upload])  # noqa: UP045
            for name in uploads
        ),
    ]  # fmt: skip
    resolve.__signature__ = inspect.Signature(parameters, return_annotation=Optional[Generation])  # type: ignore[attr-defined]  # noqa: UP045
    resolve.__annotations__ = {
        "info": Ctx, "input": input_cls, "return": Optional[Generation],  # noqa: UP045
        **{name: Optional[Upload] for name in uploads},  # noqa: UP045
    }  # fmt: skip
    return strawberry.mutation(
        resolver=resolve,
        name=kind.mutation,
        description=f"Queue a {kind.name} job ({kind.title}); priced like `price(kind:)`.",
    )


async def create_job(
    info: Ctx,
    kind: str,
    input: JSON,
    image: Upload | None = None,
    mask: Upload | None = None,
) -> Generation | None:
    """Any kind by name, its parameters as JSON (snake_case or camelCase names)."""

    async def run() -> Generation:
        if not isinstance(input, dict):
            raise BadUserInput("input", "input must be a JSON object")
        values = {to_snake(k): v for k, v in input.items()}
        # An upload the kind does not take is refused by jobs.prepare, before anything else.
        return await _submit(info, kind, values, {"image": image, "mask": mask})

    return await camel_errors(run)  # type: ignore[no-any-return]


async def price_job(info: Ctx, kind: str, input: JSON) -> PriceQuote:
    """Price a job of any kind without running it (image inputs as ``imageUrl`` or
    ``imageId``: the price follows the output size, which may follow the input's)."""

    async def run() -> PriceQuote:
        if not isinstance(input, dict):
            raise BadUserInput("input", "input must be a JSON object")
        values = {to_snake(k): v for k, v in input.items()}
        raw, sources, _ = await _collect(info, kind, values, {})
        prepared = await jobs.prepare(info.context, kind, raw, sources)
        caller = await info.context.caller()
        async with info.context.read() as session:
            balance = await ledger.balance(session, caller.account.id)
        plan = prepared.plan
        return PriceQuote.from_quote(plan.quote, service=plan.provider, available=balance.available)

    return await camel_errors(run)  # type: ignore[no-any-return]


def kind_mutations() -> type:
    """A type holding ``createJob`` and one mutation per registered kind (except
    text_to_image, whose seed-001 mutations are ``generate`` and ``generateImage``)."""
    namespace: dict[str, Any] = {
        "create_job": strawberry.mutation(
            resolver=create_job,
            description="Queue a job of any kind by name; its input as JSON. Uploads: "
            "`image`, `mask` (GraphQL multipart request spec).",
        )
    }
    for kind in kinds.all_kinds():
        if kind.mutation:
            namespace[kind.mutation] = kind_mutation(kind)
    return strawberry.type(type("KindMutation", (), namespace))


def kind_queries() -> type:
    """A type holding ``priceJob``."""
    namespace = {
        "price_job": strawberry.field(
            resolver=price_job,
            description="Price a job of any kind (its input as for createJob) without "
            "running it. `price` prices generateImage's input.",
        )
    }
    return strawberry.type(type("KindQuery", (), namespace))
