"""Seed 000 (REST v2): the user's profile, API keys and statistics, the public status, and
the admin endpoints — each a GraphQL document run as the caller (README "Compatible
APIs", seed 000).

Our ids are UUID strings where the seed shows integers (clients treat them as opaque); an
id that cannot be one of ours is simply not found. Fluxgate accounts sign in with API
keys only: there is no password to change, and that request is refused with 501 (nothing
changes). The profile's user name and settings are the account's (``updateProfile``).
"""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel
from starlette.responses import Response

from billing.text import unstorable
from server.compat.surface import Call, Refused
from server.compat.v2.common import (
    ERRORS,
    MODELS,
    NOT_SERVED,
    ErrorBody,
    SeedModel,
    seed_model,
    surface,
)

__all__ = ["surface"]

UPSCALE_KIND = "upscale"
IMAGE_TO_IMAGE_KIND = "image_to_image"
# Seed 000's statistics cover all time; ours are kept per day, for at most this long.
STATS_DAYS = 90
UPSCALE_STATUS = "not served on this deployment"


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", str_max_length=4000)


class _Out(BaseModel):
    """A response body (described, not validated: extra fields are ours)."""

    model_config = ConfigDict(extra="allow")


# ---------------------------------------------------------------------------- profile


class ProfileSettings(_Out):
    default_model: str = Field(
        description="The model of a request that names none (/api/generate, batches)."
    )
    default_quality: str | None = Field(
        description="Kept and shown back; it changes nothing (steps decide quality)."
    )
    email_notifications: bool = Field(description="Kept; Fluxgate sends no email.")
    webhook_enabled: bool = Field(description="Kept; webhooks are given per request (webhook_url).")


class Profile(_Out):
    id: str = Field(description="The account's id (a UUID string).")
    username: str = Field(description="The display name set with PUT (default: the email).")
    email: str
    role: str = Field(description="admin | user")
    plan: str
    created_at: str
    avatar_url: str | None = Field(description="Always null: no avatars are kept.")
    settings: ProfileSettings
    credits_available: int
    credits_reserved: int


class _Storable(_Wire):
    # Stripped here, so a blank value is refused naming this surface's field.
    model_config = ConfigDict(extra="forbid", str_max_length=4000, str_strip_whitespace=True)

    @field_validator("*")
    @classmethod
    def _storable(cls, value: Any) -> Any:
        if isinstance(value, str) and unstorable(value):
            raise ValueError("text must not contain NUL characters or lone surrogates")
        return value


class SettingsUpdate(_Storable):
    """The settings to change; a setting not sent keeps its value."""

    default_model: SeedModel | None = None
    default_quality: str | None = Field(None, min_length=1, max_length=32)
    email_notifications: bool | None = None
    webhook_enabled: bool | None = None


class ProfileUpdate(_Storable):
    """Seed 000's profile update: ``username`` and ``settings`` change; ``email`` is the
    account's identity and may only be sent unchanged."""

    username: str | None = Field(None, min_length=1, max_length=64)
    email: str | None = Field(None, max_length=320)
    settings: SettingsUpdate | None = None


class PasswordChange(_Wire):
    current_password: str | None = Field(None, max_length=1000)
    new_password: str | None = Field(None, max_length=1000)


PROFILE_FIELDS = """id email plan isAdmin createdAt creditsAvailable creditsReserved
  profile { displayName defaultModel defaultQuality emailNotifications webhookEnabled }"""
ME = f"{{ me {{ {PROFILE_FIELDS} }} }}"
UPDATE = f"""mutation P($input: ProfileInput!) {{
  updateProfile(input: $input) {{ {PROFILE_FIELDS} }} }}"""


def _profile(me: dict[str, Any]) -> dict[str, Any]:
    profile = me["profile"]
    return {
        "id": me["id"],
        "username": profile["displayName"] or me["email"],
        "email": me["email"],
        "role": "admin" if me["isAdmin"] else "user",
        "plan": me["plan"],
        "created_at": me["createdAt"],
        "avatar_url": None,
        "settings": {
            "default_model": seed_model(profile["defaultModel"]),
            "default_quality": profile["defaultQuality"],
            "email_notifications": profile["emailNotifications"],
            "webhook_enabled": profile["webhookEnabled"],
        },
        "credits_available": me["creditsAvailable"],
        "credits_reserved": me["creditsReserved"],
    }


@surface.endpoint(
    "GET", "/api/user/profile", summary="The caller's profile",
    responses={200: Profile, **ERRORS},
)  # fmt: skip
async def get_profile(call: Call) -> dict[str, Any]:
    return _profile((await call.run(ME))["me"])


@surface.endpoint(
    "PUT", "/api/user/profile", summary="Update the user name and settings",
    body=ProfileUpdate, responses={200: Profile, **ERRORS},
    description="updateProfile: `username` (a display name) and the `settings` sent "
    "change; the rest keep their values. `settings.default_model` is the model of a "
    "request that names none; the other settings are kept and shown back but change "
    "nothing. The email is the account's identity: sending another is a 400.",
)  # fmt: skip
async def update_profile(call: Call) -> dict[str, Any]:
    body: ProfileUpdate = call.body
    me = (await call.run(ME))["me"]
    if body.email is not None and body.email.strip().lower() != me["email"]:
        raise Refused.bad_input("email cannot be changed: it is the account's identity", "email")
    changes: dict[str, Any] = {}
    if body.username is not None:
        changes["displayName"] = body.username
    if body.settings is not None:
        sent = body.settings.model_dump(exclude_unset=True)
        if "default_model" in sent:
            sent["default_model"] = MODELS.get(sent["default_model"] or "")
        changes.update({to_camel(k): v for k, v in sent.items()})
    return _profile((await call.run(UPDATE, {"input": changes}))["updateProfile"])


def _not_implemented(message: str) -> Refused:
    return Refused(501, NOT_SERVED, message)


async def _password(call: Call) -> dict[str, Any]:
    await call.run(ME)
    raise _not_implemented(
        "Fluxgate accounts have no password: they sign in with API keys. Create a new key "
        "(POST /api/user/api-keys) and delete the old one instead"
    )


for _method in ("POST", "PUT"):
    surface.endpoint(
        _method, "/api/user/password", summary="Change the password (refused: no passwords)",
        body=PasswordChange, responses={501: ErrorBody, **ERRORS},
        description="API-key accounts have no password: answers 501 NOT_IMPLEMENTED.",
    )(_password)  # fmt: skip


# --------------------------------------------------------------------------- API keys


class KeyUsage(_Out):
    total_requests: int | None = Field(description="Always null: requests are not counted per key.")


class ApiKeyOut(_Out):
    id: str = Field(description="The key's id (a UUID string).")
    name: str
    prefix: str = Field(description="The key's first characters, to recognise it.")
    created_at: str
    last_used_at: str | None = Field(description="Updated at most once a minute.")
    is_active: bool
    usage: KeyUsage


class ApiKeyList(_Out):
    api_keys: list[ApiKeyOut] = Field(description="The caller's keys not deleted.")


class NewKeyOut(ApiKeyOut):
    key: str = Field(description="The secret: shown only now.")
    ip_whitelist: None = Field(description="Always null: keys are not restricted by IP.")
    rate_limit: None = Field(description="Always null: the account's plan sets the limit.")
    warnings: list[str] = Field(description="The parameters sent that have no effect.")


class NewKey(_Wire):
    name: str = Field("default", min_length=1, max_length=100, description="The key's name.")
    ip_whitelist: list[str] | None = Field(
        None, max_length=100, description="No effect: keys are not restricted by IP."
    )
    rate_limit: int | None = Field(
        None, ge=0, le=2**31 - 1, description="No effect: the account's plan sets the limit."
    )


KEY_FIELDS = "id name prefix createdAt lastUsedAt revokedAt"
API_KEYS = f"{{ apiKeys {{ {KEY_FIELDS} }} }}"
CREATE_KEY = f"""mutation K($name: String!) {{
  createApiKey(name: $name) {{ secret key {{ {KEY_FIELDS} }} }} }}"""
REVOKE_KEY = "mutation R($id: ID!) { revokeApiKey(id: $id) { id revokedAt } }"


def _key(key: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": key["id"],
        "name": key["name"],
        "prefix": key["prefix"],
        "created_at": key["createdAt"],
        "last_used_at": key["lastUsedAt"],
        "is_active": key["revokedAt"] is None,
        "usage": {"total_requests": None},
    }


@surface.endpoint(
    "GET", "/api/user/api-keys", summary="The caller's API keys",
    responses={200: ApiKeyList, **ERRORS},
)  # fmt: skip
async def list_keys(call: Call) -> dict[str, Any]:
    keys = (await call.run(API_KEYS))["apiKeys"]
    return {"api_keys": [_key(k) for k in keys if k["revokedAt"] is None]}


@surface.endpoint(
    "POST", "/api/user/api-keys", summary="Create an API key", body=NewKey,
    responses={201: NewKeyOut, **ERRORS},
)  # fmt: skip
async def create_key(call: Call) -> dict[str, Any]:
    body: NewKey = call.body
    created = (await call.run(CREATE_KEY, {"name": body.name}))["createApiKey"]
    warnings = [
        f"{name} has no effect on this deployment"
        for name, value in (("ip_whitelist", body.ip_whitelist), ("rate_limit", body.rate_limit))
        if value is not None
    ]
    return {
        **_key(created["key"]),
        "key": created["secret"],
        "ip_whitelist": None,
        "rate_limit": None,
        "warnings": warnings,
    }


def _our_id(value: str) -> str:
    """``value`` if it can be one of our ids (UUIDs); otherwise the nil UUID, which names
    nothing: the operation answers NOT_FOUND (or FORBIDDEN first, to a non-admin)."""
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return str(uuid.UUID(int=0))


@surface.endpoint(
    "DELETE", "/api/user/api-keys/{key_id}", summary="Delete (revoke) an API key",
    responses={204: None, **ERRORS},
)  # fmt: skip
async def delete_key(call: Call) -> Response:
    await call.run(REVOKE_KEY, {"id": _our_id(call.path["key_id"])})
    return Response(status_code=204)


# ------------------------------------------------------------------------------ stats


class StatsUser(_Out):
    id: str
    username: str
    email: str
    role: str
    plan: str


class StatsQuota(_Out):
    daily_generations: int | None = Field(description="Jobs per UTC day (all kinds); null: none.")
    daily_upscales: int | None = Field(description="Upscale jobs per day; null: none.")
    used_generations: int
    used_upscales: int
    remaining_generations: int | None
    remaining_upscales: int | None
    reset_at: str


class StatsStorage(_Out):
    used_mb: float
    limit_mb: int | None = Field(description="Null: unlimited.")
    percent_used: float | None


class StatsTotals(_Out):
    total_generations: int = Field(description=f"Jobs of every kind, last {STATS_DAYS} days.")
    total_upscales: int
    total_img2img: int
    average_generation_time: float | None = Field(
        description="Always null: not measured per account."
    )
    favorite_count: int
    created_at: str


class Stats(_Out):
    user: StatsUser
    quota: StatsQuota
    storage: StatsStorage
    statistics: StatsTotals


STATS = f"""query S($days: Int!) {{
  me {{ {PROFILE_FIELDS} }}
  usage(days: $days) {{ jobsToday jobsPerDay jobsRemaining resetAt creditsAvailable
    creditsSpent kinds {{ kind jobs today dailyQuota remaining }}
    storage {{ usedMb quotaMb percentUsed }} }}
  images(filter: {{ favorite: true }}, first: 1) {{ totalCount }} }}"""


@surface.endpoint(
    "GET", "/api/user/stats", summary="Usage and quotas", responses={200: Stats, **ERRORS},
)  # fmt: skip
async def stats(call: Call) -> dict[str, Any]:
    data = await call.run(STATS, {"days": STATS_DAYS})
    me, usage = data["me"], data["usage"]
    kinds = {k["kind"]: k for k in usage["kinds"]}
    upscale = kinds.get(UPSCALE_KIND, {})
    profile = _profile(me)
    return {
        "user": {k: profile[k] for k in ("id", "username", "email", "role", "plan")},
        "quota": {
            "daily_generations": usage["jobsPerDay"],
            "daily_upscales": upscale.get("dailyQuota"),
            "used_generations": usage["jobsToday"],
            "used_upscales": upscale.get("today", 0),
            "remaining_generations": usage["jobsRemaining"],
            "remaining_upscales": upscale.get("remaining"),
            "reset_at": usage["resetAt"],
            "kinds": [
                {
                    "kind": k["kind"],
                    "daily": k["dailyQuota"],
                    "used": k["today"],
                    "remaining": k["remaining"],
                }
                for k in usage["kinds"]
            ],
        },
        "storage": {
            "used_mb": usage["storage"]["usedMb"],
            "limit_mb": usage["storage"]["quotaMb"],
            "percent_used": usage["storage"]["percentUsed"],
        },
        "statistics": {
            "total_generations": sum(k["jobs"] for k in usage["kinds"]),
            "total_upscales": upscale.get("jobs", 0),
            "total_img2img": kinds.get(IMAGE_TO_IMAGE_KIND, {}).get("jobs", 0),
            "average_generation_time": None,
            "favorite_count": data["images"]["totalCount"],
            "created_at": me["createdAt"],
            "days": STATS_DAYS,
            "credits_spent": usage["creditsSpent"],
            "credits_available": usage["creditsAvailable"],
        },
    }


# ----------------------------------------------------------------------------- status


class ModelStatus(_Out):
    status: str = Field(description="available (a worker of its pool runs) | unavailable | unknown")
    queue_size: int | None = Field(description="Jobs in its pool's queue (null: unknown).")
    avg_generation_time: float | None = Field(
        description="Seconds per job, a moving average of its pool's recent jobs (null: "
        "none measured yet)."
    )


class ApiStatus(_Out):
    status: str = Field(description="operational | degraded")
    version: str
    services: dict[str, str]
    models: dict[str, ModelStatus]
    timestamp: str


STATUS = """{ serviceStatus { operational at
  models { service availability queueSize averageJobSeconds } } }"""


@surface.endpoint(
    "GET", "/api/status", summary="Services and per-model queues (public)", auth="none",
    responses={200: ApiStatus},
    description="No key needed. Models are the registry's providers (their default "
    "version's pool); upscale is not served on this deployment.",
)  # fmt: skip
async def api_status(call: Call) -> dict[str, Any]:
    status = (await call.run(STATUS))["serviceStatus"]
    models = {
        m["service"]: {
            "status": m["availability"].lower(),
            "queue_size": m["queueSize"],
            "avg_generation_time": m["averageJobSeconds"],
        }
        for m in status["models"]
    }
    state = "operational" if status["operational"] else "degraded"
    return {
        "status": state,
        "version": "2.0",
        "services": {
            "generation": state,
            "img2img": state,
            "upscale": UPSCALE_STATUS,
            "storage": "operational",
            "websocket": "operational",
        },
        "models": models,
        "timestamp": status["at"],
    }


# ------------------------------------------------------------------------------ admin


class AdminUsersQuery(_Wire):
    page: int = Field(1, ge=1, le=1_000_000, description="1-based page.")
    per_page: int = Field(50, ge=1, le=100, description="Users per page.")


class AdminQuotaOut(_Out):
    daily_generations: int | None = Field(description="Jobs per UTC day; null: unlimited.")
    daily_upscales: int | None


class AdminUser(_Out):
    id: str
    username: str
    email: str
    role: str
    plan: str
    banned: bool
    ban_reason: str | None
    quota: AdminQuotaOut
    credits_available: int
    created_at: str


class AdminUsers(_Out):
    users: list[AdminUser]
    total: int
    page: int
    per_page: int
    pages: int


class AdminStats(_Out):
    total_users: int
    active_users_24h: int
    total_generations: int
    generations_today: int | None = Field(description="Always null: not counted per day here.")
    storage_used_gb: float | None = Field(description="Always null: not measured here.")
    revenue_month: float = Field(description="Payments less refunds, last 30 days, major units.")


class QuotaUpdate(_Wire):
    daily_generations: int | None = Field(
        None, ge=0, le=2**31 - 1, description="Jobs per UTC day, all kinds (null: unlimited)."
    )
    daily_upscales: int | None = Field(
        None, ge=0, le=2**31 - 1, description="Upscale jobs per UTC day (null: unlimited)."
    )


class Ban(_Wire):
    reason: str = Field(min_length=1, max_length=1000, description="Why (kept in the audit log).")


class AdminDone(_Out):
    success: bool
    user_id: str


ADMIN_ACCOUNT = """id email plan isAdmin banned banReason creditsAvailable createdAt
  limits { jobsPerDay daily { kind perDay } }"""
ADMIN_USERS = f"""query U($first: Int!, $offset: Int!) {{
  adminAccounts(first: $first, offset: $offset) {{ total items {{ {ADMIN_ACCOUNT} }} }} }}"""
ADMIN_STATS = """{ adminStatistics { accounts bannedAccounts activeAccounts24h
  activeAccounts30d gpuSeconds jobs { model status count } queues { pool depth liveWorkers }
  revenue30d { currency payments amount } at } }"""
SET_QUOTA = """mutation Q($id: ID!, $overrides: LimitOverridesInput!) {
  setAccountPlan(accountId: $id, overrides: $overrides, mergeOverrides: true) { accountId plan
    limits { jobsPerDay daily { kind perDay } } } }"""
BAN = f"""mutation B($id: ID!, $reason: String!) {{
  adminBanAccount(accountId: $id, reason: $reason) {{ cancelledJobIds
    account {{ {ADMIN_ACCOUNT} }} }} }}"""


def _quota(limits: dict[str, Any]) -> dict[str, Any]:
    daily = {q["kind"]: q["perDay"] for q in limits["daily"]}
    return {"daily_generations": limits["jobsPerDay"], "daily_upscales": daily.get(UPSCALE_KIND)}


def _admin_user(a: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": a["id"],
        "username": a["email"],
        "email": a["email"],
        "role": "admin" if a["isAdmin"] else "user",
        "plan": a["plan"],
        "banned": a["banned"],
        "ban_reason": a["banReason"],
        "quota": _quota(a["limits"]),
        "credits_available": a["creditsAvailable"],
        "created_at": a["createdAt"],
    }


@surface.endpoint(
    "GET", "/api/admin/users", summary="Admin: every account, a page at a time",
    query=AdminUsersQuery, responses={200: AdminUsers, **ERRORS},
)  # fmt: skip
async def admin_users(call: Call) -> dict[str, Any]:
    q: AdminUsersQuery = call.query
    offset = (q.page - 1) * q.per_page
    page = (await call.run(ADMIN_USERS, {"first": q.per_page, "offset": offset}))["adminAccounts"]
    return {
        "users": [_admin_user(a) for a in page["items"]],
        "total": page["total"],
        "page": q.page,
        "per_page": q.per_page,
        "pages": -(-page["total"] // q.per_page),
    }


@surface.endpoint(
    "GET", "/api/admin/statistics", summary="Admin: system statistics",
    responses={200: AdminStats, **ERRORS},
)  # fmt: skip
async def admin_statistics(call: Call) -> dict[str, Any]:
    s = (await call.run(ADMIN_STATS))["adminStatistics"]
    revenue = s["revenue30d"]
    usd = next((r for r in revenue if r["currency"].lower() == "usd"), None)
    return {
        "total_users": s["accounts"],
        "banned_users": s["bannedAccounts"],
        "active_users_24h": s["activeAccounts24h"],
        "active_users_30d": s["activeAccounts30d"],
        "total_generations": sum(j["count"] for j in s["jobs"]),
        "generations_today": None,
        "storage_used_gb": None,
        "revenue_month": (usd["amount"] if usd else 0) / 100,
        "revenue_30d": revenue,
        "gpu_seconds": s["gpuSeconds"],
        "jobs": s["jobs"],
        "queues": s["queues"],
        "timestamp": s["at"],
    }


@surface.endpoint(
    "POST", "/api/admin/user/{user_id}/quota", summary="Admin: set a user's daily quotas",
    body=QuotaUpdate, responses={200: AdminDone, **ERRORS},
    description="daily_generations: the account's jobs per UTC day (every kind); "
    "daily_upscales: its upscale jobs per day. A field not sent is left as it is; null "
    "makes it unlimited. The account's other limit overrides are kept.",
)  # fmt: skip
async def admin_quota(call: Call) -> dict[str, Any]:
    body: QuotaUpdate = call.body
    account_id = _our_id(call.path["user_id"])
    overrides: dict[str, Any] = {}
    sent = body.model_fields_set
    if "daily_generations" in sent:
        overrides["jobsPerDay"] = body.daily_generations
    if "daily_upscales" in sent:
        overrides["daily"] = [{"kind": UPSCALE_KIND, "perDay": body.daily_upscales}]
    changed = await call.run(SET_QUOTA, {"id": account_id, "overrides": overrides})
    plan = changed["setAccountPlan"]
    return {"success": True, "user_id": plan["accountId"], "quota": _quota(plan["limits"])}


@surface.endpoint(
    "POST", "/api/admin/user/{user_id}/ban", summary="Admin: ban a user", body=Ban,
    responses={200: AdminDone, **ERRORS},
    description="The account's keys are refused from now on and its queued and running "
    "jobs are cancelled, their credits released.",
)  # fmt: skip
async def admin_ban(call: Call) -> dict[str, Any]:
    body: Ban = call.body
    account_id = _our_id(call.path["user_id"])
    result = (await call.run(BAN, {"id": account_id, "reason": body.reason}))["adminBanAccount"]
    return {
        "success": True,
        "user_id": result["account"]["id"],
        "user": _admin_user(result["account"]),
        "cancelled_job_ids": result["cancelledJobIds"],
    }
