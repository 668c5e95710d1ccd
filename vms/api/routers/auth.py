"""Login, logout and who am I. Sessions are random tokens; only their SHA-256 is stored."""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Request, Response
from pydantic import Field
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from vms.api.accounts import issue_session, verify_password
from vms.api.context import ApiContext, LoginBusy, LoginDelay, LoginInFlight
from vms.api.deps import (
    SESSION_COOKIE,
    Ctx,
    CurrentPrincipal,
    DbSession,
    client_address,
    current_principal,
    forget_principals,
)
from vms.api.errors import ApiError
from vms.api.permissions import permissions_of
from vms.api.schemas import ApiModel, Me
from vms.api.security import served_over_https
from vms.api.timeparse import iso
from vms.db.models import AuthToken, User

router = APIRouter(prefix="/api/auth", tags=["auth"])

IN_FLIGHT_WAIT_S = 30.0  # longest wait for the other logins of an address or account being checked


class LoginIn(ApiModel):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


class LoginOut(ApiModel):
    token: str = Field(description="send as 'Authorization: Bearer <token>' or use the cookie set")
    expires_at: str
    user: Me


@router.post("/login", response_model=LoginOut, responses={401: {}, 429: {}, 503: {}})
async def login(body: LoginIn, request: Request, response: Response, ctx: Ctx) -> LoginOut:
    # async: a login waiting for its turn is a coroutine, not one of the pool's threads.
    client = client_address(request)
    give_up = time.monotonic() + IN_FLIGHT_WAIT_S
    gate = ctx.login_gate()
    waiting = False
    try:
        while isinstance(attempt := ctx.throttle.begin(body.username, client), LoginInFlight):
            if not waiting:
                # As many may wait here for other checks of their address or account as for the gate;
                # the rest are told to come back (else thousands sent at once would all wait, polling).
                if gate.in_flight_waiters >= gate.queue:
                    who = f"来自 {client} 的" if attempt.by == "address" else f"账号 {body.username} 的"
                    raise ApiError(429, "login_throttled", f"{who}登录尝试过多，请 1 秒后再试",
                                   headers={"Retry-After": "1"})
                waiting = True
                gate.in_flight_waiters += 1
            elif time.monotonic() > give_up:
                raise ApiError(503, "login_busy", "同时登录的人太多，请稍后再试", headers={"Retry-After": "1"})
            await asyncio.sleep(0.05)
    finally:
        if waiting:
            gate.in_flight_waiters -= 1
    if isinstance(attempt, LoginDelay):
        wait = int(attempt.seconds + 0.999)
        who = f"来自 {client} 的" if attempt.by == "address" else f"账号 {body.username} 的"
        raise ApiError(429, "login_throttled", f"{who}登录失败次数过多，请 {wait} 秒后再试",
                       headers={"Retry-After": str(wait)})
    outcome = "unchecked"
    try:
        async with ctx.login_gate().slot():
            outcome = "failed"  # from here the check may run (even if the client goes away)
            me, secret, expires_ms = await run_in_threadpool(_check_and_issue, ctx, body)
            outcome = "succeeded"
    except LoginBusy:
        raise ApiError(503, "login_busy", "同时登录的人太多，请稍后再试", headers={"Retry-After": "1"}) from None
    finally:
        ctx.throttle.finish(attempt, outcome)
    max_age = int(ctx.settings.api.session_hours * 3600)
    # Secure over HTTPS (directly or behind a trusted proxy), so the browser never sends it in clear text;
    # not over plain HTTP on the county LAN, where a Secure cookie would never come back.
    secure = served_over_https(request, ctx.settings.api.trusted_proxies)
    response.set_cookie(SESSION_COOKIE, secret, max_age=max_age, httponly=True, samesite="strict", path="/",
                        secure=secure)
    return LoginOut(token=secret, expires_at=iso(expires_ms, ctx.settings.tz), user=me)


def _check_and_issue(ctx: ApiContext, body: LoginIn) -> tuple[Me, str, int]:
    """Check the password (in a thread, under the login gate) and issue a session; 401 if wrong."""
    with ctx.database.session() as session:
        user = session.scalar(select(User).where(User.username == body.username))
        password_ok = verify_password(user, body.password)  # the same argon2 work for every case below
        # A disabled account answers as a wrong password does: "user X is disabled" confirmed the password.
        if not password_ok or user is None or user.disabled:
            raise ApiError(401, "login_failed", "用户名或密码错误")
        now = ctx.clock.now_ms()
        secret, tok = issue_session(session, user, now, ctx.settings.api.session_hours)
        assert tok.expires_ms is not None  # (a session always expires; only API keys may not)
        me = Me(username=user.username, role=user.role, towns=user.towns, kind="session",
                permissions=sorted(permissions_of(user.role, None)))
        return me, secret, tok.expires_ms


@router.post("/logout", status_code=204)
def logout(principal: CurrentPrincipal, session: DbSession, response: Response, ctx: Ctx) -> Response:
    if principal.kind == "session":
        tok = session.get(AuthToken, principal.token_id)
        if tok is not None:
            tok.revoked = True
            session.commit()
        forget_principals(ctx)
    response = Response(status_code=204)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


def _me(principal) -> Me:
    return Me(username=principal.username, role=principal.role,
              towns=list(principal.towns) if principal.towns is not None else None, kind=principal.kind,
              permissions=sorted(principal.permissions))


@router.get("/me", response_model=Me)
def me(principal: CurrentPrincipal) -> Me:
    """The caller; 401 with a code when not logged in (API clients)."""
    return _me(principal)


class SessionOut(ApiModel):
    user: Me | None = Field(description="the caller, or null when nobody is logged in")
    reason: str | None = Field(None, description="why a login that was sent is no longer good (the 401's "
                                                 "code: session_expired, token_revoked, ...); null otherwise")


@router.get("/session", response_model=SessionOut)
async def session_of(request: Request, ctx: Ctx) -> Response | SessionOut:
    """Who is logged in, for the console's first load: 200 with user null rather than a 401, which the
    browser reports as an error on every visit before login. A cookie that no longer logs in is
    removed."""
    try:
        principal = await current_principal(request, ctx)
    except ApiError as exc:
        if exc.status_code != 401:
            raise
        reason = None if exc.code == "not_logged_in" else exc.code
        out = Response(SessionOut(user=None, reason=reason).model_dump_json(), media_type="application/json")
        if request.cookies.get(SESSION_COOKIE) is not None:
            out.delete_cookie(SESSION_COOKIE, path="/")
        return out
    return SessionOut(user=_me(principal), reason=None)
