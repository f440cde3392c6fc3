"""Authentication, signed session cookies, CSRF tokens and the loopback check.

No third-party crypto: sessions are HMAC-SHA256-signed JSON (stdlib ``hmac``), CSRF
tokens are HMAC(secret, session id) sent back in every form (a synchronizer token tied
to the signed session cookie).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass

from flows_core import InvalidArgument

__all__ = [
    "Credentials",
    "Session",
    "SessionSigner",
    "check_bind",
    "is_loopback",
]

SESSION_COOKIE = "flows_ui_session"
SESSION_LIFETIME = 12 * 3600


@dataclass(frozen=True)
class Credentials:
    """Who may use the UI: bearer tokens (by user name) and basic-auth users."""

    tokens: Mapping[str, str]
    """user name -> token."""
    basic_users: Mapping[str, str]
    """user name -> password."""

    @classmethod
    def build(
        cls,
        token: str | Mapping[str, str] | None,
        basic_auth: str | tuple[str, str] | Mapping[str, str] | None,
    ) -> Credentials:
        """Validate the ``create_app`` options ``token`` and ``basic_auth`` (a
        ``"user:password"`` string, a pair, or a mapping of users to passwords)."""
        tokens: dict[str, str] = {}
        if isinstance(token, str):
            tokens["token"] = token
        elif token is not None:
            tokens.update(token)
        users: dict[str, str] = {}
        if isinstance(basic_auth, str):
            user, sep, password = basic_auth.partition(":")
            if not sep:
                raise InvalidArgument("basic_auth as a string must be 'user:password'")
            users[user] = password
        elif isinstance(basic_auth, tuple):
            if len(basic_auth) != 2:
                raise InvalidArgument("basic_auth must be a (user, password) pair or a mapping")
            users[basic_auth[0]] = basic_auth[1]
        elif basic_auth is not None:
            users.update(basic_auth)
        for user, secret in (*tokens.items(), *users.items()):
            if not isinstance(user, str) or not isinstance(secret, str) or not user:
                raise InvalidArgument("UI user names, tokens and passwords must be strings")
            if len(secret) < 8:
                raise InvalidArgument(
                    f"the UI token or password of {user!r} is {len(secret)} characters; "
                    "use at least 8 (make one with secrets.token_urlsafe())"
                )
        for user in users:
            if ":" in user:
                raise InvalidArgument(f"basic-auth user name {user!r} must not contain ':'")
        return cls(tokens=tokens, basic_users=users)

    @property
    def required(self) -> bool:
        """True when every request must authenticate."""
        return bool(self.tokens or self.basic_users)

    def user_for_token(self, presented: str) -> str | None:
        """The user whose token this is, compared in constant time."""
        found = None
        for user, token in self.tokens.items():
            if hmac.compare_digest(presented.encode(), token.encode()):
                found = user
        return found

    def user_for_basic(self, header: str) -> str | None:
        """The user of a valid ``Authorization: Basic ...`` header value."""
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic" or not self.basic_users:
            return None
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        user, sep, password = decoded.partition(":")
        expected = self.basic_users.get(user)
        if not sep or expected is None:
            # Same work either way, so a wrong user name takes as long as a wrong password.
            hmac.compare_digest(password.encode(), b"x" * len(password.encode()))
            return None
        return user if hmac.compare_digest(password.encode(), expected.encode()) else None

    def user_for_bearer(self, header: str) -> str | None:
        """The user of a valid ``Authorization: Bearer ...`` header value."""
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not self.tokens:
            return None
        return self.user_for_token(token.strip())


@dataclass(frozen=True)
class Session:
    """What the signed session cookie carries."""

    sid: str
    user: str | None
    """Set after a token login; None for anonymous or header-authenticated visitors."""
    expires: int

    @classmethod
    def fresh(cls, user: str | None = None) -> Session:
        return cls(secrets.token_urlsafe(18), user, int(time.time()) + SESSION_LIFETIME)


class SessionSigner:
    """Signs sessions into cookie values and derives their CSRF tokens."""

    def __init__(self, secret_key: bytes | str | None) -> None:
        if secret_key is None:
            key = secrets.token_bytes(32)
        elif isinstance(secret_key, str):
            key = secret_key.encode("utf-8")
        else:
            key = bytes(secret_key)
        if len(key) < 16:
            raise InvalidArgument("secret_key must be at least 16 bytes")
        self._key = hashlib.sha256(b"flows-ui-session:" + key).digest()
        self._csrf_key = hashlib.sha256(b"flows-ui-csrf:" + key).digest()

    def _mac(self, body: bytes) -> str:
        return hmac.new(self._key, body, hashlib.sha256).hexdigest()

    def dump(self, session: Session) -> str:
        body = json.dumps(
            {"sid": session.sid, "user": session.user, "exp": session.expires},
            separators=(",", ":"),
        ).encode()
        return base64.urlsafe_b64encode(body).decode().rstrip("=") + "." + self._mac(body)

    def load(self, value: str | None) -> Session | None:
        """The session of a cookie value, or None if missing, forged or expired."""
        if not value or "." not in value:
            return None
        encoded, _, mac = value.rpartition(".")
        try:
            body = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        except (binascii.Error, ValueError):
            return None
        if not hmac.compare_digest(mac, self._mac(body)):
            return None
        try:
            data = json.loads(body)
            session = Session(str(data["sid"]), data["user"], int(data["exp"]))
        except (ValueError, KeyError, TypeError):
            return None
        if session.user is not None and not isinstance(session.user, str):
            return None
        return session if session.expires > time.time() else None

    def csrf_token(self, session: Session) -> str:
        return hmac.new(self._csrf_key, session.sid.encode(), hashlib.sha256).hexdigest()

    def check_csrf(self, session: Session | None, presented: str) -> bool:
        if session is None or not presented:
            return False
        return hmac.compare_digest(presented, self.csrf_token(session))


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP literals (127.0.0.0/8, ::1)."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_bind(host: str, credentials: Credentials) -> None:
    """Refuse to serve on a non-loopback address without a token or basic auth."""
    if not is_loopback(host) and not credentials.required:
        raise InvalidArgument(
            f"refusing to serve the Flows UI on {host!r} without authentication: anyone who "
            "can reach that address could cancel and terminate workflows. Pass token=... "
            "(or basic_auth=(user, password)), or bind to 127.0.0.1"
        )
