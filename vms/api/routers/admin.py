"""Accounts, for admins: list, create, change role/towns, disable, reset a password, API keys."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path
from pydantic import Field
from sqlalchemy import select

from vms.api import permissions as P
from vms.api.accounts import (
    MIN_PASSWORD,
    MIN_PASSWORD_SCORE,
    AccountError,
    Principal,
    check_towns,
    create_api_key,
    create_user,
    find_user,
    revoke_tokens,
    set_disabled,
    set_password,
)
from vms.api.deps import Ctx, DbSession, forget_principals, require
from vms.api.errors import ApiError
from vms.api.schemas import ApiModel, UserOut
from vms.api.timeparse import iso
from vms.db.models import AuthToken, User

router = APIRouter(prefix="/api/users", tags=["users"])

Admin = Annotated[Principal, Depends(require(P.USERS))]
Username = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.@-]{2,64}$")]
Role = Literal["admin", "operator", "auditor", "viewer"]
PASSWORD_RULES = (f"at least {MIN_PASSWORD} characters, not blank; common or easily guessed passwords (zxcvbn score "
                  f"below {MIN_PASSWORD_SCORE}, the username counted as known) are refused: code password_too_weak")


def _user_out(ctx, u: User) -> dict:
    return {"id": u.id, "username": u.username, "display_name": u.display_name, "role": u.role, "towns": u.towns,
            "disabled": u.disabled, "created_at": iso(u.created_ms, ctx.settings.tz)}


def _account_call(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except AccountError as exc:
        status = {"user_not_found": 404, "user_exists": 409}.get(exc.code, 400)
        raise ApiError(status, exc.code, str(exc)) from None


class UserIn(ApiModel):
    username: str = Field(pattern=r"^[A-Za-z0-9_.@-]{2,64}$")
    password: str = Field(max_length=1024, description=PASSWORD_RULES)
    role: Role
    towns: list[str] | None = Field(default=None, description="null: every town")
    display_name: str | None = Field(default=None, max_length=128)


class UserPatch(ApiModel):
    role: Role | None = None
    towns: list[str] | None = Field(default=None, description="set to null to allow every town")
    display_name: str | None = Field(default=None, max_length=128)
    disabled: bool | None = None
    password: str | None = Field(default=None, max_length=1024, description=PASSWORD_RULES)


@router.get("", response_model=list[UserOut])
def list_users(ctx: Ctx, session: DbSession, _admin: Admin) -> list[dict]:
    return [_user_out(ctx, u) for u in session.scalars(select(User).order_by(User.username))]


@router.post("", response_model=UserOut, status_code=201)
def add_user(body: UserIn, ctx: Ctx, session: DbSession, _admin: Admin) -> dict:
    user = _account_call(create_user, session, body.username, body.password, body.role, ctx.clock.now_ms(),
                         towns=body.towns, display_name=body.display_name)
    return _user_out(ctx, user)


@router.patch("/{username}", response_model=UserOut)
def change_user(username: Username, body: UserPatch, ctx: Ctx, session: DbSession, admin: Admin) -> dict:
    user = _account_call(find_user, session, username)
    if user.id == admin.user_id and (body.disabled or (body.role and body.role != "admin")):
        raise ApiError(400, "cannot_demote_self", "不能停用自己的账号，也不能取消自己的管理员角色")
    if "towns" in body.model_fields_set:
        user.towns = _account_call(check_towns, body.towns)
        revoke_tokens(session, user.id, kind="session")  # new limits apply from the next login
    if body.role is not None and body.role != user.role:
        user.role = body.role
        revoke_tokens(session, user.id, kind="session")
    if "display_name" in body.model_fields_set:
        user.display_name = body.display_name
    if body.password is not None:
        _account_call(set_password, session, username, body.password)
    if body.disabled is not None:
        _account_call(set_disabled, session, username, body.disabled)
    session.commit()
    forget_principals(ctx)
    return _user_out(ctx, user)


class ApiKeyIn(ApiModel):
    name: str = Field(pattern=r"^[\w.-]{1,64}$")
    scopes: list[Literal["status:read", "audits:read", "metrics", "holds:read", "alerts:read"]] = Field(min_length=1)
    days: float | None = Field(default=None, gt=0, le=3650, description="lifetime; null: until revoked")


class ApiKeyOut(ApiModel):
    id: int
    name: str | None
    scopes: list[str] | None
    expires_ms: int | None
    key: str | None = Field(default=None, description="shown once, at creation")


@router.post("/{username}/api-keys", response_model=ApiKeyOut, status_code=201)
def add_api_key(username: Username, body: ApiKeyIn, ctx: Ctx, session: DbSession, _admin: Admin) -> dict:
    secret, tok = _account_call(create_api_key, session, username, body.name, list(body.scopes), ctx.clock.now_ms(),
                                days=body.days)
    return {"id": tok.id, "name": tok.name, "scopes": tok.scopes, "expires_ms": tok.expires_ms, "key": secret}


@router.get("/{username}/api-keys", response_model=list[ApiKeyOut])
def list_api_keys(username: Username, session: DbSession, _admin: Admin) -> list[dict]:
    user = _account_call(find_user, session, username)
    q = select(AuthToken).where(AuthToken.user_id == user.id, AuthToken.kind == "apikey",
                                AuthToken.revoked.is_(False))
    return [{"id": t.id, "name": t.name, "scopes": t.scopes, "expires_ms": t.expires_ms} for t in session.scalars(q)]


@router.delete("/{username}/api-keys/{key_id}", status_code=204)
def revoke_api_key(username: Username, key_id: Annotated[int, Path(ge=1, le=2**31 - 1)], session: DbSession, ctx: Ctx,
                   _admin: Admin) -> None:
    user = _account_call(find_user, session, username)
    tok = session.get(AuthToken, key_id)
    if tok is None or tok.user_id != user.id or tok.kind != "apikey":
        raise ApiError(404, "api_key_not_found", f"用户 {username} 没有 API 密钥 {key_id}")
    tok.revoked = True
    session.commit()
    forget_principals(ctx)
