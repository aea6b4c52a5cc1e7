"""Users, password hashes and per-vhost permissions, as RabbitMQ models them."""
from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import os
import re
from dataclasses import dataclass, field


def hash_password(password: str, salt: bytes | None = None) -> str:
    """RabbitMQ's rabbit_password_hashing_sha256: base64(salt + sha256(salt + password))."""
    salt = os.urandom(4) if salt is None else salt
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def check_password(password: str, password_hash: str) -> bool:
    raw = base64.b64decode(password_hash)
    return hmac.compare_digest(hash_password(password, raw[:4]), password_hash)


@dataclass
class Permission:
    configure: str = ".*"
    write: str = ".*"
    read: str = ".*"

    def allows(self, kind: str, name: str) -> bool:
        """kind is 'configure', 'write' or 'read'. As in RabbitMQ the pattern is searched
        for, not anchored ('^…$' anchors it), and an empty pattern allows nothing."""
        pattern = getattr(self, kind)
        return bool(pattern) and _compiled(pattern).search(name) is not None


@dataclass
class TopicPermission:
    """B-AUTH-1 topic authorisation: regexes searched in the routing key of a publish
    (write) or the binding key of a bind/unbind (read) on one topic exchange."""
    write: str = ""
    read: str = ""

    def allows(self, kind: str, routing_key: str, variables: dict[str, str]) -> bool:
        """kind is 'write' or 'read'. As RabbitMQ: {username}/{vhost} are replaced
        (unescaped) before matching, and an empty pattern means '^$'."""
        pattern = getattr(self, kind) or "^$"
        for name, value in variables.items():
            pattern = pattern.replace("{" + name + "}", value)
        try:
            return _compiled(pattern).search(routing_key) is not None
        except re.error:  # a user name made the expanded pattern invalid: refuse
            return False


def check_pattern(pattern: str) -> str:
    """The pattern if it compiles, else ValueError with a readable text."""
    try:
        _compiled(pattern)
    except re.error as exc:
        raise ValueError(f"invalid regular expression '{pattern}': {exc}") from None
    return pattern


@functools.lru_cache(maxsize=256)
def _compiled(pattern: str) -> re.Pattern:
    return re.compile(pattern)


@dataclass
class User:
    name: str
    password_hash: str
    tags: list[str] = field(default_factory=list)
    permissions: dict[str, Permission] = field(default_factory=dict)
    # (vhost, exchange) -> its topic permission (B-AUTH-1)
    topic_permissions: dict[tuple[str, str], TopicPermission] = field(default_factory=dict)


class UserStore:
    def __init__(self) -> None:
        self.users: dict[str, User] = {}

    def add(self, name: str, password: str, tags: list[str] | None = None) -> User:
        user = User(name, hash_password(password), list(tags or []))
        self.users[name] = user
        return user

    def authenticate(self, name: str, password: str) -> User | None:
        user = self.users.get(name)
        if user is None or not check_password(password, user.password_hash):
            return None
        return user
