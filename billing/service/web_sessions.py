"""Dashboard sign-in sessions, kept on the server so they can be ended.

The dashboard's signed cookie carries only a session's random id. Signing out revokes
the row, so a copy of the cookie stops working too; revoking the API key the session was
opened with ends it as well; and it expires on its own after ``SESSION_TTL``.
"""

from __future__ import annotations

import secrets
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from billing import repository as repo
from billing.models import DashboardSession, utcnow
from billing.service.accounts import Caller

SESSION_TTL = timedelta(hours=8)
MAX_ID_LENGTH = 64
KEEP_ENDED = timedelta(days=1)


async def open_session(
    session: AsyncSession, caller: Caller, *, ttl: timedelta = SESSION_TTL
) -> str:
    """A new session for a caller who just proved an API key; its id goes in the cookie."""
    now = utcnow()
    # Housekeeping on the way in: the account's long-ended sessions are forgotten.
    await repo.delete_ended_dashboard_sessions(session, caller.account.id, now - KEEP_ENDED)
    row = DashboardSession(
        id=secrets.token_urlsafe(32),
        account_id=caller.account.id,
        api_key_id=caller.api_key_id,
        created_at=now,
        expires_at=now + ttl,
    )
    await repo.add(session, row)
    return row.id


async def resume(session: AsyncSession, session_id: str) -> Caller | None:
    """The session's caller, if it is neither revoked nor expired and its key still works."""
    if not session_id or len(session_id) > MAX_ID_LENGTH:
        return None
    found = await repo.live_dashboard_session(session, session_id, utcnow())
    if found is None:
        return None
    _, key, account = found
    if account.banned_at is not None:  # banned since it signed in
        return None
    return Caller(account=account, api_key_id=key.id)


async def close(session: AsyncSession, session_id: str) -> None:
    """Sign out: the session ends for every copy of its cookie."""
    if session_id and len(session_id) <= MAX_ID_LENGTH:
        await repo.revoke_dashboard_sessions(session, session_id=session_id)
