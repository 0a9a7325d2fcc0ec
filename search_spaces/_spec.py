"""``ArchSpec``: the frozen, JSON-serialisable description of a CNN.

Everything in lightnas passes this value around. Search spaces produce it, the cost model,
trainer, storage, refinement and export consume it. A spec is pure data: it names the block
type and every width explicitly (per block), so a pruned network with non-uniform widths is
just another spec.

Layout::

    ArchSpec
      stem:   Stem(out_channels, kernel, stride)
      stages: (Stage(blocks=(Block, ...)), ...)
      head:   Head(hidden, rank_ratio, dropout)
      act:    "relu" | "relu6"

Block types and the meaning of their widths:

============  ==================================================================  ==========
type          layers                                                              residual
============  ==================================================================  ==========
conv          k x k conv in->out (stride)                                         no
basic         k x k conv in->mid (stride), k x k conv mid->out                    yes
bottleneck    1x1 in->mid, k x k mid->mid2 (stride), 1x1 mid2->out                yes
inverted      1x1 in->mid (skipped when mid == in), depthwise k x k (stride),     when stride
              1x1 mid->out (MobileNetV2)                                          1, in == out
============  ==================================================================  ==========

``rank_ratio`` is the LightLayer rank as a fraction of the full rank of each dense convolution
in the block (depthwise convolutions stay dense); 1.0 means full layers.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

from ._blocks import WIDTH_FIELDS, BlockKind, block_kind, list_blocks
from ._errors import InputError

__all__ = [
    "ACTIVATIONS",
    "BLOCK_TYPES",
    "ArchSpec",
    "Block",
    "Head",
    "SpecError",
    "Stage",
    "Stem",
    "SPEC_FORMAT_VERSION",
]

SPEC_FORMAT_VERSION = 1
BLOCK_TYPES = list_blocks()
ACTIVATIONS = ("relu", "relu6")
KERNELS = (1, 3, 5, 7)
STRIDES = (1, 2)


class SpecError(InputError):
    """An ``ArchSpec`` is invalid; the message names the field and what is accepted."""


def _check_int(path: str, value: Any, *, minimum: int = 1, choices: tuple[int, ...] = ()) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{path}: expected an integer, got {value!r}")
    if choices and value not in choices:
        raise SpecError(f"{path}: got {value}, accepted: {', '.join(map(str, choices))}")
    if value < minimum:
        raise SpecError(f"{path}: must be >= {minimum}, got {value}")


def _check_ratio(path: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError(f"{path}: expected a number in (0, 1], got {value!r}")
    if not (0.0 < float(value) <= 1.0) or math.isnan(float(value)):
        raise SpecError(f"{path}: must be in (0, 1], got {value}")


@dataclass(frozen=True)
class Stem:
    """Input stem: one ``kernel x kernel`` convolution + BN + activation."""

    out_channels: int
    kernel: int = 3
    stride: int = 1

    def _validate(self, path: str) -> None:
        _check_int(f"{path}.out_channels", self.out_channels)
        _check_int(f"{path}.kernel", self.kernel, choices=KERNELS)
        _check_int(f"{path}.stride", self.stride, choices=STRIDES)


@dataclass(frozen=True)
class Block:
    """One block; see the module docstring for what each width means per type."""

    type: str
    out_channels: int
    mid_channels: int | None = None
    mid2_channels: int | None = None
    kernel: int = 3
    stride: int = 1
    rank_ratio: float = 1.0

    def _validate(self, path: str) -> None:
        try:
            kind = block_kind(self.type)
        except KeyError as e:
            raise SpecError(f"{path}.type: {e.args[0]}") from None
        _check_int(f"{path}.out_channels", self.out_channels)
        _check_int(f"{path}.kernel", self.kernel, choices=KERNELS)
        _check_int(f"{path}.stride", self.stride, choices=STRIDES)
        _check_ratio(f"{path}.rank_ratio", self.rank_ratio)
        object.__setattr__(self, "rank_ratio", float(self.rank_ratio))  # 1 and 1.0 hash alike
        needed = {WIDTH_FIELDS[w] for w in kind.widths}
        for name in WIDTH_FIELDS.values():
            if name in needed:
                _check_int(f"{path}.{name}", getattr(self, name))
            elif getattr(self, name) is not None:
                owners = [k for k in list_blocks() if name in {WIDTH_FIELDS[w] for w in block_kind(k).widths}]
                raise SpecError(f"{path}.{name}: must be null for a {self.type!r} block (only "
                                f"{', '.join(map(repr, owners))} blocks have it)")

    @property
    def kind(self) -> BlockKind:
        """What this block's type is (:mod:`search_spaces._blocks`)."""
        return block_kind(self.type)

    @property
    def inner_widths(self) -> tuple[int, ...]:
        """The prunable inner widths of the block (empty for ``conv``)."""
        return self.kind.inner(self)

    def is_residual(self, in_channels: int) -> bool:
        """Whether the block adds a skip connection, given its input width."""
        return self.kind.residual(self, in_channels)


@dataclass(frozen=True)
class Stage:
    """A sequence of blocks; stride, if any, is on the blocks themselves."""

    blocks: tuple[Block, ...]

    def _validate(self, path: str) -> None:
        if not isinstance(self.blocks, tuple) or not self.blocks:
            raise SpecError(f"{path}.blocks: expected a non-empty list of blocks")
        for j, block in enumerate(self.blocks):
            if not isinstance(block, Block):
                raise SpecError(f"{path}.blocks[{j}]: expected a Block, got {type(block).__name__}")
            block._validate(f"{path}.blocks[{j}]")


@dataclass(frozen=True)
class Head:
    """Classifier head: global average pool, optional hidden linear layer, linear to classes.

    ``rank_ratio`` makes the hidden layer a ``LightLinear`` when below 1.
    """

    hidden: int | None = None
    rank_ratio: float = 1.0
    dropout: float = 0.0

    def _validate(self, path: str) -> None:
        if self.hidden is not None:
            _check_int(f"{path}.hidden", self.hidden)
        _check_ratio(f"{path}.rank_ratio", self.rank_ratio)
        object.__setattr__(self, "rank_ratio", float(self.rank_ratio))
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)):
            raise SpecError(f"{path}.dropout: expected a number in [0, 1), got {self.dropout!r}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise SpecError(f"{path}.dropout: must be in [0, 1), got {self.dropout}")
        object.__setattr__(self, "dropout", float(self.dropout))


@dataclass(frozen=True)
class ArchSpec:
    """A complete network description. Frozen, hashable, validated on construction.

    Example:
        >>> spec = ArchSpec(stem=Stem(8), stages=(Stage((Block("conv", 16, stride=2),)),))
        >>> ArchSpec.from_json(spec.to_json()) == spec
        True
    """

    stem: Stem
    stages: tuple[Stage, ...]
    head: Head = field(default_factory=Head)
    act: str = "relu"
    family: str = "custom"

    def __post_init__(self) -> None:
        if not isinstance(self.stem, Stem):
            raise SpecError(f"stem: expected a Stem, got {type(self.stem).__name__}")
        self.stem._validate("stem")
        if not isinstance(self.stages, tuple) or not self.stages:
            raise SpecError("stages: expected a non-empty list of stages")
        for i, stage in enumerate(self.stages):
            if not isinstance(stage, Stage):
                raise SpecError(f"stages[{i}]: expected a Stage, got {type(stage).__name__}")
            stage._validate(f"stages[{i}]")
        if not isinstance(self.head, Head):
            raise SpecError(f"head: expected a Head, got {type(self.head).__name__}")
        self.head._validate("head")
        if self.act not in ACTIVATIONS:
            raise SpecError(f"act: got {self.act!r}, accepted: {', '.join(ACTIVATIONS)}")
        if not isinstance(self.family, str) or not self.family:
            raise SpecError(f"family: expected a non-empty string, got {self.family!r}")

    # ------------------------------------------------------------------ views
    @property
    def blocks(self) -> tuple[Block, ...]:
        """All blocks in execution order."""
        return tuple(b for s in self.stages for b in s.blocks)

    @property
    def depth(self) -> int:
        """Number of weight layers on the main path (stem + block convs + head linears)."""
        n = 1 + sum(b.kind.depth() for b in self.blocks)
        return n + 1 + (self.head.hidden is not None)

    def block_inputs(self) -> tuple[int, ...]:
        """Input width of every block, in execution order."""
        widths = []
        c = self.stem.out_channels
        for b in self.blocks:
            widths.append(c)
            c = b.out_channels
        return tuple(widths)

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (lists, dicts, numbers, strings); inverse of :meth:`from_dict`."""
        # What dataclasses.asdict gives (tests hold them equal), without its deep copies: the
        # leaves are immutable numbers and strings. The spec hash is computed from it.
        return {"stem": dict(vars(self.stem)),
                "stages": tuple({"blocks": tuple(dict(vars(b)) for b in st.blocks)} for st in self.stages),
                "head": dict(vars(self.head)), "act": self.act, "family": self.family,
                "format": SPEC_FORMAT_VERSION}

    def to_json(self, *, indent: int | None = None) -> str:
        """Canonical JSON: sorted keys, no insignificant whitespace unless ``indent``."""
        return json.dumps(self.to_dict(), sort_keys=True, indent=indent,
                          separators=(",", ":") if indent is None else (",", ": "))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArchSpec:
        """Build (and validate) a spec from :meth:`to_dict` output.

        Raises:
            SpecError: on unknown or missing fields or invalid values.
        """
        if not isinstance(data, dict):
            raise SpecError(f"spec: expected an object, got {type(data).__name__}")
        data = dict(data)
        fmt = data.pop("format", SPEC_FORMAT_VERSION)
        if fmt != SPEC_FORMAT_VERSION:
            raise SpecError(f"format: unsupported spec format {fmt!r}, accepted: {SPEC_FORMAT_VERSION}")
        try:
            stem = _from_fields(Stem, data.pop("stem"), "stem")
            stages_raw = data.pop("stages")
            if not isinstance(stages_raw, list):
                raise SpecError("stages: expected a list")
            stages = []
            for i, s in enumerate(stages_raw):
                if not isinstance(s, dict) or not isinstance(s.get("blocks"), list):
                    raise SpecError(f"stages[{i}]: expected an object with a 'blocks' list")
                extra = set(s) - {"blocks"}
                if extra:
                    raise SpecError(f"stages[{i}]: unknown field(s) {sorted(extra)}, accepted: ['blocks']")
                stages.append(Stage(tuple(_from_fields(Block, b, f"stages[{i}].blocks[{j}]")
                                          for j, b in enumerate(s["blocks"]))))
            head = _from_fields(Head, data.pop("head", {}), "head")
        except KeyError as e:
            raise SpecError(f"{e.args[0]}: missing required field") from None
        unknown = set(data) - {"act", "family"}
        if unknown:
            raise SpecError(f"spec: unknown field(s) {sorted(unknown)}, accepted: "
                            "['act', 'family', 'format', 'head', 'stages', 'stem']")
        return cls(stem=stem, stages=tuple(stages), head=head, **data)

    @classmethod
    def from_json(cls, text: str) -> ArchSpec:
        """Parse :meth:`to_json` output. Raises :class:`SpecError` on bad JSON or fields."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise SpecError(f"spec: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
        return cls.from_dict(data)

    @functools.cached_property
    def hash(self) -> str:
        """SHA-256 of the canonical JSON: equal across processes, key orders and Python versions
        (computed once per spec object: the spec is frozen)."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    @property
    def short_hash(self) -> str:
        return self.hash[:12]

    def replace(self, **changes: Any) -> ArchSpec:
        """A copy with fields replaced (validated again)."""
        return dataclasses.replace(self, **changes)


def _from_fields(cls: type, data: Any, path: str) -> Any:
    if not isinstance(data, dict):
        raise SpecError(f"{path}: expected an object, got {type(data).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = set(data) - set(names)
    if unknown:
        raise SpecError(f"{path}: unknown field(s) {sorted(unknown)}, accepted: {names}")
    try:
        obj = cls(**data)
    except TypeError as e:
        raise SpecError(f"{path}: {e}") from None
    obj._validate(path)
    return obj
