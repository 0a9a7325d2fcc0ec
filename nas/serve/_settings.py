"""How the API server runs: tokens, read protection, body limit, data roots (``NAS_API_*``)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._errors import NasError

__all__ = ["ApiSettings"]


def _split(value: str | None) -> tuple[str, ...]:
    return tuple(t for t in (value or "").replace(",", " ").split() if t)


@dataclass(frozen=True)
class ApiSettings:
    """How the API runs. :meth:`from_env` reads ``NAS_API_*``; :meth:`check` refuses unsafe setups.

    Attributes:
        storage: database URL (``None``: ``$NAS_STORAGE`` or ``sqlite:///nas.db``).
        tokens: bearer tokens that may write (``NAS_API_TOKEN``, comma- or space-separated).
        read_tokens: tokens that may only read (``NAS_API_READ_TOKEN``).
        protect_reads: reads need a token too (``NAS_API_PROTECT_READS``).
        read_only: every write is refused (403), whatever the token.
        insecure: accept writes without a token (only when no token is configured).
        max_body_bytes: largest request body (413 above).
        data_roots: directories under which file data sources may lie (``NAS_API_DATA_ROOT``,
            ``os.pathsep``-separated); none: only ``digits``.
    """

    storage: str | None = None
    tokens: tuple[str, ...] = ()
    read_tokens: tuple[str, ...] = ()
    protect_reads: bool = False
    read_only: bool = False
    insecure: bool = False
    max_body_bytes: int = 1 << 20
    data_roots: tuple[Path, ...] = field(default_factory=tuple)

    @classmethod
    def from_env(cls, **overrides: Any) -> ApiSettings:
        """Settings from the environment; keyword arguments that are not None win."""
        env: dict[str, Any] = {
            "tokens": _split(os.environ.get("NAS_API_TOKEN")),
            "read_tokens": _split(os.environ.get("NAS_API_READ_TOKEN")),
            "protect_reads": os.environ.get("NAS_API_PROTECT_READS", "").strip().lower() in ("1", "true", "yes"),
            "data_roots": tuple(Path(p) for p in os.environ.get("NAS_API_DATA_ROOT", "").split(os.pathsep) if p),
        }
        env.update({k: v for k, v in overrides.items() if v is not None})
        env["data_roots"] = tuple(Path(p) for p in env.get("data_roots", ()))
        return cls(**env)

    def check(self) -> ApiSettings:
        """Raise :class:`NasError` (one line) for a setup that would expose the database."""
        for name, tokens in (("NAS_API_TOKEN", self.tokens), ("NAS_API_READ_TOKEN", self.read_tokens)):
            short = [t for t in tokens if len(t) < 16]
            if short:
                raise NasError(f"{name}: every token needs at least 16 characters ({len(short)} shorter); "
                               "e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))'")
        if set(self.tokens) & set(self.read_tokens):
            raise NasError("NAS_API_READ_TOKEN: a token is both a write and a read-only token; give each one role")
        if self.insecure and self.tokens:
            raise NasError("--insecure is for a server without tokens; unset NAS_API_TOKEN or leave out --insecure")
        if not self.tokens and not self.read_only and not self.insecure:
            raise NasError("no write token: set NAS_API_TOKEN (several: comma-separated), or start with --read-only "
                           "(every write refused), or --insecure (anyone may write)")
        if self.protect_reads and not (self.tokens or self.read_tokens):
            raise NasError("--protect-reads needs tokens: set NAS_API_TOKEN or NAS_API_READ_TOKEN")
        if self.max_body_bytes < 1024:
            raise NasError(f"must be at least 1024 bytes, got {self.max_body_bytes}", field="max_body")
        for root in self.data_roots:
            if not root.is_dir():
                raise NasError(f"{root} is not a directory", field="data_root")
        return self
