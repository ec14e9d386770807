"""Staff accounts and their sessions: argon2id password hashes, lock-out after repeated
failures, and server-side sessions behind a signed cookie.

The cookie holds a random token and an HMAC of it. The HMAC refuses a forged or truncated
cookie before the database is asked; the database holds only the token's sha256, so a dump of
it opens no session, and signing out deletes the row, so a copied cookie dies with it. Each
session has its own CSRF token, which every form of the console carries back.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

import asyncpg
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from appliance.audit import record
from appliance.errors import AppError

ROLES = ("admin", "staff")
MAX_FAILED_ATTEMPTS = 5
LOCKOUT_MINUTES = 15
MIN_PASSWORD_LENGTH = 10
_USERNAME = re.compile(r"^[a-z0-9][a-z0-9._-]{1,63}$")
_hasher = PasswordHasher()  # argon2id, RFC 9106's low-memory profile (64 MiB, t=3)
# Verified when the username is unknown, so both refusals take the same time.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


class AccountError(AppError):
    status_code = 422
    code = "invalid_account"


class SignInRefusedError(AppError):
    status_code = 401
    code = "sign_in_refused"


class AccountLockedError(AppError):
    status_code = 429
    code = "account_locked"


@dataclass(frozen=True)
class User:
    id: int
    username: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


@dataclass(frozen=True)
class StaffSession:
    user: User
    csrf_token: str
    expires_at: datetime


@dataclass(frozen=True)
class SignedIn:
    cookie: str
    session: StaffSession


class Accounts:
    def __init__(self, pool: asyncpg.Pool, *, signing_key: bytes, session_minutes: int) -> None:
        self._pool = pool
        self._key = signing_key
        self._minutes = session_minutes

    async def create_user(self, username: str, password: str, role: str, *, actor: str) -> User:
        username = username.strip().lower()
        if not _USERNAME.match(username):
            raise AccountError("A username is 2-64 lowercase letters, digits, '.', '_' or '-'.")
        if role not in ROLES:
            raise AccountError(f"The role must be one of {', '.join(ROLES)}.")
        if len(password) < MIN_PASSWORD_LENGTH:
            raise AccountError(f"The password needs at least {MIN_PASSWORD_LENGTH} characters.")
        hashed = await asyncio.to_thread(_hasher.hash, password)
        async with self._pool.acquire() as conn, conn.transaction():
            user_id = await conn.fetchval(
                "INSERT INTO admin_users (username, password_hash, role) VALUES ($1, $2, $3) "
                "ON CONFLICT (username) DO NOTHING RETURNING id",
                username,
                hashed,
                role,
            )
            if user_id is None:
                raise AccountError(f"The user {username!r} exists already.")
            await record(conn, actor, "user.create", f"user:{username}", {"role": role})
        return User(user_id, username, role)

    async def sign_in(self, username: str, password: str) -> SignedIn:
        """A new session, or a refusal that never says whether the username exists."""
        row = await self._pool.fetchrow(
            "SELECT id, username, role, password_hash, locked_until > now() AS locked "
            "FROM admin_users WHERE username = $1",
            username.strip().lower(),
        )
        if row is None:
            await asyncio.to_thread(_verify, _DUMMY_HASH, password)
            raise SignInRefusedError("Usuário ou senha incorretos.")
        if row["locked"]:
            raise AccountLockedError(
                "Conta bloqueada por excesso de tentativas; tente de novo mais tarde."
            )
        if not await asyncio.to_thread(_verify, row["password_hash"], password):
            await self._failed(row["id"], row["username"])
            raise SignInRefusedError("Usuário ou senha incorretos.")
        user = User(row["id"], row["username"], row["role"])
        return await self._open_session(user)

    async def session(self, cookie: str | None) -> StaffSession | None:
        """The live session a cookie names, or None (missing, forged, expired or signed out)."""
        token = self._unsign(cookie) if cookie else None
        if token is None:
            return None
        row = await self._pool.fetchrow(
            "SELECT u.id, u.username, u.role, s.csrf_token, s.expires_at "
            "FROM admin_sessions s JOIN admin_users u ON u.id = s.user_id "
            "WHERE s.token_sha256 = $1 AND s.expires_at > now()",
            _sha256(token),
        )
        if row is None:
            return None
        return StaffSession(
            User(row["id"], row["username"], row["role"]), row["csrf_token"], row["expires_at"]
        )

    async def sign_out(self, cookie: str | None) -> None:
        token = self._unsign(cookie) if cookie else None
        if token is not None:
            async with self._pool.acquire() as conn, conn.transaction():
                user = await conn.fetchval(
                    "DELETE FROM admin_sessions s USING admin_users u WHERE u.id = s.user_id "
                    "AND s.token_sha256 = $1 RETURNING u.username",
                    _sha256(token),
                )
                if user is not None:
                    await record(conn, user, "session.sign_out", f"user:{user}")

    async def _failed(self, user_id: int, username: str) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            locked = await conn.fetchval(
                "UPDATE admin_users SET failed_attempts = failed_attempts + 1, "
                "locked_until = CASE WHEN failed_attempts + 1 >= $2 "
                "THEN now() + make_interval(mins => $3) END WHERE id = $1 "
                "RETURNING locked_until IS NOT NULL",
                user_id,
                MAX_FAILED_ATTEMPTS,
                LOCKOUT_MINUTES,
            )
            if locked:
                await conn.execute(
                    "UPDATE admin_users SET failed_attempts = 0 WHERE id = $1", user_id
                )
                await record(conn, "system", "user.locked", f"user:{username}")

    async def _open_session(self, user: User) -> SignedIn:
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "UPDATE admin_users SET failed_attempts = 0, locked_until = NULL, "
                "last_login_at = now() WHERE id = $1",
                user.id,
            )
            await conn.execute("DELETE FROM admin_sessions WHERE expires_at < now()")
            expires = await conn.fetchval(
                "INSERT INTO admin_sessions (token_sha256, user_id, csrf_token, expires_at) "
                "VALUES ($1, $2, $3, now() + make_interval(mins => $4)) RETURNING expires_at",
                _sha256(token),
                user.id,
                csrf,
                self._minutes,
            )
            await record(conn, user.username, "session.sign_in", f"user:{user.username}")
        return SignedIn(f"{token}.{self._sign(token)}", StaffSession(user, csrf, expires))

    def _sign(self, token: str) -> str:
        return hmac.new(self._key, token.encode(), hashlib.sha256).hexdigest()

    def _unsign(self, cookie: str) -> str | None:
        token, _, signature = cookie.rpartition(".")
        if not token or not hmac.compare_digest(signature, self._sign(token)):
            return None
        return token


def _verify(hashed: str, password: str) -> bool:
    try:
        return _hasher.verify(hashed, password)
    except (VerificationError, InvalidHashError):
        return False


def _sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
