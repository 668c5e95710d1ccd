"""FastAPI dependencies: the context, a database session per request, the caller and permission checks."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select
from sqlalchemy.orm import Session

from vms.api.accounts import Principal, token_hash
from vms.api.context import ApiContext
from vms.api.permissions import permissions_of
from vms.db.models import AuthToken, Station, User

SESSION_COOKIE = "vms_session"
STATION_ID_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"


async def get_ctx(request: Request) -> ApiContext:
    return request.app.state.ctx


Ctx = Annotated[ApiContext, Depends(get_ctx)]


def get_session(ctx: Ctx) -> Iterator[Session]:
    with ctx.database.session() as s:
        yield s


# scope="function": the session commits when the handler returns, before the answer is sent. With the
# default ("request") the commit came after the answer, and a client acting on it at once could miss the
# write (the soak saw a token refused as unknown right after its login).
DbSession = Annotated[Session, Depends(get_session, scope="function")]


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _secret_from(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        raise HTTPException(401, "Authorization header must be 'Bearer <token>'",
                            headers={"WWW-Authenticate": "Bearer"})
    return request.cookies.get(SESSION_COOKIE)


# Who a token belongs to is looked up at most every PRINCIPAL_TTL_S per API process (an ORM query per
# request was most of the time of GET /api/stations). Changes made through this API (logout, role,
# disable, revoke) clear the cache at once; changes made with the CLI in another process apply within
# PRINCIPAL_TTL_S.
PRINCIPALS = "principals"
PRINCIPAL_TTL_S = 2.0


def forget_principals(ctx) -> None:
    ctx.extras[PRINCIPALS] = {}


def _cached_principal(ctx: ApiContext, hashed: str) -> Principal | None:
    cached = ctx.extras.get(PRINCIPALS, {}).get(hashed)
    if cached is not None and time.monotonic() - cached[0] < PRINCIPAL_TTL_S:
        _loaded, principal, expires_ms = cached
        if expires_ms is None or expires_ms > ctx.clock.now_ms():
            return principal
    return None


def _load_principal(ctx: ApiContext, hashed: str) -> Principal:
    now = ctx.clock.now_ms()
    # The cache as it is before the query: a logout that clears it meanwhile must not get the row
    # read before the logout put back into the new cache.
    cache = ctx.extras.setdefault(PRINCIPALS, {})
    # A short session of its own: the connection goes back to the pool before the handler runs, so
    # requests waiting on something else (the status cache) never sit on pooled connections.
    with ctx.database.session() as session:
        row = session.execute(
            select(AuthToken, User).join(User, User.id == AuthToken.user_id)
            .where(AuthToken.token_hash == hashed)
        ).first()
    if row is None:
        raise HTTPException(401, "unknown token", headers={"WWW-Authenticate": "Bearer"})
    tok, user = row
    if tok.revoked:
        raise HTTPException(401, "token revoked (logged out or password changed)",
                            headers={"WWW-Authenticate": "Bearer"})
    if tok.expires_ms is not None and tok.expires_ms <= now:
        raise HTTPException(401, "session expired: log in again", headers={"WWW-Authenticate": "Bearer"})
    if user.disabled:
        raise HTTPException(401, f"user {user.username} is disabled", headers={"WWW-Authenticate": "Bearer"})
    scopes = tok.scopes if tok.kind == "apikey" else None
    principal = Principal(user_id=user.id, username=user.username, role=user.role,
                          towns=tuple(user.towns) if user.towns is not None else None, kind=tok.kind,
                          token_id=tok.id, permissions=permissions_of(user.role, scopes))
    if len(cache) > 10_000:
        cache.clear()
    cache[hashed] = (time.monotonic(), principal, tok.expires_ms)
    return principal


def _token_hash_of(request: Request) -> str:
    secret = _secret_from(request)
    if not secret:
        raise HTTPException(401, "not logged in: POST /api/auth/login, then send its cookie or Bearer token",
                            headers={"WWW-Authenticate": "Bearer"})
    return token_hash(secret)


def get_principal(request: Request, ctx: ApiContext) -> Principal:
    """The caller, blocking (for websocket handlers, which call it in a thread)."""
    hashed = _token_hash_of(request)
    return _cached_principal(ctx, hashed) or _load_principal(ctx, hashed)


async def current_principal(request: Request, ctx: Ctx) -> Principal:
    # async, so a cached caller costs no thread hop; only a cache miss queries in a thread.
    hashed = _token_hash_of(request)
    return _cached_principal(ctx, hashed) or await run_in_threadpool(_load_principal, ctx, hashed)


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


def require(permission: str):
    """A dependency that lets the call through only with `permission`."""

    async def check(principal: CurrentPrincipal) -> Principal:
        if permission not in principal.permissions:
            what = "API key scopes" if principal.kind == "apikey" else f"role {principal.role}"
            raise HTTPException(403, f"{what} does not allow {permission}")
        return principal

    check.__name__ = f"require_{permission.replace(':', '_')}"
    return check


StationId = Annotated[str, Path(pattern=STATION_ID_PATTERN, description="station id, e.g. pingshan-town")]


def visible_station(session: Session, principal: Principal, station_id: str) -> Station:
    """The station if it exists and the caller's towns include it; 404 otherwise (a town-limited user
    does not learn which ids exist elsewhere)."""
    st = session.get(Station, station_id)
    if st is None or not principal.may_see_town(st.town):
        where = "" if principal.towns is None else " in your towns"
        raise HTTPException(404, f"no station {station_id!r}{where}")
    return st
