"""Device profiles: the numbers the roofline latency and energy model need, shipped as TOML.

Shipped profiles live in ``objectives/devices/*.toml``; users add their own files to
``$NAS_HOME/devices`` (default ``~/.lightnas/devices``) or pass a path. Every number of a
shipped profile cites its source in a ``[sources]`` table (the tests enforce it). The ``host``
profile is written by ``nas hardware calibrate`` from measurements of this machine.
"""

from __future__ import annotations

import functools
import math
import os
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["DTYPE_BYTES", "DeviceError", "DeviceProfile", "device_dirs", "get_device", "list_devices",
           "nas_home", "save_device"]

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "int8": 1}
SHIPPED_DIR = Path(__file__).with_name("devices")
NUMERIC_FIELDS = ("peak_macs_per_s", "mem_bandwidth_bytes_per_s", "energy_pj_per_mac", "energy_pj_per_byte",
                  "memory_bytes", "layer_overhead_us")


class DeviceError(ValueError):
    """Unknown or malformed device profile."""


class DeviceProfile(BaseModel):
    """Numbers of one device. Immutable."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    description: str = ""
    dtype: str = "float32"
    peak_macs_per_s: float = Field(gt=0)
    mem_bandwidth_bytes_per_s: float = Field(gt=0)
    energy_pj_per_mac: float = Field(ge=0)
    energy_pj_per_byte: float = Field(ge=0)
    memory_bytes: float = Field(gt=0)
    layer_overhead_us: float = Field(default=0.0, ge=0)
    sources: dict[str, str] = Field(default_factory=dict)

    @field_validator("dtype")
    @classmethod
    def _dtype(cls, v: str) -> str:
        if v not in DTYPE_BYTES:
            raise ValueError(f"accepted: {', '.join(DTYPE_BYTES)}")
        return v

    @field_validator(*NUMERIC_FIELDS)
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("must be finite")
        return v

    @property
    def bytes_per_element(self) -> int:
        return DTYPE_BYTES[self.dtype]

    def uncited(self) -> list[str]:
        """Numeric fields without a source."""
        return [f for f in NUMERIC_FIELDS if not self.sources.get(f, "").strip()]

    def to_toml(self) -> str:
        lines = [f"name = {_q(self.name)}", f"description = {_q(self.description)}", f"dtype = {_q(self.dtype)}"]
        lines += [f"{f} = {float(getattr(self, f))!r}" for f in NUMERIC_FIELDS]
        lines += ["", "[sources]"] + [f"{k} = {_q(v)}" for k, v in sorted(self.sources.items())]
        return "\n".join(lines) + "\n"


def _q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def nas_home() -> Path:
    """Per-user state directory: ``$NAS_HOME`` or ``~/.lightnas``."""
    return Path(os.environ.get("NAS_HOME") or Path.home() / ".lightnas")


def device_dirs() -> list[Path]:
    """Directories searched for profiles: user directory first (it may override), then shipped."""
    return [nas_home() / "devices", SHIPPED_DIR]


def load_device_file(path: Path) -> DeviceProfile:
    """Load and validate one profile file (parsed once per file version)."""
    try:
        mtime = Path(path).stat().st_mtime_ns
    except OSError as e:
        raise DeviceError(f"device profile {path}: cannot read ({e.strerror})") from None
    return _load(str(path), mtime)


@functools.lru_cache(maxsize=64)
def _load(path: str, mtime: int) -> DeviceProfile:
    try:
        data: dict[str, Any] = tomllib.loads(Path(path).read_text())
    except OSError as e:
        raise DeviceError(f"device profile {path}: cannot read ({e.strerror})") from None
    except tomllib.TOMLDecodeError as e:
        raise DeviceError(f"device profile {path}: not valid TOML ({e})") from None
    try:
        return DeviceProfile(**data)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "profile"
        raise DeviceError(f"device profile {path}: {field}: {err['msg']}") from None


def _index() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for d in reversed(device_dirs()):
        if d.is_dir():
            for p in sorted(d.glob("*.toml")):
                found[p.stem] = p
    return found


def list_devices() -> list[str]:
    """Names of the available profiles (shipped and the user's, ``host`` once calibrated)."""
    return sorted(_index())


def get_device(name: str) -> DeviceProfile:
    """A profile by name, or from a ``.toml`` path.

    Raises:
        DeviceError: unknown name (lists the valid ones) or malformed file.
    """
    if name.endswith(".toml") or os.sep in name:
        return load_device_file(Path(name))
    index = _index()
    if name not in index:
        hint = " (run 'nas hardware calibrate' to create it)" if name == "host" else ""
        raise DeviceError(f"unknown device profile {name!r}{hint}; accepted: {', '.join(sorted(index))} "
                          "or a path to a .toml file")
    return load_device_file(index[name])


def save_device(profile: DeviceProfile, directory: Path | None = None) -> Path:
    """Write ``profile`` as TOML into the user's device directory; returns the path."""
    d = directory or nas_home() / "devices"
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{profile.name}.toml"
    path.write_text(profile.to_toml())
    return path
