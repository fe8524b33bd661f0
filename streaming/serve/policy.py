"""Roles, their tables and column masks (`access.toml`), and the bearer tokens that name a role.

Tokens are stored as SHA-256 digests in a secret file (`LAKEHOUSE_API_TOKENS`), never in clear,
and a token never reaches a log or an error: a request is known by its token's id.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import os
import secrets
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streaming.errors import ConfigError

ADMIN = "admins"


@dataclass(frozen=True)
class Role:
    name: str
    tables: tuple[str, ...]
    clear_pii: bool = False
    internal_columns: bool = False

    def may_read(self, table: str) -> bool:
        return any(fnmatch.fnmatchcase(table, pattern) for pattern in self.tables)


@dataclass(frozen=True)
class Principal:
    """Who asks: the token's id (for the audit) and its role."""

    token_id: str
    role: Role


@dataclass(frozen=True)
class ColumnView:
    """How one role sees one table's columns."""

    visible: tuple[str, ...]  # in the table's order
    nulled: frozenset[str]  # returned empty
    masked: frozenset[str]  # returned as stored (masked at ingestion), never filterable

    def restricted(self) -> frozenset[str]:
        """Columns that may not be filtered or ordered by."""
        return self.nulled | self.masked


@dataclass(frozen=True)
class Policy:
    roles: dict[str, Role]
    null_columns: frozenset[str]
    masked_columns: frozenset[str]
    source: Path

    def view(self, role: Role, columns: list[str]) -> ColumnView:
        visible = tuple(c for c in columns if role.internal_columns or not c.startswith("_"))
        if role.clear_pii:
            return ColumnView(visible, frozenset(), frozenset())
        return ColumnView(
            visible,
            frozenset(c for c in visible if c in self.null_columns),
            frozenset(c for c in visible if c in self.masked_columns),
        )

    def denial(self, role: Role, table: str) -> str:
        allowed = ", ".join(role.tables)
        return f"role {role.name} may not read {table} (it may read: {allowed}; {self.source.name})"


def load_policy(path: Path) -> Policy:
    data = _toml(path, "access policy", "LAKEHOUSE_ACCESS_POLICY")
    roles_data = data.get("roles")
    if not isinstance(roles_data, dict) or not roles_data:
        raise ConfigError(f"access policy {path} declares no [roles.<name>]")
    roles = {}
    for name, spec in roles_data.items():
        tables = spec.get("tables") if isinstance(spec, dict) else None
        if not isinstance(tables, list) or not all(isinstance(t, str) for t in tables):
            raise ConfigError(f"access policy {path}: roles.{name}.tables must be a list of globs")
        unknown = set(spec) - {"tables", "clear_pii", "internal_columns"}
        if unknown:
            raise ConfigError(
                f"access policy {path}: roles.{name} has unknown keys {sorted(unknown)}"
            )
        roles[name] = Role(
            name,
            tuple(tables),
            bool(spec.get("clear_pii", False)),
            bool(spec.get("internal_columns", False)),
        )
    pii = data.get("pii", {})
    return Policy(
        roles,
        frozenset(pii.get("null", [])),
        frozenset(pii.get("masked", [])),
        path,
    )


@dataclass(frozen=True)
class _Token:
    token_id: str
    role: str
    digest: bytes


class Tokens:
    """Bearer token -> principal, by constant-time comparison of SHA-256 digests."""

    def __init__(self, tokens: list[_Token], policy: Policy) -> None:
        for token in tokens:
            if token.role not in policy.roles:
                raise ConfigError(
                    f"API token {token.token_id!r} names the role {token.role!r}, "
                    f"which {policy.source.name} does not declare",
                    hint=f"roles: {', '.join(sorted(policy.roles))}",
                )
        self._tokens = tokens
        self._policy = policy

    def __len__(self) -> int:
        return len(self._tokens)

    def principal(self, bearer: str) -> Principal | None:
        digest = _digest(bearer)
        found = None
        for token in self._tokens:  # every digest compared: the time does not tell which
            if hmac.compare_digest(token.digest, digest):
                found = token
        if found is None:
            return None
        return Principal(found.token_id, self._policy.roles[found.role])


def load_tokens(path: Path, policy: Policy) -> Tokens:
    if not path.exists():
        return Tokens([], policy)
    data = _toml(path, "API token file", "LAKEHOUSE_API_TOKENS")
    tokens = []
    for entry in data.get("tokens", []):
        try:
            tokens.append(_Token(entry["id"], entry["role"], bytes.fromhex(entry["sha256"])))
        except (KeyError, TypeError, ValueError):
            raise ConfigError(
                f"API token file {path}: each [[tokens]] needs id, role and sha256 (hex)",
                hint="add tokens with `lakehouse serve token --role <role> --id <name>`",
            ) from None
    return Tokens(tokens, policy)


def issue_token(path: Path, policy: Policy, role: str, token_id: str) -> str:
    """A new random token for `role`, its digest appended to the token file; the clear token is
    returned once and stored nowhere."""
    if role not in policy.roles:
        raise ConfigError(
            f"unknown role {role!r}",
            hint=f"roles in {policy.source.name}: {', '.join(policy.roles)}",
        )
    existing = load_tokens(path, policy)
    if any(t.token_id == token_id for t in existing._tokens):
        raise ConfigError(f"a token with id {token_id!r} already exists in {path}")
    token = secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = _digest(token).hex()
    entry = f'\n[[tokens]]\nid = "{_plain(token_id)}"\nrole = "{role}"\nsha256 = "{digest}"\n'
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(descriptor, "a") as handle:
        handle.write(entry)
    return token


def _plain(token_id: str) -> str:
    if not token_id or not all(c.isalnum() or c in "-_." for c in token_id):
        raise ConfigError(f"token id {token_id!r}: use letters, digits, '-', '_' or '.'")
    return token_id


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _toml(path: Path, what: str, variable: str) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist", hint=f"set {variable}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{what} {path} is not valid TOML: {exc}") from None
