"""Accounts and tokens: argon2 password hashes, login sessions and API keys (only hashes stored)."""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from vms.api.permissions import API_KEY_SCOPES, ROLES
from vms.catalog.towns import TOWN_NAMES, town_rank
from vms.core.errors import VmsError
from vms.db.models import AuthToken, User

USERNAME = re.compile(r"^[A-Za-z0-9_.@-]{2,64}$")
MIN_PASSWORD = 10
MAX_PASSWORD = 1024
# zxcvbn's score of how guessable a password is (0-4; 3 = more than 10^8 guesses): below this it is
# refused. zxcvbn knows the common-password lists, keyboard runs (1qaz2wsx, 147258369), repeats,
# sequences, dates, and the user's own name given as a hint.
MIN_PASSWORD_SCORE = 3
ZXCVBN_MAX_CHARS = 72  # zxcvbn refuses longer input; the first 72 characters decide the score
# Words a password of this system must not lean on (besides the username and display name).
PASSWORD_HINTS = ("vms", "huidong", "惠东", "dianshang", "电商", "admin", "operator", "camera", "jiankong", "监控")
SESSION_PREFIX = "vmss_"
API_KEY_PREFIX = "vmsk_"

_hasher = PasswordHasher()
# Verifying against this when the user does not exist keeps the timing of a failed login the same.
_DUMMY_HASH = _hasher.hash("not a real password")


class AccountError(VmsError):
    """A user or key request that cannot be done; the message says why and `code` names the case
    (the API answers {"detail", "code"}; 404 for user_not_found, 409 for user_exists, else 400)."""

    def __init__(self, message: str, code: str = "account_invalid") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Principal:
    """Who is calling: a logged-in user or an API key of a user."""

    user_id: int
    username: str
    role: str
    towns: tuple[str, ...] | None  # None: every town
    kind: str  # session | apikey
    token_id: int
    permissions: frozenset[str]

    def may_see_town(self, town: str) -> bool:
        return self.towns is None or town in self.towns


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def check_password_rules(password: str, username: str = "", display_name: str | None = None) -> None:
    """Refuse passwords that are short, blank or easily guessed (zxcvbn, with the user's names as hints).
    Messages in Chinese: the operator setting the password reads them."""
    if not password.strip():
        raise AccountError("密码不能全是空白字符", "password_blank")
    if len(password) < MIN_PASSWORD:
        raise AccountError(f"密码太短：至少 {MIN_PASSWORD} 个字符", "password_too_short")
    if len(password) > MAX_PASSWORD:
        raise AccountError(f"密码太长：最多 {MAX_PASSWORD} 个字符", "password_too_long")
    from zxcvbn import zxcvbn  # imported on use: its word lists take ~0.2 s to load

    hints = [h for h in (username, display_name, *PASSWORD_HINTS) if h]
    if zxcvbn(password[:ZXCVBN_MAX_CHARS], user_inputs=hints)["score"] < MIN_PASSWORD_SCORE:
        raise AccountError("密码太容易猜到（常见密码、键盘序列、重复、日期或含用户名）：请用几个不相关的词组成的长短语",
                           "password_too_weak")


def verify_password(user: User | None, password: str) -> bool:
    """True if the password matches; also spends the same time when there is no such user."""
    try:
        return _hasher.verify(user.password_hash if user else _DUMMY_HASH, password) and user is not None
    except (VerificationError, InvalidHashError):
        return False


def token_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def check_towns(towns: list[str] | None) -> list[str] | None:
    if towns is None:
        return None
    unknown = [t for t in towns if t not in TOWN_NAMES]
    if unknown:
        raise AccountError(f"没有镇街 {'、'.join(unknown)[:200]}；可选：{'、'.join(TOWN_NAMES)}", "town_unknown")
    if not towns:
        raise AccountError("镇街范围为空将什么也看不到：不限镇街请不填此项", "towns_empty")
    return sorted(set(towns), key=town_rank)  # the county's order, as every list of towns


def create_user(session: Session, username: str, password: str, role: str, now_ms: int,
                towns: list[str] | None = None, display_name: str | None = None,
                password_hash: str | None = None) -> User:
    """A new user. `password_hash`, if given, is an argon2 hash of `password` made earlier."""
    if not USERNAME.match(username):
        raise AccountError(f"用户名 {username[:80]!r} 不合规：须为 2 至 64 个字母、数字或 _ . @ -", "username_invalid")
    if role not in ROLES:
        raise AccountError(f"没有角色 {role[:40]!r}；可选：{', '.join(ROLES)}", "role_unknown")
    check_password_rules(password, username, display_name)
    if session.scalar(select(User).where(User.username == username)) is not None:
        raise AccountError(f"用户 {username!r} 已存在", "user_exists")
    user = User(username=username, display_name=display_name, password_hash=password_hash or hash_password(password),
                role=role, towns=check_towns(towns), disabled=False, created_ms=now_ms)
    session.add(user)
    session.flush()
    return user


def find_user(session: Session, username: str) -> User:
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        raise AccountError(f"用户 {username[:80]!r} 不存在", "user_not_found")
    return user


def set_password(session: Session, username: str, password: str) -> None:
    user = find_user(session, username)
    check_password_rules(password, username, user.display_name)
    user.password_hash = hash_password(password)
    revoke_tokens(session, user.id, kind="session")


def set_disabled(session: Session, username: str, disabled: bool) -> None:
    user = find_user(session, username)
    user.disabled = disabled
    if disabled:
        revoke_tokens(session, user.id)


def revoke_tokens(session: Session, user_id: int, kind: str | None = None) -> None:
    q = select(AuthToken).where(AuthToken.user_id == user_id, AuthToken.revoked.is_(False))
    if kind:
        q = q.where(AuthToken.kind == kind)
    for tok in session.scalars(q):
        tok.revoked = True


def issue_session(session: Session, user: User, now_ms: int, hours: float) -> tuple[str, AuthToken]:
    secret = SESSION_PREFIX + secrets.token_urlsafe(32)
    tok = AuthToken(token_hash=token_hash(secret), kind="session", user_id=user.id, created_ms=now_ms,
                    expires_ms=now_ms + int(hours * 3_600_000), revoked=False)
    session.add(tok)
    session.flush()
    return secret, tok


def create_api_key(session: Session, username: str, name: str, scopes: list[str], now_ms: int,
                   days: float | None = None) -> tuple[str, AuthToken]:
    user = find_user(session, username)
    bad = [s for s in scopes if s not in API_KEY_SCOPES]
    if bad or not scopes:
        allowed = ", ".join(sorted(API_KEY_SCOPES))
        raise AccountError(f"权限范围 {str(bad or scopes)[:200]} 不允许；可选：{allowed}", "scopes_invalid")
    if not re.match(r"^[\w.-]{1,64}$", name):
        raise AccountError("密钥名称须为 1 至 64 个字母、数字或 _ . -", "key_name_invalid")
    secret = API_KEY_PREFIX + secrets.token_urlsafe(32)
    tok = AuthToken(token_hash=token_hash(secret), kind="apikey", user_id=user.id, name=name,
                    scopes=sorted(set(scopes)), created_ms=now_ms,
                    expires_ms=None if days is None else now_ms + int(days * 86_400_000), revoked=False)
    session.add(tok)
    session.flush()
    return secret, tok
