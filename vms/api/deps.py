"""FastAPI dependencies: the context, a database session per request, the caller and permission checks."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.requests import HTTPConnection

from vms.api.accounts import Principal, token_hash
from vms.api.context import ApiContext
from vms.api.errors import ApiError, local_time
from vms.api.permissions import PERMISSION_TEXT, ROLE_TEXT, permissions_of
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


def client_address(request: HTTPConnection) -> str:
    return request.client.host if request.client else "unknown"


def _secret_from(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        raise ApiError(401, "bad_authorization", "Authorization 头须为 'Bearer <token>'",
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
    bearer = {"WWW-Authenticate": "Bearer"}
    if row is None:
        raise ApiError(401, "token_unknown", "登录凭据无效：请重新登录", headers=bearer)
    tok, user = row
    key = f"API 密钥 {tok.name}（{user.username}）" if tok.kind == "apikey" else None
    if tok.revoked:
        raise ApiError(401, "token_revoked", f"{key}已被吊销" if key else "已退出登录或密码已更改：请重新登录",
                       headers=bearer)
    if tok.expires_ms is not None and tok.expires_ms <= now:
        if key:  # a key is not renewed by logging in: an admin issues a new one
            raise ApiError(401, "api_key_expired",
                           f"{key}已于 {local_time(tok.expires_ms, ctx.settings.tz)} 过期：请管理员签发新密钥"
                           , headers=bearer)
        raise ApiError(401, "session_expired", "会话已过期：请重新登录", headers=bearer)
    if user.disabled:
        raise ApiError(401, "account_disabled", f"账号 {user.username} 已停用", headers=bearer)
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
        raise ApiError(401, "not_logged_in", "未登录：先 POST /api/auth/login，再带上它的 cookie 或 Bearer 令牌",
                       headers={"WWW-Authenticate": "Bearer"})
    return token_hash(secret)


def get_principal(request: Request, ctx: ApiContext) -> Principal:
    """The caller, blocking (for websocket handlers, which call it in a thread)."""
    hashed = _token_hash_of(request)
    return _cached_principal(ctx, hashed) or _load_principal(ctx, hashed)


async def current_principal(request: Request, ctx: Ctx) -> Principal:
    # async, so a cached caller costs no thread hop; only a cache miss queries in a thread.
    hashed = _token_hash_of(request)
    principal = _cached_principal(ctx, hashed)
    if principal is None:
        principal = await run_in_threadpool(_load_principal, ctx, hashed)
    return principal


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


def require(permission: str):
    """A dependency that lets the call through only with `permission`."""

    async def check(principal: CurrentPrincipal) -> Principal:
        if permission not in principal.permissions:
            role = ROLE_TEXT.get(principal.role, principal.role)
            what = "此 API 密钥的权限范围" if principal.kind == "apikey" else f"{role}角色"
            raise ApiError(403, "forbidden", f"{what}不能{PERMISSION_TEXT.get(permission, permission)}")
        return principal

    check.__name__ = f"require_{permission.replace(':', '_')}"
    return check


StationId = Annotated[str, Path(pattern=STATION_ID_PATTERN, description="station id, e.g. pingshan-town")]


def visible_station(session: Session, principal: Principal, station_id: str) -> Station:
    """The station if it exists and the caller's towns include it; 404 otherwise (a town-limited user
    does not learn which ids exist elsewhere)."""
    st = session.get(Station, station_id)
    if st is None or not principal.may_see_town(st.town):
        where = "" if principal.towns is None else "（在你管辖的镇街中）"
        raise ApiError(404, "station_not_found", f"没有站点 {station_id[:64]!r}{where}")
    return st
