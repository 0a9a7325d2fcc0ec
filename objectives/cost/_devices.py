"""Device profiles: the numbers the latency and energy model need, shipped as TOML.

Shipped profiles live in ``objectives/cost/devices/*.toml``; users add their own files to
``$NAS_HOME/devices`` (default ``~/.lightnas/devices``) or pass a path; a study database can
hold profiles too (``nas hardware fit`` stores them there, so that workers on other hosts cost
with the same numbers). A database's profiles are never process-wide: whoever read them from
the study's store passes them along (``stored``: name -> TOML text, ``Store.device_profiles()``)
to :func:`get_device`, :func:`list_devices` and :func:`open_profile`, where they come before the
user's and the shipped ones, so two databases in one process (the threads of ``nas serve``) each
cost with their own. Every number of a shipped profile
cites its source in a ``[sources]`` table (the tests enforce it). The ``host`` profile is
written by ``nas hardware calibrate`` from measurements of this machine.

A profile predicts latency with its operator-level model (``[opmodel]``, see
:mod:`objectives.cost._opmodel`) when it has one, else with the per-layer roofline of its peak
MAC/s, bandwidth and per-layer overhead. A per-layer lookup table (``[lut]``: layer signature
-> milliseconds) overrides the model for the layers it lists. ``[[validation]]`` records how
well the profile predicted measurements it was not fitted to. Energy is the board's power over
the run time plus the dynamic energy of compute and memory (``board_power_w``,
``energy_pj_per_mac``, ``energy_pj_per_byte``).
"""

from __future__ import annotations

import functools
import math
import os
import sys
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from search_spaces import InputError

from .._files import MAX_PROFILE_BYTES, check_user_file, read_user_text
from ._opmodel import OpModel

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["DTYPE_BYTES", "DeviceError", "DeviceProfile", "Validation", "device_dirs", "get_device", "list_devices",
           "load_device_file", "nas_home", "open_profile", "parse_profile", "save_device", "shipped_profile_path",
           "user_profile_path"]

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "int8": 1}
SHIPPED_DIR = Path(__file__).with_name("devices")
NUMERIC_FIELDS = ("peak_macs_per_s", "mem_bandwidth_bytes_per_s", "energy_pj_per_mac", "energy_pj_per_byte",
                  "memory_bytes", "layer_overhead_us", "board_power_w")


class DeviceError(InputError):
    """Unknown or malformed device profile."""


class Validation(BaseModel):
    """How well a profile predicted measurements it was not fitted to."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    data: str = Field(min_length=1, description="what was predicted (short)")
    source: str = Field(default="", description="where the measurements come from")
    n_fit: int = Field(ge=0, description="measurements the profile was fitted to")
    n_test: int = Field(ge=0, description="measurements predicted (not used in the fit)")
    tau: float | None = Field(default=None, description="Kendall tau-b of predicted vs measured latency")
    median_abs_ln_error: float | None = Field(default=None, description="median |ln(predicted / measured)|")
    tau_flops: float | None = Field(default=None, description="Kendall tau-b of FLOPs vs measured latency")
    note: str = ""

    def summary(self) -> str:
        parts = []
        if self.tau is not None and math.isfinite(self.tau):
            parts.append(f"tau {self.tau:.2f}")
        if self.median_abs_ln_error is not None:
            parts.append(f"|ln err| {self.median_abs_ln_error:.2f}")
        return f"{', '.join(parts) or 'no figures'} on {self.n_test} ({self.data})"


#: Per live profile object (by id): its layer latency memo, see DeviceProfile.layer_latency_memo.
_LAYER_MS: dict[int, dict[tuple[object, ...], float]] = {}


class DeviceProfile(BaseModel):
    """Numbers of one device. Immutable."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    description: str = ""
    runtime: str = Field(default="", description="inference runtime and precision the numbers describe")
    dtype: str = "float32"
    memory_runtime: Literal["tflm"] | None = Field(
        default=None, description="the device runtime whose arena and file size the resources ram and flash mean "
                                  "(tflm: TensorFlow Lite Micro running the int8 .tflite artifact); none: no ram/flash")
    peak_macs_per_s: float = Field(gt=0)
    mem_bandwidth_bytes_per_s: float = Field(gt=0)
    energy_pj_per_mac: float = Field(ge=0)
    energy_pj_per_byte: float = Field(ge=0)
    memory_bytes: float = Field(gt=0)
    layer_overhead_us: float = Field(default=0.0, ge=0)
    board_power_w: float = Field(default=0.0, ge=0, description="power the board draws while it runs a network")
    opmodel: OpModel | None = None
    lut: dict[str, float] = Field(default_factory=dict, description="layer signature -> measured milliseconds")
    validation: list[Validation] = Field(default_factory=list)
    sources: dict[str, str] = Field(default_factory=dict)

    @field_validator("lut")
    @classmethod
    def _lut(cls, v: dict[str, float]) -> dict[str, float]:
        for key, ms in v.items():
            if not (isinstance(ms, (int, float)) and math.isfinite(ms) and ms >= 0):
                raise ValueError(f"{key}: expected a non-negative number of milliseconds, got {ms!r}")
        return v

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

    def layer_latency_memo(self) -> dict[tuple[object, ...], float]:
        """Latency (ms) of the layers already costed with this profile object, by operator class
        and shape: a search costs the same layer shapes over and over (``objectives.cost._cost``).
        Kept beside the profile, not in it (a copy or an equal profile starts its own), dropped
        with it, and cleared when it grows large."""
        memo = _LAYER_MS.get(id(self))
        if memo is None:
            memo = _LAYER_MS[id(self)] = {}
            weakref.finalize(self, _LAYER_MS.pop, id(self), None)
        elif len(memo) > 200_000:
            memo.clear()
        return memo

    def uncited(self) -> list[str]:
        """Numeric fields (and the operator model, the lookup table) without a source."""
        fields = list(NUMERIC_FIELDS) + (["opmodel"] if self.opmodel else []) + (["lut"] if self.lut else [])
        return [f for f in fields if not self.sources.get(f, "").strip()]

    def to_toml(self) -> str:
        lines = [f"name = {_q(self.name)}", f"description = {_q(self.description)}", f"runtime = {_q(self.runtime)}",
                 f"dtype = {_q(self.dtype)}"]
        lines += [f"{f} = {float(getattr(self, f))!r}" for f in NUMERIC_FIELDS]
        if self.opmodel is not None:
            m = self.opmodel
            lines += ["", "[opmodel]", f"form = {_q(m.form)}", f"bandwidth_bytes_per_s = {m.bandwidth_bytes_per_s!r}"]
            for cls, p in m.classes.items():
                lines += ["", f"[opmodel.classes.{cls}]"]
                lines += [f"{k} = {_toml_value(v)}" for k, v in p.model_dump().items()]
        if self.lut:
            lines += ["", "[lut]"] + [f"{_q(k)} = {float(v)!r}" for k, v in sorted(self.lut.items())]
        for v in self.validation:
            lines += ["", "[[validation]]"]
            lines += [f"{k} = {_toml_value(x)}" for k, x in v.model_dump().items() if x is not None]
        lines += ["", "[sources]"] + [f"{k} = {_q(v)}" for k, v in sorted(self.sources.items())]
        return "\n".join(lines) + "\n"

    def validation_summary(self) -> str:
        """One line: the profile's validations, or that it has none."""
        if not self.validation:
            return "not validated against measurements"
        return "; ".join(v.summary() for v in self.validation)


def _toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(float(v)) if isinstance(v, float) else str(v)
    return _q(str(v))


def _q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def nas_home() -> Path:
    """Per-user state directory: ``$NAS_HOME`` or ``~/.lightnas``."""
    return Path(os.environ.get("NAS_HOME") or Path.home() / ".lightnas")


def device_dirs() -> list[Path]:
    """Directories searched for profiles: user directory first (it may override), then shipped."""
    return [nas_home() / "devices", SHIPPED_DIR]


def parse_profile(text: str, origin: str) -> DeviceProfile:
    """A profile from TOML text; ``origin`` names it in errors.

    Raises:
        DeviceError: not TOML, or fields that do not validate (one line, naming the field).
    """
    try:
        data: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise DeviceError(f"device profile {origin}: not valid TOML ({e})") from None
    try:
        return DeviceProfile(**data)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "profile"
        raise DeviceError(f"device profile {origin}: {field}: {err['msg']}") from None
    except TypeError as e:
        raise DeviceError(f"device profile {origin}: {e}") from None


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
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise DeviceError(f"device profile {path}: cannot read ({getattr(e, 'strerror', None) or e})") from None
    return parse_profile(text, path)


@functools.lru_cache(maxsize=64)
def _parse_stored(name: str, text: str) -> DeviceProfile:
    return parse_profile(text, f"{name!r} (stored in the study database)")


def _index() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for d in reversed(device_dirs()):
        if d.is_dir():
            for p in sorted(d.glob("*.toml")):
                found[p.stem] = p
    return found


def list_devices(stored: Mapping[str, str] | None = None) -> list[str]:
    """Names of the available profiles (shipped, the user's, ``host`` once calibrated, and
    ``stored``: those of a study database, name -> TOML text)."""
    return sorted(set(_index()) | set(stored or ()))


def get_device(name: str, stored: Mapping[str, str] | None = None) -> DeviceProfile:
    """A profile by name, or from a ``.toml`` path. ``stored``: the profiles of the study's
    database (name -> TOML text, ``Store.device_profiles()``), which come before the user's and
    the shipped ones: a study's database is what every worker of the study shares, whatever host
    it runs on. An unparsable stored entry fails, with its name, only when asked for.

    Raises:
        DeviceError: unknown name (lists the valid ones) or malformed file.
    """
    if name.endswith(".toml") or os.sep in name:
        return load_device_file(Path(name))
    if stored and name in stored:
        return _parse_stored(name, stored[name])
    index = _index()
    if name not in index:
        hint = " (run 'nas hardware calibrate' to create it)" if name == "host" else ""
        raise DeviceError(f"unknown device profile {name!r}{hint}; accepted: {', '.join(list_devices(stored))} "
                          "or a path to a .toml file")
    return load_device_file(index[name])


def shipped_profile_path(name: str) -> Path | None:
    """The file of the shipped profile ``name`` (``objectives/cost/devices``), None when none is shipped."""
    path = SHIPPED_DIR / f"{name}.toml"
    return path if path.is_file() else None


def user_profile_path(name: str) -> Path | None:
    """The user's own file of profile ``name`` (``$NAS_HOME/devices``: calibrated or fitted
    here), None when the user has none of that name."""
    path = nas_home() / "devices" / f"{name}.toml"
    return path if path.is_file() else None


def save_device(profile: DeviceProfile, directory: Path | None = None, *,
                before_commit: Callable[[], None] | None = None) -> Path:
    """Write ``profile`` as TOML into the user's device directory (``$NAS_HOME/devices``, created if
    missing); returns the path. Written under a temporary name and renamed: a full disk never
    leaves half a profile, and ``before_commit`` (e.g. storing it in a database) runs once the file
    is written and before it takes its name, so that when it fails no file is left either.

    Raises:
        DeviceError: the directory cannot be written (one line naming it).
    """
    from .._out import write_files

    d = directory or nas_home() / "devices"
    what = "device profile directory" if directory is not None else "$NAS_HOME/devices"
    path = d / f"{profile.name}.toml"
    write_files(d, {path.name: profile.to_toml().encode()}, None, what=what, error=DeviceError,
                accepted="accepted: a directory you may write (set $NAS_HOME to one)" if directory is None
                else "accepted: a directory you may write", before_commit=before_commit)
    return path


def _profile_file(name: str, stored: Mapping[str, str]) -> Path | None:
    """The file :func:`get_device` reads for profile ``name`` (the user's before the shipped one),
    None when it reads none (a profile of the study database, or an unknown name)."""
    if name in stored:
        return None
    user = nas_home() / "devices" / f"{name}.toml"
    if os.path.lexists(user):  # False for a name no file system takes (too long, a NUL byte)
        return user
    try:
        return shipped_profile_path(name)
    except (OSError, ValueError):  # such a name: get_device says it is unknown
        return None


def open_profile(name: str, stored: Mapping[str, str] | None = None) -> DeviceProfile:
    """:func:`get_device` that cannot hang: a profile given by path is read with
    :func:`read_user_file`; a profile's file in ``$NAS_HOME/devices`` is checked the same way
    before it is read; TOML nested too deeply is one line too. ``stored``: the profiles of a study
    database (name -> TOML text), which come first, as they do for :func:`get_device`.

    Raises:
        DeviceError: unknown name (listing the valid ones), a file that is not a regular file of at
            most :data:`MAX_PROFILE_BYTES`, not UTF-8, not TOML or not a valid profile.
    """
    try:
        if name.endswith(".toml") or os.sep in name:
            text = read_user_text(name, None, MAX_PROFILE_BYTES, what="device profile", error=DeviceError,
                                  accepted="a profile TOML file (TOML is UTF-8)")
            return parse_profile(text, name)
        if stored and name in stored:
            return _parse_stored(name, stored[name])
        path = _profile_file(name, stored or {})
        if path is not None:
            check_user_file(path, None, MAX_PROFILE_BYTES, what=f"device profile {name!r}", error=DeviceError)
        return get_device(name, stored)
    except RecursionError:
        raise DeviceError(f"device profile {name!r}: TOML nested too deeply to read; accepted: a profile as 'nas "
                          "hardware fit' writes it") from None
