"""Login, logout and who am I. Sessions are random tokens; only their SHA-256 is stored."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, Response
from pydantic import Field
from sqlalchemy import select

from vms.api.accounts import issue_session, verify_password
from vms.api.deps import SESSION_COOKIE, Ctx, CurrentPrincipal, DbSession, client_address, forget_principals
from vms.api.errors import ApiError
from vms.api.permissions import permissions_of
from vms.api.schemas import ApiModel, Me
from vms.api.security import served_over_https
from vms.api.timeparse import iso
from vms.db.models import AuthToken, User

router = APIRouter(prefix="/api/auth", tags=["auth"])


class LoginIn(ApiModel):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


class LoginOut(ApiModel):
    token: str = Field(description="send as 'Authorization: Bearer <token>' or use the cookie set")
    expires_at: str
    user: Me


@router.post("/login", response_model=LoginOut, responses={401: {}, 429: {}})
def login(body: LoginIn, request: Request, response: Response, ctx: Ctx, session: DbSession) -> LoginOut:
    client = client_address(request)
    wait = ctx.throttle.retry_after(body.username, client)
    if wait is not None:
        raise HTTPException(429, f"too many failed logins for {body.username!r} from {client}; "
                                 f"try again in {wait:.0f} s",
                            headers={"Retry-After": str(int(wait + 0.999))})
    user = session.scalar(select(User).where(User.username == body.username))
    password_ok = verify_password(user, body.password)  # the same argon2 work for every case below
    # A disabled account answers as a wrong password does: "user X is disabled" confirmed the password.
    if not password_ok or user is None or user.disabled:
        ctx.throttle.failed(body.username, client)
        raise ApiError(401, "login_failed", "用户名或密码错误")
    ctx.throttle.succeeded(body.username, client)
    now = ctx.clock.now_ms()
    secret, tok = issue_session(session, user, now, ctx.settings.api.session_hours)
    max_age = int(ctx.settings.api.session_hours * 3600)
    # Secure over HTTPS (directly or behind a trusted proxy), so the browser never sends it in clear text;
    # not over plain HTTP on the county LAN, where a Secure cookie would never come back.
    secure = served_over_https(request, getattr(ctx.settings.api, "trusted_proxies", None))
    response.set_cookie(SESSION_COOKIE, secret, max_age=max_age, httponly=True, samesite="strict", path="/",
                        secure=secure)
    me = Me(username=user.username, role=user.role, towns=user.towns, kind="session",
            permissions=sorted(permissions_of(user.role, None)))
    return LoginOut(token=secret, expires_at=iso(tok.expires_ms, ctx.settings.tz), user=me)


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


@router.get("/me", response_model=Me)
def me(principal: CurrentPrincipal) -> Me:
    return Me(username=principal.username, role=principal.role,
              towns=list(principal.towns) if principal.towns is not None else None, kind=principal.kind,
              permissions=sorted(principal.permissions))
