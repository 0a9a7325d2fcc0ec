"""Resource budgets and the FS-DNN scalar hardware cost.

A budget is text such as ``"flops<=5M params<=100k latency_ms<=3 peak_mem<=256KiB"``:
conditions separated by spaces or commas, each ``resource op number[suffix]``. Suffixes are SI
(``k`` 1e3, ``M`` 1e6, ``G`` 1e9, ``T`` 1e12) or binary (``Ki``, ``Mi``, ``Gi``, ``Ti``), and
byte resources may end in ``B`` (``256KiB``, ``2MB``). The same condition language, with lower
bounds allowed, is used by ``nas pareto --where`` (:func:`parse_conditions`).

FS-DNN (Li et al., Applied Intelligence 53, 2023) states the hardware demand of a network as
one objective; here it is ``hw_cost = sum_i w_i * resource_i / budget_i`` over the budgeted
resources, with ``w_i = 1/n`` unless given, so a network exactly at every limit has cost 1.
"""

from __future__ import annotations

import decimal
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from search_spaces import InputError

from ._cost import RESOURCES, RUNTIME_RESOURCES

__all__ = ["ALIASES", "Budget", "BudgetError", "Condition", "check_runtime_resources", "format_amount",
           "parse_budget", "parse_conditions", "resolve_resource"]

#: Short names accepted for resources.
ALIASES = {
    "mem_traffic": "mem_traffic_bytes",
    "traffic": "mem_traffic_bytes",
    "peak_mem": "peak_activation_bytes",
    "peak_activation": "peak_activation_bytes",
    "latency": "latency_ms",
    "energy": "energy_uj",
    "size": "weight_bytes",
    "ram": "ram_bytes",
    "flash": "flash_bytes",
}
BYTE_RESOURCES = {"weight_bytes", "activation_bytes", "mem_traffic_bytes", "peak_activation_bytes", "ram_bytes",
                  "flash_bytes"}
SUFFIXES = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
            "Ki": 1024.0, "Mi": 1024.0**2, "Gi": 1024.0**3, "Ti": 1024.0**4}
UPPER_OPS = ("<=", "<")
ALL_OPS = ("<=", "<", ">=", ">")
_COND = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=|==|=<|=>|<|>|=)\s*(.+)$")
_NUM = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)([A-Za-z]*)$")


class BudgetError(InputError):
    """A budget or filter expression is malformed; the message says what is accepted."""


@dataclass(frozen=True)
class Condition:
    """``name op value``; ``name`` is canonical (aliases resolved)."""

    name: str
    op: str
    value: float

    def holds(self, x: float) -> bool:
        return {"<=": x <= self.value, "<": x < self.value, ">=": x >= self.value, ">": x > self.value}[self.op]

    def __str__(self) -> str:
        return f"{self.name}{self.op}{self.value:g}"


def _defined(conditions: Iterable[Condition], totals: Mapping[str, float]) -> None:
    """Raise :class:`BudgetError` (one line) for a budgeted resource the costs do not have: ``ram_bytes`` and
    ``flash_bytes`` exist only for device profiles that name their runtime."""
    for c in conditions:
        if c.name not in totals:
            hint = " (ram and flash are defined for device profiles with a device runtime, e.g. cortex-m7)" \
                if c.name in ("ram_bytes", "flash_bytes") else ""
            raise BudgetError(f"{c.name}: not a cost on this device profile{hint}")


def check_runtime_resources(names: Sequence[str], prof: Any) -> None:
    """Raise ``BudgetError`` (one line) when ``names`` holds ``ram_bytes``/``flash_bytes`` and the profile
    names no device runtime for them."""
    wanted = [n for n in names if n in RUNTIME_RESOURCES]
    if wanted and prof.memory_runtime is None:
        from ._devices import list_devices

        with_runtime = [d for d in list_devices() if _has_runtime(d)]
        raise BudgetError(f"{wanted[0]}: device profile {prof.name!r} names no device runtime, so ram and flash "
                          f"are not defined for it; accepted: a profile with memory_runtime = \"tflm\" "
                          f"({', '.join(with_runtime) or 'none installed'}), e.g. --cost-device "
                          f"{with_runtime[0] if with_runtime else 'cortex-m7'}")


def _has_runtime(name: str) -> bool:
    from ._devices import get_device

    try:
        return get_device(name).memory_runtime is not None
    except Exception:  # noqa: BLE001 - a broken user profile is not a candidate
        return False


def format_amount(name: str, value: float, *, up: bool = False) -> str:
    """``value`` of resource ``name`` in the budget language, 4 significant digits: binary
    suffixes and ``B`` for bytes, SI suffixes otherwise, so that it parses back. ``up`` rounds
    up (a limit that admits ``value``), else to nearest.

    >>> format_amount("peak_activation_bytes", 65536), format_amount("flops", 1.5e6)
    ('64KiB', '1.5M')
    >>> format_amount("params", 12344), format_amount("params", 12344, up=True)
    ('12.34k', '12.35k')
    """
    units = ((("GiB", 1024.0**3), ("MiB", 1024.0**2), ("KiB", 1024.0), ("B", 1.0)) if name in BYTE_RESOURCES
             else (("G", 1e9), ("M", 1e6), ("k", 1e3), ("", 1.0)))
    unit, size = next(((u, s) for u, s in units if value >= s), units[-1])
    scaled = value / size
    if up and scaled > 0:
        step = 10.0 ** (math.floor(math.log10(scaled)) - 3)
        scaled = math.ceil(round(scaled / step, 6)) * step
    return f"{scaled:.4g}{unit}"


def resolve_resource(name: str, extra: Iterable[str] = ()) -> str:
    """Canonical resource name for ``name`` or an alias; raises :class:`BudgetError`."""
    canon = ALIASES.get(name, name)
    if canon in RESOURCES or canon in set(extra):
        return canon
    accepted = sorted(set(RESOURCES) | set(ALIASES) | set(extra))
    raise BudgetError(f"unknown resource {name!r}; accepted: {', '.join(accepted)}")


def _parse_number(text: str, name: str) -> float:
    m = _NUM.match(text.strip())
    if not m:
        raise BudgetError(f"{name}: {text!r} is not a number; write e.g. 5M, 100k, 256KiB, 0.5")
    num, suffix = m.groups()
    if suffix.endswith("B"):
        if name not in BYTE_RESOURCES:
            raise BudgetError(f"{name}: the byte unit 'B' only applies to {', '.join(sorted(BYTE_RESOURCES))}")
        suffix = suffix[:-1]
    if suffix not in SUFFIXES:
        raise BudgetError(f"{name}: unknown suffix {suffix!r} in {text!r}; accepted: "
                          "k, M, G, T (powers of 1000), Ki, Mi, Gi, Ti (powers of 1024), optional B for bytes")
    # In decimal, rounded once: "8.155k" is 8155 exactly (float(8.155) * 1000 is 8154.999...).
    try:
        value = float(decimal.Decimal(num) * decimal.Decimal(SUFFIXES[suffix]))
    except (decimal.Overflow, OverflowError):
        value = math.inf
    if not math.isfinite(value):
        raise BudgetError(f"{name}: {text!r} is not a finite number")
    return value


def parse_conditions(text: str, *, ops: tuple[str, ...] = ALL_OPS, extra: Iterable[str] = ()) -> list[Condition]:
    """Parse ``"a<=1M b>=0.9"`` into conditions on known resources (plus ``extra`` names).

    Raises:
        BudgetError: unknown name, operator or number; one line naming what is accepted.
    """
    if not isinstance(text, str) or not text.strip():
        raise BudgetError("empty expression; write e.g. 'flops<=5M params<=100k'")
    out = []
    compact = re.sub(r"\s*(<=|>=|=<|=>|==|<|>|=)\s*", r"\1", text.strip())
    for token in re.split(r"[,\s]+", compact):
        if not token:
            continue
        m = _COND.match(token)
        if not m:
            raise BudgetError(f"cannot read {token!r}; write resource<=value, e.g. flops<=5M")
        raw, op, rhs = m.groups()
        name = resolve_resource(raw, extra)
        if op not in ops:
            raise BudgetError(f"{raw}: operator {op!r} not accepted here; accepted: {', '.join(ops)}")
        out.append(Condition(name, op, _parse_number(rhs, name)))
    if not out:  # separators only, e.g. ","
        raise BudgetError(f"no condition in {text!r}; write e.g. 'flops<=5M params<=100k'")
    return out


@dataclass(frozen=True)
class Budget:
    """Upper limits on resources, with FS-DNN weights.

    Example:
        >>> b = parse_budget("flops<=5M peak_mem<=256KiB")
        >>> b.limits["peak_activation_bytes"]
        262144.0
    """

    conditions: tuple[Condition, ...]
    weights: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = [c.name for c in self.conditions]
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise BudgetError(f"resource given twice in the budget: {', '.join(dup)}")
        for c in self.conditions:
            if c.op not in UPPER_OPS:
                raise BudgetError(f"{c.name}: budgets are upper limits; accepted operators: <=, <")
            if c.value <= 0:
                raise BudgetError(f"{c.name}: a limit must be positive, got {c.value:g}")
        unknown = set(self.weights) - set(names)
        if unknown:
            raise BudgetError(f"weights for resources not in the budget: {', '.join(sorted(unknown))}")
        for k, w in self.weights.items():
            if not (isinstance(w, (int, float)) and math.isfinite(w) and w >= 0):
                raise BudgetError(f"weight of {k}: must be a non-negative number, got {w!r}")

    @property
    def limits(self) -> dict[str, float]:
        return {c.name: c.value for c in self.conditions}

    def weight(self, name: str) -> float:
        return float(self.weights.get(name, 1.0 / len(self.conditions)))

    def constraints(self, totals: Mapping[str, float]) -> dict[str, float]:
        """Optuna constraint values: ``value / limit - 1`` (feasible when <= 0; strict limits
        need ``< 0``, reported as a tiny positive value at equality)."""
        totals = getattr(totals, "totals", totals)  # a CostReport or its totals
        _defined(self.conditions, totals)
        out = {}
        for c in self.conditions:
            v = totals[c.name] / c.value - 1.0
            if c.op == "<" and v == 0.0:
                v = 1e-12
            out[c.name] = v
        return out

    def violations(self, totals: Mapping[str, float]) -> dict[str, float]:
        """Resources over their limit, with the relative excess (0.25 = 25 % over)."""
        return {k: v for k, v in self.constraints(totals).items() if v > 0}

    def check(self, report: Any) -> dict[str, float]:
        """Violations of a ``CostReport`` (or a mapping of totals); empty when feasible."""
        return self.violations(getattr(report, "totals", report))

    def feasible(self, report: Any) -> bool:
        return not self.check(report)

    def hw_cost(self, report: Any) -> float:
        """FS-DNN scalar: ``sum_i w_i * resource_i / budget_i``."""
        totals = getattr(report, "totals", report)
        _defined(self.conditions, totals)
        return float(sum(self.weight(c.name) * totals[c.name] / c.value for c in self.conditions))

    def __str__(self) -> str:
        return " ".join(str(c) for c in self.conditions)

    def to_dict(self) -> dict[str, Any]:
        return {"limits": [[c.name, c.op, c.value] for c in self.conditions], "weights": dict(self.weights)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Budget:
        return cls(tuple(Condition(n, op, float(v)) for n, op, v in d["limits"]), dict(d.get("weights", {})))


def parse_budget(text: str, weights: Mapping[str, float] | None = None) -> Budget:
    """Parse a budget; ``weights`` (resource or alias -> weight) set the FS-DNN weights.

    Raises:
        BudgetError: unknown resource, operator, suffix or number; a limit given twice.
    """
    conds = parse_conditions(text, ops=ALL_OPS)
    w = {resolve_resource(k): float(v) for k, v in (weights or {}).items()}
    return Budget(tuple(conds), w)
