"""Budget first: what a search space can reach under a budget, before anything is trained.

Three answers, all from the analytic cost model (no model built):

* :func:`space_minimum`: the exact minimum of every resource over a space, derived from its
  choices. Every resource is a sum (or, for peak memory, a max) over the segments a space
  assembles (stem, stages, head; ``SearchSpace.suggest``), and a stage's cost depends on the
  choices before it only through the width and spatial size entering it. So a dynamic
  programme over stages, with that width as the state, finds the minimum exactly (min-sum, and
  min-max for the peak: both obey Bellman's principle), while the space holds up to millions of
  architectures. The tests compare it with exhaustive enumeration of small spaces.
* :func:`space_share`: the share of the space within the whole budget, from uniform samples of
  every choice (what Optuna's RandomSampler draws), and the mean FLOPs of those within it.
* :func:`fit_space`: TinyNAS's search-space optimisation (Lin et al., "MCUNet: Tiny Deep
  Learning on IoT Devices", NeurIPS 2020, section 3.1): among scaled variants of a space (width
  multiplier, stem stride, depth cap), take the one whose architectures *within the budget*
  carry the most compute (largest mean FLOPs), a proxy for accuracy the paper shows to hold,
  among the variants of which at least :data:`USABLE_SHARE` lies within the budget.

Choices made here where the paper is silent: the usable share is 20 % (below it, four in five
samples are rejected and samplers spend most asks learning the boundary); the grid is width
multipliers 1, 0.75, 0.5, 0.25, stem stride as given or 2, and depth caps as given, 2 or 1;
variants are screened on 300 samples each, and the chosen one is measured again on 2,000. The
input resolution, TinyNAS's other knob, is tried only where the user allows the images to be
resized (``fit_resolution``): short sides of 3/4, 1/2, 3/8 and 1/4 of the input's, at least 8 px.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from search_spaces import ArchSpec, SearchSpace, enumerate_choices, get_space

from ._analytic import block_ops, head_ops, stem_ops
from ._budget import Budget
from ._cost import RUNTIME_RESOURCES, SEGMENT_FIELDS, estimate_cost, runtime_totals, segment_terms, totals_from_terms
from ._devices import DeviceProfile, get_device
from ._tflm import block_graph, head_graph, segment_parts, stem_graph

__all__ = ["FIT_SAMPLES", "SHARE_SAMPLES", "USABLE_SHARE", "WARN_SHARE", "Feasibility", "SpaceFit", "assess",
           "below_minimum", "fit_space", "fit_subspace", "most_scaled", "resized_shape", "smaller_inputs",
           "space_minimum", "sample_within", "space_share"]

#: A space of which less than this share lies within the budget is fitted (when fitting is on),
#: and a fitted variant must reach it (else the variant with the largest share is taken).
USABLE_SHARE = 0.20
#: Below this share a study is created with a warning.
WARN_SHARE = 0.01
#: Samples behind a reported share; samples per variant screened by :func:`fit_space`.
SHARE_SAMPLES = 2000
FIT_SAMPLES = 300

#: Which segment field each resource is an increasing function of (``objectives.cost._cost``).
_FIELD_OF = {"macs": "macs", "flops": "macs", "params": "params", "weight_bytes": "params",
             "activation_bytes": "out_elems", "mem_traffic_bytes": "traffic",
             "peak_activation_bytes": "live", "latency_ms": "latency_ms", "energy_uj": "energy_uj",
             "flash_bytes": "tfl_flash", "ram_bytes": "tfl_tail"}
#: The segment fields of the cost model, and two of the TFLM artifact (``objectives.cost._tflm.segment_parts``;
#: zero for a profile without a device runtime): the file's and the persistent arena's parts.
FIELDS = (*SEGMENT_FIELDS, "tfl_flash", "tfl_tail")
_MAX_FIELD = FIELDS.index("live")


def _profile(device: str | DeviceProfile) -> DeviceProfile:
    return device if isinstance(device, DeviceProfile) else get_device(device)


def _combine(f: int, a: float, b: float) -> float:
    return max(a, b) if f == _MAX_FIELD else a + b


def _add(a: tuple[float, ...], b: tuple[float, ...]) -> tuple[float, ...]:
    """Terms of two segments run one after the other (sums, and the max of the live sets)."""
    return (a[0] + b[0], a[1] + b[1], a[2] + b[2], a[3] + b[3], a[4] + b[4], a[5] + b[5], max(a[6], b[6]),
            a[7] + b[7], a[8] + b[8])


class _Coster:
    """Segment terms of stems, blocks and heads on one device, memoised for one assessment
    (samples of a space share most of their blocks)."""

    def __init__(self, prof: DeviceProfile) -> None:
        self.prof = prof
        self.memo: dict[Any, Any] = {}
        self.runtime = prof.memory_runtime == "tflm"

    def _terms(self, ops: Any, graph: Any) -> tuple[float, ...]:
        """The segment's cost-model terms and its TFLM parts (``graph()``: its converted operations)."""
        return (*segment_terms(ops, self.prof), *(segment_parts(graph()) if self.runtime else (0.0, 0.0)))

    def block(self, cin: int, b: Any, hw: tuple[int, int]) -> tuple[tuple[float, ...], int, tuple[int, int]]:
        key = (cin, b, hw)
        hit = self.memo.get(key)
        if hit is None:
            ops, ohw = block_ops(0, cin, b, hw)
            hit = self.memo[key] = (self._terms(ops, lambda: block_graph(cin, b, hw)[0]), b.out_channels, ohw)
        return hit  # type: ignore[no-any-return]

    def stage(self, cin: int, stage: Any, hw: tuple[int, int]) -> tuple[tuple[float, ...], int, tuple[int, int]]:
        terms, cin, hw = self.block(cin, stage.blocks[0], hw)
        for b in stage.blocks[1:]:
            more, cin, hw = self.block(cin, b, hw)
            terms = _add(terms, more)
        return terms, cin, hw

    def stem(self, stem: Any, shape: tuple[int, int, int]) -> tuple[tuple[float, ...], tuple[int, int]]:
        key = ("stem", stem, shape)
        hit = self.memo.get(key)
        if hit is None:
            ops, hw = stem_ops(stem, shape)
            hit = self.memo[key] = (self._terms(ops, lambda: stem_graph(stem, shape)[0]), hw)
        return hit  # type: ignore[no-any-return]

    def head(self, head: Any, cin: int, hw: tuple[int, int], num_classes: int) -> tuple[float, ...]:
        key = ("head", head, cin, hw, num_classes)
        hit = self.memo.get(key)
        if hit is None:
            hit = self.memo[key] = self._terms(head_ops(head, cin, hw, num_classes),
                                               lambda: head_graph(head, cin, hw, num_classes))
        return hit  # type: ignore[no-any-return]

    def totals(self, arch: ArchSpec, shape: tuple[int, int, int], num_classes: int) -> dict[str, float]:
        """``estimate_cost(arch, ...).totals`` (latency and energy to rounding), from segments."""
        terms, hw = self.stem(arch.stem, shape)
        cin = arch.stem.out_channels
        for stage in arch.stages:
            more, cin, hw = self.stage(cin, stage, hw)
            terms = _add(terms, more)
        terms = _add(terms, self.head(arch.head, cin, hw, num_classes))
        totals = totals_from_terms(terms[:len(SEGMENT_FIELDS)], shape[0] * shape[1] * shape[2], self.prof)
        totals.update(runtime_totals(arch, shape, num_classes, self.prof))
        return totals


def space_minimum(space: SearchSpace, num_classes: int, device: str | DeviceProfile = "rpi4",
                  resources: Sequence[str] | None = None) -> dict[str, tuple[float, ArchSpec]]:
    """The exact minimum of each resource over ``space`` and an architecture that attains it.

    Returns:
        ``{resource: (minimum, arch)}`` for ``resources`` (default: every resource).

    Example:
        >>> space = get_space("plain", input_shape=(1, 8, 8), max_depth=1)
        >>> value, arch = space_minimum(space, 10)["params"]
        >>> value == estimate_cost(arch, (1, 8, 8), 10)["params"]
        True
    """
    prof = _profile(device)
    coster = _Coster(prof)
    wanted = list(resources) if resources is not None else list(_FIELD_OF)
    n = len(FIELDS)
    # best[f] = (value, params chain) over complete networks, per segment field f.
    best: list[tuple[float, Any] | None] = [None] * n
    stage_cache: dict[Any, list[tuple[dict[str, Any], tuple[float, ...], int, tuple[int, int]]]] = {}
    for g_params, g in enumerate_choices(space.suggest_globals):
        stem = space.stem(g)
        t0, hw = coster.stem(stem, space.input_shape)
        # state (width, spatial) -> per field (value so far, params chain)
        states: dict[tuple[int, tuple[int, int]], list[tuple[float, Any]]] = {
            (stem.out_channels, hw): [(t0[f], (None, g_params)) for f in range(n)]}
        gkey = tuple(sorted(g.items()))
        for i in range(len(space.stage_strides)):
            nxt: dict[tuple[int, tuple[int, int]], list[tuple[float, Any]]] = {}
            for (cin, shw), vals in states.items():
                key = (i, gkey, cin, shw)
                options = stage_cache.get(key)
                if options is None:
                    options = []
                    for p, stage in enumerate_choices(
                            lambda t, i=i, cin=cin, g=g: space.suggest_stage(t, i, g, cin)):  # type: ignore[misc]
                        options.append((p, *coster.stage(cin, stage, shw)))
                    stage_cache[key] = options
                for p, terms, cout, ohw in options:
                    cur = nxt.get((cout, ohw))
                    if cur is None:
                        cur = nxt[(cout, ohw)] = [(math.inf, None)] * n
                    for f in range(n):
                        v = _combine(f, vals[f][0], terms[f])
                        if v < cur[f][0]:
                            cur[f] = (v, (vals[f][1], p))
            states = nxt
        for (cin, shw), vals in states.items():
            for p, head in enumerate_choices(lambda t, cin=cin, g=g: space.suggest_head(t, g, cin)):  # type: ignore[misc]
                terms = coster.head(head, cin, shw, num_classes)
                for f in range(n):
                    v = _combine(f, vals[f][0], terms[f])
                    cur_best = best[f]
                    if cur_best is None or v < cur_best[0]:
                        best[f] = (v, (vals[f][1], p))
    out: dict[str, tuple[float, ArchSpec]] = {}
    archs: dict[int, ArchSpec] = {}

    def arch_of(f: int) -> ArchSpec:
        if f not in archs:
            entry = best[f]
            assert entry is not None
            archs[f] = space.check_params(_flatten(entry[1]))
        return archs[f]

    for r in wanted:
        if r in RUNTIME_RESOURCES and not coster.runtime:
            continue  # the profile defines no ram/flash (studies refuse such budgets before this)
        if r == "ram_bytes":
            # Not a sum or a max over segments (the planner lays out the whole graph): the smallest ram of
            # the architectures that minimise a segment field, the live set and the persistent part among them.
            ram = min((estimate_cost(arch_of(f), space.input_shape, num_classes, prof)[r], f) for f in range(n))
            out[r] = (ram[0], arch_of(ram[1]))
            continue
        arch = arch_of(FIELDS.index(_FIELD_OF[r]))
        out[r] = (estimate_cost(arch, space.input_shape, num_classes, prof)[r], arch)
    return out


def _flatten(chain: Any) -> dict[str, Any]:
    params: dict[str, Any] = {}
    parts = []
    while chain is not None:
        chain, p = chain
        parts.append(p)
    for p in reversed(parts):
        params.update(p)
    return params


@dataclass(frozen=True)
class Share:
    """Of ``samples`` uniform draws, the share within the budget and their mean FLOPs."""

    share: float
    samples: int
    mean_flops: float
    seconds: float


def space_share(space: SearchSpace, budget: Budget, num_classes: int, device: str | DeviceProfile = "rpi4", *,
                samples: int = SHARE_SAMPLES, seed: int = 0) -> Share:
    """Share of ``space`` within every limit of ``budget``, from uniform samples of its choices."""
    coster = _Coster(_profile(device))
    rng = random.Random(seed)
    t0 = time.perf_counter()
    within, flops = 0, 0.0
    for _ in range(samples):
        totals = coster.totals(space.sample(rng), space.input_shape, num_classes)
        if not budget.violations(totals):
            within += 1
            flops += totals["flops"]
    return Share(within / samples, samples, flops / within if within else 0.0, time.perf_counter() - t0)


def sample_within(space: SearchSpace, budget: Budget | None, num_classes: int, n: int, *, seed: int = 0,
                  tries_per_arch: int = 200) -> list[ArchSpec]:
    """Up to ``n`` distinct architectures of ``space`` drawn uniformly (seeded) that are within
    ``budget`` (every one when ``None``); fewer when ``n * tries_per_arch`` draws do not find them."""
    coster = _Coster(_profile("rpi4"))
    rng = random.Random(seed)
    out: list[ArchSpec] = []
    seen: set[str] = set()
    for _ in range(n * tries_per_arch):
        arch = space.sample(rng)
        if arch.hash in seen:
            continue
        seen.add(arch.hash)
        if budget is None or not budget.violations(coster.totals(arch, space.input_shape, num_classes)):
            out.append(arch)
            if len(out) == n:
                break
    return out


def below_minimum(budget: Budget, minima: Mapping[str, float]) -> dict[str, float]:
    """The budgeted resources whose limit no architecture reaches: ``{resource: minimum}``."""
    out = {}
    for c in budget.conditions:
        if c.name in minima and not c.holds(minima[c.name]):
            out[c.name] = minima[c.name]
    return out


@dataclass
class Feasibility:
    """What a space can reach under a budget (see the module docstring)."""

    minima: dict[str, float]
    cheapest: dict[str, str]
    share: float
    samples: int
    mean_flops: float
    seconds: float
    #: Budgeted resources whose limit no architecture of the space reaches, with the minimum.
    below: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"minimum": dict(self.minima), "cheapest": dict(self.cheapest), "share_within_budget": self.share,
                "samples": self.samples, "mean_flops_within_budget": self.mean_flops,
                "seconds": round(self.seconds, 3)}


def assess(space: SearchSpace, budget: Budget, num_classes: int, device: str | DeviceProfile = "rpi4", *,
           samples: int = SHARE_SAMPLES, seed: int = 0) -> Feasibility:
    """Exact minima of the budgeted resources and the share of ``space`` within ``budget``."""
    t0 = time.perf_counter()
    resources = [c.name for c in budget.conditions]
    mins = space_minimum(space, num_classes, device, resources)
    share = space_share(space, budget, num_classes, device, samples=samples, seed=seed)
    minima = {r: v for r, (v, _) in mins.items()}
    return Feasibility(minima, {r: a.to_json() for r, (_, a) in mins.items()}, share.share, share.samples,
                       share.mean_flops, time.perf_counter() - t0, below_minimum(budget, minima))


@dataclass
class SpaceFit:
    """The outcome of :func:`fit_space`: the options (and input size) to use and what changed."""

    options: dict[str, Any]
    scaled: dict[str, tuple[Any, Any]]
    kept: dict[str, Any]
    share_before: float
    share_after: float
    mean_flops_after: float
    variants: int
    input_size: int | None = None
    #: The options fitting started from, when they were not the user's (:func:`fit_subspace`: a supernet's).
    options_before: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {"options": dict(self.options), "scaled": {k: list(v) for k, v in self.scaled.items()},
               "kept": dict(self.kept), "share_before": self.share_before, "share_after": self.share_after,
               "mean_flops_within_budget": self.mean_flops_after, "variants_screened": self.variants,
               "input_size": self.input_size}
        if self.options_before is not None:
            out["options_before"] = dict(self.options_before)
        return out


def resized_shape(shape: tuple[int, int, int], short_side: int) -> tuple[int, int, int]:
    """``(C, H, W)`` with the short side scaled to ``short_side``, aspect kept
    (``objectives.Dataset.resized``)."""
    c, h, w = shape
    m = min(h, w)
    return (c, max(1, round(h * short_side / m)), max(1, round(w * short_side / m)))


#: Input resolutions (as a share of the short side) that fitting may try when a user allows it.
RESOLUTIONS = (0.75, 0.5, 0.375, 0.25)


def smaller_inputs(shape: tuple[int, int, int], smallest: int = 8) -> list[int]:
    """Short sides :func:`fit_space` tries with ``resolutions``: fractions of the input's, >= 8 px."""
    m = min(shape[1:])
    return sorted({round(m * f) for f in RESOLUTIONS if smallest <= round(m * f) < m}, reverse=True)


#: Options whose presence means the user chose the widths: the width multiplier is then not varied.
_WIDTH_OPTIONS = ("width_mult", "widths", "stem_widths", "width_mults")
WIDTH_MULTS = (1.0, 0.75, 0.5, 0.25)


def _variants(space: SearchSpace, given: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Scaled variants of ``space`` (option overrides), the space as given first."""
    o = space.options
    fields = {f for f in type(o).__dataclass_fields__}  # type: ignore[attr-defined]
    mults = [o.width_mult] if any(k in given for k in _WIDTH_OPTIONS) else list(WIDTH_MULTS)  # type: ignore[attr-defined]
    strides: list[int | None] = [o.stem_stride]  # type: ignore[attr-defined]
    if "stem_stride" not in given and space.stem_stride != 2:  # type: ignore[attr-defined]
        strides.append(2)
    depths = [o.max_depth]  # type: ignore[attr-defined]
    if "max_depth" not in given and "max_depth" in fields:
        depths += [d for d in (2, 1) if o.min_depth <= d < o.max_depth]  # type: ignore[attr-defined]
    out = []
    for m in mults:
        for s in strides:
            for d in depths:
                v: dict[str, Any] = {}
                if m != o.width_mult:  # type: ignore[attr-defined]
                    v["width_mult"] = m
                if s != o.stem_stride:  # type: ignore[attr-defined]
                    v["stem_stride"] = s
                if d != o.max_depth:  # type: ignore[attr-defined]
                    v["max_depth"] = d
                out.append(v)
    return out


def fit_space(name: str, input_shape: tuple[int, int, int], options: Mapping[str, Any], budget: Budget,
              num_classes: int, device: str | DeviceProfile = "rpi4", *, seed: int = 0,
              samples: int = FIT_SAMPLES, resolutions: Sequence[int] = ()) -> SpaceFit:
    """The scaled variant of space ``name`` (with the user's ``options`` kept) that TinyNAS
    would choose for ``budget``: see the module docstring. ``resolutions``: smaller short sides
    of the input the variants may also use (TinyNAS's second knob; only where the user allows
    the images to be resized).

    Raises:
        SpaceError: bad options.
    """
    given = dict(options)
    base = get_space(name, input_shape=input_shape, **given)
    scored = []
    share_before = 0.0
    sizes: list[int | None] = [None, *resolutions]
    for size in sizes:
        shape = input_shape if size is None else resized_shape(input_shape, size)
        at = base if size is None else get_space(name, input_shape=shape, **given)
        for v in _variants(at, given):
            space = at if not v else get_space(name, input_shape=shape, **{**given, **v})
            s = space_share(space, budget, num_classes, device, samples=samples, seed=seed)
            if size is None and not v:
                share_before = s.share
            scored.append(((size, v), s))

    def changes(sv: tuple[int | None, dict[str, Any]]) -> int:
        return len(sv[1]) + (sv[0] is not None)

    usable = [(sv, s) for sv, s in scored if s.share >= USABLE_SHARE]
    if not any(s.share > 0 for _, s in scored):  # only rare architectures fit: the smallest variant
        size = min(resolutions) if resolutions else None
        shape = input_shape if size is None else resized_shape(input_shape, size)
        v = {k: val for k, val in most_scaled(name, shape, given).items() if k not in given}
        s = space_share(get_space(name, input_shape=shape, **{**given, **v}), budget, num_classes, device,
                        samples=samples, seed=seed)
    elif usable:  # TinyNAS: the most compute within the budget; fewer changes break ties
        (size, v), s = max(usable, key=lambda x: (x[1].mean_flops, -changes(x[0])))
    else:
        (size, v), s = max(scored, key=lambda x: (x[1].share, x[1].mean_flops, -changes(x[0])))
    defaults = base.options
    scaled: dict[str, tuple[Any, Any]] = {k: (getattr(defaults, k), val) for k, val in v.items()}
    if size is not None:
        scaled["input_size"] = (min(input_shape[1:]), size)
    return SpaceFit({**given, **v}, scaled, given, share_before, s.share, s.mean_flops, len(scored), size)


#: List options whose smaller values make a sub-space of a space (:func:`fit_subspace`): the width
#: choices (truncated together, like a width multiplier) and the other per-layer choices (together).
SUB_WIDTH_LISTS = ("widths", "stem_widths", "width_mults")
SUB_OTHER_LISTS = ("hidden", "kernels", "expansions", "rank_ratios")


def _keep(n: int, level: int, counts: Sequence[float]) -> int:
    """How many of ``n`` distinct values truncation ``level`` keeps (``counts``: as shares of ``n``, -1: one less)."""
    share = counts[level]
    return max(1, n - 1 if share < 0 else math.ceil(n * share))


def _truncated(values: Sequence[Any], keep: int) -> list[Any]:
    """``values`` without their largest, ``keep`` distinct ones left, in the order given."""
    kept = set(sorted(set(values))[:keep])
    out: list[Any] = []
    for v in values:
        if v in kept and v not in out:
            out.append(v)
    return out


#: Truncation levels of the width lists (all, one less, half, the smallest) and of the others (all,
#: one less, the smallest), as shares of their distinct values (-1: one less).
_WIDTH_LEVELS = (1.0, -1, 0.5, 0.0)
_OTHER_LEVELS = (1.0, -1, 0.0)


def _subspace_variants(space: SearchSpace) -> list[dict[str, Any]]:
    """Sub-spaces of ``space`` (option overrides; the space itself first) whose architectures are all
    architectures of ``space``: a lower depth cap (2, 1; not below ``min_depth``) and list choices
    truncated to their smaller values. Never the width multiplier, stem stride, stage count or
    input size: those change every architecture."""
    o = space.options
    fields = {f for f in type(o).__dataclass_fields__}  # type: ignore[attr-defined]
    depths = [o.max_depth] + [d for d in (2, 1) if o.min_depth <= d < o.max_depth]  # type: ignore[attr-defined]
    out: list[dict[str, Any]] = []
    for d in depths:
        for wl in range(len(_WIDTH_LEVELS)):
            for ol in range(len(_OTHER_LEVELS)):
                v: dict[str, Any] = {}
                if d != o.max_depth:  # type: ignore[attr-defined]
                    v["max_depth"] = d
                for names, levels, level in ((SUB_WIDTH_LISTS, _WIDTH_LEVELS, wl),
                                             (SUB_OTHER_LISTS, _OTHER_LEVELS, ol)):
                    for k in names:
                        if k in fields:
                            values = list(getattr(o, k))
                            cut = _truncated(values, _keep(len(set(values)), level, levels))
                            if cut != values:
                                v[k] = cut
                if v not in out:
                    out.append(v)
    return out


def fit_subspace(name: str, input_shape: tuple[int, int, int], options: Mapping[str, Any], budget: Budget,
                 num_classes: int, device: str | DeviceProfile = "rpi4", *, seed: int = 0,
                 samples: int = FIT_SAMPLES) -> SpaceFit:
    """:func:`fit_space` within space ``name`` with ``options``: the same TinyNAS rule (the most
    mean FLOPs within the budget among variants of which at least :data:`USABLE_SHARE` lies within
    it, fewer changed options breaking ties; else the largest share; else the smallest variant), over
    sub-spaces only (:func:`_subspace_variants`), so that every architecture of the result is one of
    the space's (a supernet of the space holds them all). ``SpaceFit.kept`` is empty and
    ``options_before`` holds ``options``.

    Raises:
        SpaceError: bad options.
    """
    given = dict(options)
    base = get_space(name, input_shape=input_shape, **given)
    scored = []
    for v in _subspace_variants(base):
        space = base if not v else get_space(name, input_shape=input_shape, **{**given, **v})
        scored.append((v, space_share(space, budget, num_classes, device, samples=samples, seed=seed)))
    share_before = scored[0][1].share
    usable = [(v, s) for v, s in scored if s.share >= USABLE_SHARE]
    if not any(s.share > 0 for _, s in scored):  # only rare architectures fit: the smallest sub-space
        v, s = scored[-1]  # the last variant made is the most narrowed (later ones repeat earlier ones)
    elif usable:
        v, s = max(usable, key=lambda x: (x[1].mean_flops, -len(x[0])))
    else:
        v, s = max(scored, key=lambda x: (x[1].share, x[1].mean_flops, -len(x[0])))
    defaults = base.options
    before = {k: list(val) if isinstance(val, tuple) else val for k, val in given.items()}
    scaled: dict[str, tuple[Any, Any]] = {}
    for k, val in v.items():
        old = getattr(defaults, k)
        scaled[k] = (list(old) if isinstance(old, tuple) else old, val)
    return SpaceFit({**before, **v}, scaled, {}, share_before, s.share, s.mean_flops, len(scored),
                    options_before=before)


def most_scaled(name: str, input_shape: tuple[int, int, int], options: Mapping[str, Any]) -> dict[str, Any]:
    """The options of the smallest variant :func:`fit_space` may pick (for what-would-fit advice)."""
    given = dict(options)
    base = get_space(name, input_shape=input_shape, **given)
    smallest = min(_variants(base, given), key=lambda v: (v.get("width_mult", base.options.width_mult),  # type: ignore[attr-defined]
                                                           -(v.get("stem_stride") or base.stem_stride),  # type: ignore[attr-defined]
                                                           v.get("max_depth", base.options.max_depth)))  # type: ignore[attr-defined]
    return {**given, **smallest}
