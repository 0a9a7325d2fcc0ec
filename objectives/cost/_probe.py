"""Probe networks: a set of small networks chosen so that timing them identifies the operator-level
latency model (:mod:`objectives.cost._opmodel`) of a device.

A quarter of a probe set is *designed*: a stem, ``d`` copies of one block type at one width and
input size, and the head, for every family below in turn, with widths, sizes, kernels and
depths drawn from a seeded generator. Networks of one family differ in how many operators of
one class they run and at which shape, so the fit can tell the classes apart and see how their
throughput changes with shape (the idea of nn-Meter's kernel-level profiling, Zhang et al.,
MobiSys 2021, with whole networks instead of single kernels, so that any runtime can time
them). The other three quarters are *sampled* from the registered search spaces at their usual
inputs, so the fit sees the mixtures the spaces produce.

Families (the operator classes they isolate): ``conv`` (dense k x k), ``conv1x1``, ``lowrank``
(LightConv2d pairs), ``dw`` (depthwise + 1x1 projection + residual add: inverted blocks at
expansion 1), ``inverted`` (expansion 3 or 6), ``basic`` and ``bottleneck`` (residual adds,
projection shortcuts), ``linear`` (a hidden fully-connected layer, dense or low-rank).

The same set calibrates this host (``calibrate_host``) and any device a user times by hand
(``nas hardware probe`` / ``nas hardware fit``).
"""

from __future__ import annotations

import csv
import functools
import io
import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from search_spaces import ArchSpec, Block, Head, SpecError, Stage, Stem, get_space, list_spaces, sample_spec

from .._files import read_user_text
from .._out import FileContent, check_out_dir, write_files
from ._devices import DeviceError, DeviceProfile
from ._opmodel import OP_CLASSES, Layer, add_layer, conv_layer, linear_layer, pool_layer

__all__ = ["FAMILIES", "LUT_COLUMNS", "MANIFEST", "MeasurementError", "Probe", "ProbeMeasurement",
           "fit_device_profile", "fit_measurements", "measurement_kind", "probe_set", "read_lut",
           "read_probe_measurements", "write_probes"]

FAMILIES = ("conv", "conv1x1", "lowrank", "dw", "inverted", "basic", "bottleneck", "linear")
#: Inputs of the sampled half (those of the datasets the product loads: digits, MNIST-like, CIFAR).
SAMPLED_SHAPES = ((1, 28, 28), (3, 32, 32), (1, 8, 8))
#: Inputs of the designed half.
DESIGNED_SIZES = (8, 16, 32)
WIDTHS = (8, 12, 16, 24, 32, 48, 64, 96, 128)
#: Sample seeds of the sampled half start here (apart from the small seeds benchmarks evaluate on).
SAMPLE_SEED0 = 10_000
#: Designed probes larger than this are drawn again (a probe should time in milliseconds on a
#: microcontroller-class device too).
MAX_MACS = 40_000_000


@dataclass(frozen=True)
class Probe:
    """One probe network: ``id`` (``p000``...), its spec, input shape, classes and family."""

    id: str
    spec: ArchSpec
    input_shape: tuple[int, int, int]
    num_classes: int
    family: str


def _designed(family: str, rng: random.Random) -> tuple[ArchSpec, tuple[int, int, int]]:
    size = rng.choice(DESIGNED_SIZES)
    channels = rng.choice((1, 3))
    width = rng.choice(WIDTHS)
    depth = rng.choice((1, 2, 3, 4, 6))
    kernel = rng.choice((3, 5))
    stem = Stem(rng.choice((8, 16, 32)), 3, 1)
    head = Head()
    if family == "conv":
        blocks = [Block("conv", width, None, None, kernel, 1)] * depth
    elif family == "conv1x1":
        blocks = [Block("conv", width, None, None, 1, 1)] * depth
    elif family == "lowrank":
        ratio = rng.choice((0.5, 0.25, 0.125))
        blocks = [Block("conv", width, None, None, rng.choice((1, 3, 5)), 1, ratio)] * depth
    elif family == "dw":
        stem = Stem(width, 3, 1)
        blocks = [Block("inverted", width, width, None, kernel, 1)] * depth
    elif family == "inverted":
        stem = Stem(width, 3, 1)
        ratio = rng.choice((1.0, 1.0, 0.5, 0.25))
        blocks = [Block("inverted", width, width * rng.choice((3, 6)), None, kernel, 1, ratio)] * depth
    elif family == "basic":
        blocks = [Block("basic", width, width, None, 3, 1, rng.choice((1.0, 1.0, 0.5)))] * depth
    elif family == "bottleneck":
        mid = max(4, width // 4)
        blocks = [Block("bottleneck", 4 * mid, mid, mid, 3, 1, rng.choice((1.0, 1.0, 0.5)))] * depth
    elif family == "linear":
        blocks = [Block("conv", width, None, None, 3, 2 if size >= 16 else 1)]
        head = Head(hidden=rng.choice((64, 128, 256, 512, 1024)), rank_ratio=rng.choice((1.0, 1.0, 0.25, 0.125)))
    else:  # pragma: no cover - FAMILIES is closed
        raise ValueError(family)
    spec = ArchSpec(stem, (Stage(tuple(blocks)),), head, "relu", f"probe-{family}")
    return spec, (channels, size, size)


def probe_set(n: int = 60, seed: int = 0, *, num_classes: int = 10, designed_share: float = 0.25) -> list[Probe]:
    """``n`` probe networks: about ``designed_share`` of them designed (families in turn), the rest
    sampled round-robin from the registered spaces at :data:`SAMPLED_SHAPES`. Deterministic in
    ``(n, seed)``; no two probes share a spec and input.

    Raises:
        ValueError: ``n`` < 1.
    """
    from ._analytic import analytic_layers

    if n < 1:
        raise ValueError(f"need at least 1 probe, got {n}")
    rng = random.Random(seed)
    n_designed = int(round(n * designed_share))
    seen: set[tuple[str, tuple[int, int, int]]] = set()
    out: list[Probe] = []
    i = 0
    while len(out) < n_designed:
        family = FAMILIES[i % len(FAMILIES)]
        i += 1
        for _ in range(50):
            spec, shape = _designed(family, rng)
            macs = sum(op.macs for op in analytic_layers(spec, shape, num_classes))
            if macs <= MAX_MACS and (spec.hash, shape) not in seen:
                break
        else:  # pragma: no cover - 50 draws always find one
            continue
        seen.add((spec.hash, shape))
        out.append(Probe(f"p{len(out):03d}", spec, shape, num_classes, family))
    names = list_spaces()
    j = 0
    while len(out) < n:
        shape = SAMPLED_SHAPES[j % len(SAMPLED_SHAPES)]
        name = names[(j // len(SAMPLED_SHAPES)) % len(names)]
        spec = sample_spec(get_space(name, input_shape=shape), SAMPLE_SEED0 + seed * 100_003 + j)
        j += 1
        if (spec.hash, shape) in seen:
            continue
        seen.add((spec.hash, shape))
        out.append(Probe(f"p{len(out):03d}", spec, shape, num_classes, name))
    return out


# ------------------------------------------------------------------------------ files for a device
MANIFEST = "probes.csv"
#: The probe set as written (ids, inputs, specs): the reference a filled manifest is checked
#: against, since the user edits the manifest itself.
PROBE_SET = "probe_set.json"
MANIFEST_COLUMNS = ("probe_id", "family", "input_shape", "num_classes", "macs", "layers", "onnx", "spec",
                    "latency_ms", "energy_uj")
#: Columns of a per-layer lookup table (one row per layer signature).
LUT_COLUMNS = ("operator", "cin", "h", "w", "cout", "kernel", "stride", "groups", "latency_ms")


class MeasurementError(DeviceError):
    """A measurement file that cannot be used; the message is one line naming the row and field."""


def write_probes(directory: Path, probes: list[Probe], *, progress: Callable[[int, int], None] | None = None
                 ) -> Path:
    """Write a probe set for timing on a device: ``onnx/<id>.onnx`` (batch 1, fixed shapes, opset
    17), ``specs/<id>.json``, the manifest ``probes.csv`` with empty ``latency_ms`` and
    ``energy_uj`` columns to fill, and :data:`PROBE_SET` (the set as written, which the filled
    manifest is checked against). Returns the manifest's path.

    All files or none: a directory that cannot be written is refused before any probe is exported,
    and a failure while writing (a full disk) leaves nothing behind.

    Raises:
        MeasurementError: the directory already holds a probe set, or cannot be written.
    """
    directory = Path(directory)
    check_out_dir(directory, "to", error=MeasurementError)
    if (directory / MANIFEST).exists() or (directory / PROBE_SET).exists():
        raise MeasurementError(f"{directory} already holds a probe set ({MANIFEST}); choose an empty directory",
                               field="to")
    from ._analytic import analytic_layers

    rows = []
    files: dict[str, FileContent] = {}
    exported: list[str] = []

    def export(probe: Probe, path: str) -> None:
        _export_onnx(probe, Path(path))
        exported.append(probe.id)
        if progress:
            progress(len(exported), len(probes))

    for p in probes:
        onnx_rel, spec_rel = f"onnx/{p.id}.onnx", f"specs/{p.id}.json"
        files[onnx_rel] = functools.partial(export, p)
        files[spec_rel] = (p.spec.to_json(indent=2) + "\n").encode()
        ops = analytic_layers(p.spec, p.input_shape, p.num_classes)
        rows.append({"probe_id": p.id, "family": p.family, "input_shape": "x".join(map(str, p.input_shape)),
                     "num_classes": p.num_classes, "macs": sum(op.macs for op in ops), "layers": len(ops),
                     "onnx": onnx_rel, "spec": spec_rel, "latency_ms": "", "energy_uj": ""})
    manifest = io.StringIO(newline="")
    w = csv.DictWriter(manifest, fieldnames=MANIFEST_COLUMNS)
    w.writeheader()
    w.writerows(rows)
    reference = {r["probe_id"]: {k: r[k] for k in ("family", "input_shape", "num_classes", "spec")} for r in rows}
    files[MANIFEST] = manifest.getvalue().encode()
    files[PROBE_SET] = (json.dumps({"probes": reference}, indent=1) + "\n").encode()
    files["README.txt"] = _README.encode()
    # All or nothing: a full disk or a vanished directory leaves no half probe set behind.
    write_files(directory, files, "to", error=MeasurementError)
    return directory / MANIFEST


_README = """Probe networks for fitting a lightnas device profile.

1. Time every network in onnx/ on your device with the runtime you deploy (onnxruntime, TFLite
   after conversion, TensorRT, ...): batch 1, the input shape of its row in probes.csv. Report a
   low percentile or the median of many runs after a warm-up, in milliseconds.
2. Fill the latency_ms column of probes.csv (and energy_uj, if you measured energy per inference
   for every network; leave it empty otherwise).
3. nas hardware fit NAME --measurements probes.csv

specs/ holds every network as a lightnas ArchSpec (JSON).
"""


def _export_onnx(probe: Probe, path: Path) -> None:
    from search_spaces import build_model

    from .._onnx import write_onnx

    write_onnx(build_model(probe.spec, probe.input_shape, probe.num_classes), probe.input_shape, path,
               dynamic_batch=False)


@dataclass(frozen=True)
class ProbeMeasurement:
    """A probe network and what the user measured for it."""

    probe_id: str
    spec: ArchSpec
    input_shape: tuple[int, int, int]
    num_classes: int
    latency_ms: float
    energy_uj: float | None


#: What a measurement may be: milliseconds per inference (1 ns to about 17 minutes) and microjoules
#: per inference (1 pJ to 1 kJ). Outside, a number is a typo or a unit mistake, and the fit's
#: logarithms and products overflow (1e308, 1e-320).
MEASURED_RANGE = {"latency_ms": (1e-6, 1e6), "energy_uj": (1e-6, 1e9)}
#: Largest channel count, spatial size, kernel, stride or group count of a lookup table's layer.
MAX_LUT_DIM = 65_536


def _number(text: str, where: str, field: str, *, allow_zero: bool = False) -> float:
    shown = repr(text) if len(text) <= 40 else f"{text[:20]!r}... ({len(text):,} characters)"
    low, high = MEASURED_RANGE.get(field, (0.0, math.inf))
    accepted = f"accepted: a number from {low:g} to {high:g}"
    try:
        v = float(text)
    except ValueError:
        raise MeasurementError(f"{where}: {field} {shown} is not a number; {accepted}") from None
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise MeasurementError(f"{where}: {field} must be a positive finite number, got {shown}; {accepted}")
    if not low <= v <= high and not (v == 0 and allow_zero):
        raise MeasurementError(f"{where}: {field} {shown} is out of range; {accepted}")
    return v


#: Largest measurement file (a probe manifest of 2,000 probes is about 200 KB; a lookup table of
#: 100,000 layers about 5 MB) and largest probe set or probe spec read beside it.
MAX_MEASUREMENT_BYTES = 64 << 20
MAX_PROBE_FILE_BYTES = 16 << 20


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    text = read_user_text(path, "measurements", MAX_MEASUREMENT_BYTES, error=MeasurementError,
                          accepted="a CSV text file")
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        rows = list(reader)
        header = [h.strip() for h in (reader.fieldnames or [])]
    except csv.Error as e:
        raise MeasurementError(f"{path} is not a CSV text file ({e})", field="measurements") from None
    rows = [{(k or "").strip(): (v or "").strip() if isinstance(v, str) else "" for k, v in r.items()} for r in rows]
    return header, rows


def measurement_kind(path: Path) -> str:
    """``probes`` (a filled probe manifest) or ``lut`` (a per-layer lookup table), by the header.

    Raises:
        MeasurementError: unreadable, or neither header.
    """
    header, _ = _read_csv(path)
    if "probe_id" in header and "latency_ms" in header:
        return "probes"
    if set(LUT_COLUMNS) <= set(header):
        return "lut"
    raise MeasurementError(f"{path}: expected a filled {MANIFEST} (columns probe_id, latency_ms) or "
                           f"a per-layer lookup table (columns {', '.join(LUT_COLUMNS)}); got columns "
                           f"{', '.join(header) or 'none'}", field="measurements")


def read_probe_measurements(path: Path, probes_dir: Path | None = None, *, allow_missing: bool = False
                            ) -> list[ProbeMeasurement]:
    """The timed probes of a filled manifest, checked against the probe set it belongs to (the
    :data:`PROBE_SET` in ``probes_dir``, by default the measurement file's directory).

    Raises:
        MeasurementError: a probe of the set without a row or a latency (unless ``allow_missing``),
            an unknown or repeated probe id, a latency or energy that is not a positive finite
            number, energy given for some probes only, or a probe set that cannot be read.
    """
    path = Path(path)
    probes_dir = Path(probes_dir) if probes_dir is not None else path.parent
    header, rows = _read_csv(path)
    for col in ("probe_id", "latency_ms"):
        if col not in header:
            raise MeasurementError(f"{path}: no {col!r} column", field="measurements")
    known = _probe_set(probes_dir)
    seen: dict[str, int] = {}
    out = []
    for i, r in enumerate(rows, start=2):
        where = f"{path.name} line {i}"
        pid = r.get("probe_id", "")
        if pid not in known:
            raise MeasurementError(f"{where}: unknown probe id {pid!r}; the probe set in {probes_dir} has "
                                   f"{_id_range(list(known))}")
        if pid in seen:
            raise MeasurementError(f"{where}: probe {pid} repeated (first on line {seen[pid]})")
        seen[pid] = i
        lat_text = r.get("latency_ms", "")
        if not lat_text:
            if allow_missing:
                continue
            raise MeasurementError(f"{where}: probe {pid} has no latency_ms; time every probe, or pass "
                                   "--allow-missing to fit without it")
        lat = _number(lat_text, where, "latency_ms")
        en_text = r.get("energy_uj", "")
        energy = _number(en_text, where, "energy_uj") if en_text else None
        meta = known[pid]
        spec = _read_spec(probes_dir / meta["spec"], pid)
        try:
            shape = tuple(int(v) for v in meta["input_shape"].split("x"))
            classes = int(meta["num_classes"])
        except (KeyError, ValueError):
            raise MeasurementError(f"{probes_dir / MANIFEST}: probe {pid} has a bad input_shape or "
                                   "num_classes", field="probes") from None
        out.append(ProbeMeasurement(pid, spec, shape, classes, lat, energy))  # type: ignore[arg-type]
    missing = [p for p in known if p not in seen]
    if missing and not allow_missing:
        raise MeasurementError(f"{path} lacks {len(missing)} of the {len(known)} probes "
                               f"({_id_range(missing)}); time every probe, or pass --allow-missing",
                               field="measurements")
    with_energy = sum(m.energy_uj is not None for m in out)
    if 0 < with_energy < len(out):
        raise MeasurementError(f"energy_uj is given for {with_energy} of {len(out)} probes; give it "
                               "for all or for none", field="measurements")
    if len(out) < MIN_MEASUREMENTS:
        raise MeasurementError(f"{len(out)} timed probes; the model needs at least "
                               f"{MIN_MEASUREMENTS}", field="measurements")
    return out


#: Fewest timed networks a profile is fitted from.
MIN_MEASUREMENTS = 8


def _probe_set(probes_dir: Path) -> dict[str, dict[str, str]]:
    """The probes 'nas hardware probe' wrote to ``probes_dir`` (its :data:`PROBE_SET`)."""
    path = probes_dir / PROBE_SET
    try:
        text = read_user_text(path, "probes", MAX_PROBE_FILE_BYTES, error=MeasurementError,
                              accepted="the probe set 'nas hardware probe --to' wrote")
    except MeasurementError as e:
        if "cannot read" not in str(e):
            raise
        raise MeasurementError(f"{e.message}; accepted: the directory 'nas hardware probe --to' wrote",
                               field=e.field) from None
    try:
        doc = json.loads(text)
        probes = doc["probes"]
        if not isinstance(probes, dict) or not all(isinstance(v, dict) for v in probes.values()):
            raise ValueError("not a mapping of probes")
        return {str(k): {f: str(v.get(f, "")) for f in ("family", "input_shape", "num_classes", "spec")}
                for k, v in probes.items()}
    except RecursionError:
        raise MeasurementError(f"{path} is JSON nested too deeply to be a probe set of 'nas hardware "
                               "probe'", field="probes") from None
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise MeasurementError(f"{path} is not a probe set of 'nas hardware probe' ({e})", field="probes") from None


def _id_range(ids: list[str]) -> str:
    if not ids:
        return "no probes"
    shown = ", ".join(ids[:5]) + (", ..." if len(ids) > 5 else "")
    return f"{len(ids)} probe(s): {shown}"


def _read_spec(path: Path, pid: str) -> ArchSpec:
    text = read_user_text(path, "probes", MAX_PROBE_FILE_BYTES, what=f"the spec of probe {pid}", error=MeasurementError,
                          accepted="an ArchSpec JSON file as 'nas hardware probe' wrote it")
    try:
        return ArchSpec.from_json(text)
    except RecursionError:
        raise MeasurementError(f"the spec of probe {pid} ({path}) is JSON nested too deeply", field="probes") from None
    except SpecError as e:
        raise MeasurementError(f"the spec of probe {pid} ({path}) is invalid: {e}", field="probes") from None


def read_lut(path: Path) -> list[tuple[Layer, float]]:
    """The rows of a per-layer lookup table as ``(layer, latency_ms)``.

    Columns :data:`LUT_COLUMNS`: ``operator`` (one of ``conv``, ``conv1x1``, ``dwconv``,
    ``gconv``, ``linear``, ``pool``, ``add``), input channels, input height and width, output
    channels, kernel, stride, groups, latency. Linear layers: ``cin`` inputs, ``cout`` outputs,
    ``h = w = kernel = stride = groups = 1``. Pooling: global unless ``kernel`` is smaller than
    the input.

    Raises:
        MeasurementError: a missing column, an unknown operator, a non-integer or non-positive
            shape, a latency that is not a positive finite number, a repeated signature.
    """
    header, rows = _read_csv(path)
    lacking = [c for c in LUT_COLUMNS if c not in header]
    if lacking:
        raise MeasurementError(f"{path}: lookup table without column(s) {', '.join(lacking)}", field="measurements")
    ops = tuple(c for c in OP_CLASSES if c != "lowrank")
    out: list[tuple[Layer, float]] = []
    seen: dict[str, int] = {}
    for i, r in enumerate(rows, start=2):
        where = f"{Path(path).name} line {i}"
        op = r["operator"]
        if op not in ops:
            raise MeasurementError(f"{where}: unknown operator {op!r}; accepted: {', '.join(ops)}")
        dims = {}
        for c in ("cin", "h", "w", "cout", "kernel", "stride", "groups"):
            text = r[c] if len(r[c]) <= 40 else f"{r[c][:20]}... ({len(r[c]):,} characters)"
            try:
                dims[c] = int(r[c]) if len(r[c]) <= 40 else MAX_LUT_DIM + 1
            except ValueError:
                raise MeasurementError(f"{where}: {c} {text!r} is not an integer") from None
            if not 1 <= dims[c] <= MAX_LUT_DIM:
                raise MeasurementError(f"{where}: {c} {text} is out of range; accepted: an integer from 1 to "
                                       f"{MAX_LUT_DIM:,}")
        lat = _number(r["latency_ms"], where, "latency_ms")
        layer = _lut_layer(op, dims, where)
        sig = layer.signature()
        if sig in seen:
            raise MeasurementError(f"{where}: layer {sig} repeated (first on line {seen[sig]})")
        seen[sig] = i
        out.append((layer, lat))
    if len(out) < MIN_MEASUREMENTS:
        raise MeasurementError(f"{len(out)} layers in the lookup table; the model needs at least "
                               f"{MIN_MEASUREMENTS}", field="measurements")
    return out


def _lut_layer(op: str, d: dict[str, int], where: str) -> Layer:
    cin, h, w, cout, k, s, g = d["cin"], d["h"], d["w"], d["cout"], d["kernel"], d["stride"], d["groups"]
    if op == "linear":
        return linear_layer(cin, cout)
    if op in ("pool", "add"):
        if op == "add":
            return add_layer(cin, h, w)
        if k >= h and k >= w:
            return pool_layer(cin, h, w)
        return pool_layer(cin, h, w, (h - k) // s + 1, (w - k) // s + 1, kernel=k, stride=s)
    if cin % g or cout % g:
        raise MeasurementError(f"{where}: groups {g} must divide cin {cin} and cout {cout}")
    if op == "dwconv" and not g == cin == cout:
        raise MeasurementError(f"{where}: a dwconv has groups == cin == cout, got {g}, {cin}, {cout}")
    if op == "gconv" and (g == 1 or g == cin == cout):
        raise MeasurementError(f"{where}: a gconv has 1 < groups, and is not depthwise")
    if op in ("conv", "conv1x1") and g != 1:
        raise MeasurementError(f"{where}: a {op} has groups 1 (use gconv or dwconv), got {g}")
    if op == "conv1x1" and k != 1:
        raise MeasurementError(f"{where}: a conv1x1 has kernel 1, got {k}")
    return conv_layer(cin, cout, h, w, k, s, g, op=op)


# ------------------------------------------------------------------------------ fitting a profile
@dataclass(frozen=True)
class DeviceFit:
    """A profile fitted to a user's measurements, with its cross-validation."""

    profile: DeviceProfile
    n: int
    cv_tau: float
    cv_median_abs_ln_error: float
    fit_median_abs_ln_error: float
    kind: str


#: Dynamic energy per MAC and per byte moved by data type, when it is not measured: Horowitz,
#: "Computing's energy problem", ISSCC 2014, 45 nm (multiply + add; 32-bit DRAM access 640 pJ).
DYNAMIC_PJ = {"float32": (4.6, 160.0), "float16": (1.5, 160.0), "bfloat16": (1.5, 160.0), "int8": (0.23, 160.0)}


def board_power(nets: list[list[Layer]], latency_ms: list[float], energy_uj: list[float], *, pj_per_mac: float,
                pj_per_byte: float, bytes_per_element: int) -> float:
    """The board's power (W) that, with the given dynamic energy, explains measured energies:
    the median over networks of ``(energy - dynamic energy) / latency`` (robust to a few bad
    readings). What a meter on the supply sees is mostly the board's static and idle draw over
    the run time; the dynamic part of small networks is a fraction of a percent of it."""
    import numpy as np

    ratios = []
    for net, t, e in zip(nets, latency_ms, energy_uj, strict=True):
        macs = sum(la.macs for la in net)
        moved = sum((la.params + la.in_elems + la.out_elems) * bytes_per_element for la in net)
        dynamic_uj = (macs * pj_per_mac + moved * pj_per_byte) * 1e-6
        ratios.append(max(e - dynamic_uj, 0.0) / (t * 1e3))  # uJ / (ms x 1e3) = W
    return float(np.median(ratios))


def fit_device_profile(name: str, nets: list[list[Layer]], latency_ms: list[float], *, kind: str, source: str,
                       energy_uj: list[float] | None = None, dtype: str = "float32", runtime: str = "",
                       description: str = "", folds: int = 5, lut: dict[str, float] | None = None) -> DeviceFit:
    """Fit the operator-level model (and, given energy, the energy terms) to measured networks or
    layers, cross-validate it, and make it a named profile.

    Args:
        nets: the layers of every measured network (one layer each for a lookup table).
        kind: ``probes`` or ``lut`` (what the measurements are, for the profile's record).
        source: where the measurements come from (a path), for the profile's sources.
        lut: for a lookup table, signature -> milliseconds, kept in the profile.
    """
    import datetime as dt

    from ._devices import DTYPE_BYTES, Validation
    from ._opmodel import cross_validate, fit_opmodel

    bpe = DTYPE_BYTES[dtype]
    try:
        fit = fit_opmodel(nets, latency_ms, bytes_per_element=bpe)
        cv = cross_validate(nets, latency_ms, folds=folds, bytes_per_element=bpe)
    except MeasurementError:
        raise
    except (OverflowError, FloatingPointError, ArithmeticError, ValueError) as e:  # numbers no model fits
        raise MeasurementError(f"{source}: the measurements cannot be fitted ({type(e).__name__}: "
                               f"{' '.join(str(e).split())[:120]}); accepted: latencies from "
                               f"{MEASURED_RANGE['latency_ms'][0]:g} to {MEASURED_RANGE['latency_ms'][1]:g} ms of "
                               "the networks as timed", field="measurements") from None
    when = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    what = "probe networks" if kind == "probes" else "layers of a per-layer lookup table"
    how = (f"Fitted by 'nas hardware fit' on {when} to {len(nets)} {what} measured by the user ({source}): "
           "operator-level model (objectives/cost/_opmodel.py), robust regression in log space")
    validation = [Validation(data=f"{cv.folds}-fold cross-validation on the {len(nets)} {what}",
                             source=f"measured by the user: {source}",
                             n_fit=len(nets) - len(nets) // cv.folds, n_test=len(nets), tau=cv.tau,
                             median_abs_ln_error=cv.median_abs_ln_error,
                             note="each measurement predicted by a model fitted without it")]
    pj_mac, pj_byte = DYNAMIC_PJ[dtype]
    dynamic_source = (f"Not measured: Horowitz, ISSCC 2014, 45 nm ({dtype} multiply + add {pj_mac} pJ; 32-bit DRAM "
                      f"access 640 pJ = {pj_byte} pJ/byte)")
    power = 0.0
    energy_source = "Not measured: no energy_uj column filled, so only the dynamic part is counted"
    if energy_uj is not None:
        power = board_power(nets, list(latency_ms), energy_uj, pj_per_mac=pj_mac, pj_per_byte=pj_byte,
                            bytes_per_element=bpe)
        energy_source = (f"Fitted on {when} to the energy_uj of {len(nets)} {what} ({source}): median over them of "
                         "(energy - dynamic energy) / latency")
    model = fit.model
    profile = DeviceProfile(
        name=name, description=description or f"Fitted to {len(nets)} measured {what} ({when})",
        runtime=runtime or "not stated by the user", dtype=dtype, **model.roofline_numbers(),
        energy_pj_per_mac=pj_mac, energy_pj_per_byte=pj_byte, memory_bytes=float(2**32),
        board_power_w=power, opmodel=model, lut=dict(lut or {}), validation=validation,
        sources={**model.roofline_sources(how),
                 "energy_pj_per_mac": dynamic_source, "energy_pj_per_byte": dynamic_source,
                 "board_power_w": energy_source,
                 "memory_bytes": "Not measured: 4 GiB placeholder (only shown, never used in costs)",
                 **({"lut": f"Measured by the user: {source}"} if lut else {})},
    )
    return DeviceFit(profile, len(nets), cv.tau, cv.median_abs_ln_error, fit.median_abs_ln_error, kind)


def fit_measurements(name: str, path: Path, *, probes_dir: Path | None = None, allow_missing: bool = False,
                     dtype: str = "float32", runtime: str = "", folds: int = 5) -> DeviceFit:
    """:func:`fit_device_profile` from a measurement file: a filled probe manifest or a per-layer
    lookup table (told apart by their columns, :func:`measurement_kind`).

    Raises:
        MeasurementError: a file that cannot be used (one line: which row, which field).
    """
    from ._analytic import analytic_layers
    from ._devices import DTYPE_BYTES
    from ._opmodel import layers_from_ops

    if dtype not in DTYPE_BYTES:
        raise MeasurementError(f"got {dtype!r}, accepted: {', '.join(DTYPE_BYTES)}", field="dtype")
    path = Path(path)
    kind = measurement_kind(path)
    if kind == "probes":
        ms = read_probe_measurements(path, probes_dir, allow_missing=allow_missing)
        nets = [layers_from_ops(analytic_layers(m.spec, m.input_shape, m.num_classes)) for m in ms]
        energy = [m.energy_uj for m in ms]
        return fit_device_profile(name, nets, [m.latency_ms for m in ms], kind=kind, source=str(path),
                                  energy_uj=energy if all(e is not None for e in energy) else None,  # type: ignore[arg-type]
                                  dtype=dtype, runtime=runtime, folds=folds)
    rows = read_lut(path)
    return fit_device_profile(name, [[la] for la, _ in rows], [ms for _, ms in rows], kind=kind, source=str(path),
                              dtype=dtype, runtime=runtime, folds=folds,
                              lut={la.signature(): ms for la, ms in rows})
