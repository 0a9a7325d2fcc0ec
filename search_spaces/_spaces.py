"""The built-in search spaces: ``resnet``, ``mobilenetv2``, ``plain``.

Each adapts its downsampling to the input: a stride-2 step is kept only while the feature map
is at least 4 pixels on its short side (so it never drops below 2x2 by striding), and the
stem strides by 2 for inputs of 64 pixels and more. 8x8 digits get one or two downsamplings,
32x32 images the usual three.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ._registry import ChoiceTrial, SearchSpace, register_space
from ._spec import ArchSpec, Block, Head, Stage, Stem

__all__ = ["MobileNetV2Space", "PlainSpace", "ResNetSpace"]

RANK_RATIOS = (1.0, 0.5, 0.25, 0.125)
#: Most blocks per stage (ResNet-110 has 18; ResNet-56 9).
MAX_DEPTH = 32
#: Most values of a list option (widths, kernels, expansions, ...).
MAX_VALUES = 8
#: Most channels of a width choice (MobileNetV2's widest layer has 1,280).
MAX_CHANNELS = 4096
#: Most choices one stage offers (depths x widths x kernels x expansions x rank ratios): the budget
#: check (``objectives.space_minimum``) visits each of them for every width entering the stage, for
#: every stem width, so these caps keep it to seconds.
MAX_STAGE_CHOICES = 512


def _opt(default: Any, help: str) -> Any:
    if isinstance(default, (list, tuple)):
        return field(default_factory=lambda: tuple(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)  # True is not a depth


def _check_depths(min_depth: int, max_depth: int) -> None:
    if not (_is_int(min_depth) and _is_int(max_depth) and 1 <= min_depth <= max_depth):
        raise ValueError(f"need integers 1 <= min_depth <= max_depth, got min_depth={min_depth!r}, "
                         f"max_depth={max_depth!r}")
    if max_depth > MAX_DEPTH:
        raise ValueError(f"max_depth: got {max_depth}; accepted: at most {MAX_DEPTH} blocks per stage")


def _check_choices(name: str, values: Any, allowed: tuple[Any, ...] | None = None,
                   most: int = MAX_CHANNELS) -> tuple[Any, ...]:
    values = tuple(values)
    if not values:
        raise ValueError(f"{name} must not be empty")
    if len(values) > MAX_VALUES:
        raise ValueError(f"{name}: {len(values):,} values given; accepted: at most {MAX_VALUES}")
    if allowed is not None:
        bad = [v for v in values if v not in allowed or isinstance(v, bool)]
        if bad:
            raise ValueError(f"{name}: {bad} not accepted; accepted: {list(allowed)}")
    elif not all(_is_int(v) and 0 < v <= most for v in values):
        raise ValueError(f"{name} must be positive integers of at most {most:,}, got {list(values)}")
    return values


def _check_stage_choices(**counts: int) -> None:
    """At most :data:`MAX_STAGE_CHOICES` choices per stage (the product of ``counts``, by option)."""
    total = 1
    for n in counts.values():
        total *= n
    if total > MAX_STAGE_CHOICES:
        parts = " x ".join(f"{n} {name}" for name, n in counts.items())
        raise ValueError(f"these options give a stage {total:,} choices ({parts}); accepted: at most "
                         f"{MAX_STAGE_CHOICES} (the budget check visits each for every width entering a stage): fewer "
                         "depths, widths, kernels or rank ratios")


def _strides(spatial: int, wanted: list[int]) -> tuple[int, list[int]]:
    """Return (size after, strides) keeping a stride of 2 only while the map is >= 4."""
    out = []
    for s in wanted:
        if s == 2 and spatial >= 4:
            out.append(2)
            spatial = (spatial - 1) // 2 + 1
        else:
            out.append(1)
    return spatial, out


def _stem_stride(space: SearchSpace) -> tuple[int, int]:
    """The stem's stride (option ``stem_stride``; by default 2 for inputs of 64 pixels and more)
    and the short side of the map after it."""
    hw = min(space.input_shape[1:])
    chosen = space.options.stem_stride  # type: ignore[attr-defined]
    stride = chosen if chosen is not None else (2 if hw >= 64 else 1)
    return stride, (hw - 1) // stride + 1


def _mult(width: float, mult: float) -> int:
    """A width scaled by the option ``width_mult`` (at least 1 channel)."""
    return max(1, int(round(width * mult)))


def _scaled(widths: tuple[int, ...], factor: int, mult: float = 1.0) -> list[int]:
    return sorted({_mult(w, mult) * factor for w in widths})


def _stem_choices(widths: tuple[int, ...], mult: float) -> list[int]:
    """Stem widths as given (their order is the Optuna distribution's), scaled when ``mult`` != 1."""
    return list(widths) if mult == 1.0 else _scaled(widths, 1, mult)


def _check_scaling(width_mult: Any, stem_stride: Any) -> None:
    if isinstance(width_mult, bool) or not isinstance(width_mult, (int, float)) or not 0 < width_mult <= 4:
        raise ValueError(f"width_mult must be a number in (0, 4], got {width_mult!r}")
    if stem_stride is not None and stem_stride not in (1, 2):
        raise ValueError(f"stem_stride: got {stem_stride!r}, accepted: 1, 2 (or null: 2 for inputs of 64 px and more)")


def _width_opt() -> Any:
    return _opt(1.0, "multiplier of every width choice, stem included (budget fitting scales it)")


def _stride_opt() -> Any:
    return _opt(None, "stem stride 1 or 2 (default: 2 for inputs of 64 px and more; budget fitting may set 2)")


class _BuiltinSpace(SearchSpace):
    """What the built-in spaces share: the stem stride (option ``stem_stride``), the strides of
    their stages (:meth:`wanted_strides`, kept while the map is large enough), and a stem of
    one 3x3 convolution whose width is the global choice ``stem_width`` (from
    :meth:`stem_widths`, scaled by ``width_mult``)."""

    def __init__(self, input_shape: Any = (3, 32, 32), **options: Any) -> None:
        super().__init__(input_shape, **options)
        self.stem_stride, hw = _stem_stride(self)
        self.stage_strides = tuple(_strides(hw, self.wanted_strides())[1])

    def wanted_strides(self) -> list[int]:
        raise NotImplementedError

    def stem_widths(self) -> tuple[int, ...]:
        return tuple(self.options.stem_widths)  # type: ignore[attr-defined]

    def suggest_stem_width(self, trial: ChoiceTrial) -> int:
        return int(trial.suggest_categorical("stem_width", _stem_choices(self.stem_widths(),
                                                                         self.options.width_mult)))  # type: ignore[attr-defined]

    def suggest_globals(self, trial: ChoiceTrial) -> dict[str, Any]:
        return {"stem_width": self.suggest_stem_width(trial)}

    def stem(self, g: dict[str, Any]) -> Stem:
        return Stem(g["stem_width"], 3, self.stem_stride)


@register_space
class ResNetSpace(_BuiltinSpace):
    """CIFAR-style residual network: 3 stages, basic or bottleneck blocks."""

    name = "resnet"
    description = "CIFAR-style ResNet: 3 stages of basic/bottleneck blocks, LightConv rank per stage"

    @dataclass(frozen=True)
    class Options:
        min_depth: int = _opt(1, "fewest blocks per stage")
        max_depth: int = _opt(4, "most blocks per stage (ResNet-56 has 9)")
        widths: tuple[int, ...] = _opt((8, 12, 16, 24, 32), "first-stage widths; stage i uses width * 2**i")
        stem_widths: tuple[int, ...] = _opt((8, 16, 24, 32), "stem widths")
        block_types: tuple[str, ...] = _opt(("basic", "bottleneck"), "block types to choose from")
        rank_ratios: tuple[float, ...] = _opt(RANK_RATIOS, "LightConv rank ratios per stage")
        width_mult: float = _width_opt()
        stem_stride: int | None = _stride_opt()

        def __post_init__(self) -> None:
            _check_depths(self.min_depth, self.max_depth)
            _check_choices("widths", self.widths)
            _check_choices("stem_widths", self.stem_widths)
            _check_choices("block_types", self.block_types, ("basic", "bottleneck"))
            _check_choices("rank_ratios", self.rank_ratios, RANK_RATIOS)
            _check_scaling(self.width_mult, self.stem_stride)
            _check_stage_choices(depths=self.max_depth - self.min_depth + 1, widths=len(set(self.widths)),
                                 rank_ratios=len(set(self.rank_ratios)))

    act = "relu"

    def wanted_strides(self) -> list[int]:
        return [1, 2, 2]

    def suggest_globals(self, trial: ChoiceTrial) -> dict[str, Any]:
        return {"stem_width": self.suggest_stem_width(trial),
                "block": trial.suggest_categorical("block", list(self.options.block_types))}

    def suggest_stage(self, trial: ChoiceTrial, i: int, g: dict[str, Any], cin: int) -> Stage:
        o = self.options
        depth = trial.suggest_int(f"s{i}_depth", o.min_depth, o.max_depth)
        width = trial.suggest_categorical(f"s{i}_width", _scaled(o.widths, 2**i, o.width_mult))
        rank = trial.suggest_categorical(f"s{i}_rank", list(o.rank_ratios))
        blocks = []
        for j in range(depth):
            s = self.stage_strides[i] if j == 0 else 1
            if g["block"] == "basic":
                blocks.append(Block("basic", width, width, None, 3, s, rank))
            else:
                blocks.append(Block("bottleneck", 4 * width, width, width, 3, s, rank))
        return Stage(tuple(blocks))

    def _params_of(self, spec: ArchSpec) -> dict[str, Any]:
        first = spec.stages[0].blocks[0]
        params: dict[str, Any] = {"stem_width": spec.stem.out_channels, "block": first.type}
        for i, stage in enumerate(spec.stages):
            b = stage.blocks[0]
            params.update({f"s{i}_depth": len(stage.blocks), f"s{i}_rank": b.rank_ratio,
                           f"s{i}_width": b.out_channels if b.type == "basic" else b.mid_channels})
        return params


@register_space
class MobileNetV2Space(_BuiltinSpace):
    """Inverted-residual network (MobileNetV2): expansion, kernel, width, depth per stage."""

    name = "mobilenetv2"
    description = "MobileNetV2 inverted residuals: expansion 1/3/6, kernel 3/5, rank of the 1x1 convs"

    BASE_WIDTHS = (16, 24, 32, 64, 96)
    WANTED_STRIDES = (1, 2, 2, 2, 1)

    @dataclass(frozen=True)
    class Options:
        stages: int = _opt(5, "number of stages (1-5; MobileNetV2's widths 16/24/32/64/96)")
        min_depth: int = _opt(1, "fewest blocks per stage")
        max_depth: int = _opt(3, "most blocks per stage")
        expansions: tuple[int, ...] = _opt((1, 3, 6), "expansion ratios")
        kernels: tuple[int, ...] = _opt((3, 5), "depthwise kernel sizes")
        width_mults: tuple[float, ...] = _opt((0.5, 0.75, 1.0), "width multipliers of the base widths")
        stem_widths: tuple[int, ...] = _opt((8, 16, 32), "stem widths")
        rank_ratios: tuple[float, ...] = _opt(RANK_RATIOS, "rank ratios of the 1x1 convolutions")
        width_mult: float = _width_opt()
        stem_stride: int | None = _stride_opt()

        def __post_init__(self) -> None:
            _check_scaling(self.width_mult, self.stem_stride)
            if not (_is_int(self.stages) and 1 <= self.stages <= 5):
                raise ValueError(f"stages must be 1-5, got {self.stages!r}")
            _check_depths(self.min_depth, self.max_depth)
            _check_choices("expansions", self.expansions, most=16)
            _check_choices("kernels", self.kernels, (3, 5, 7))
            _check_choices("stem_widths", self.stem_widths)
            _check_choices("rank_ratios", self.rank_ratios, RANK_RATIOS)
            if not self.width_mults or not all(0 < float(m) <= 4 for m in self.width_mults):
                raise ValueError(f"width_mults must be in (0, 4], got {list(self.width_mults)}")
            if len(self.width_mults) > MAX_VALUES:
                raise ValueError(f"width_mults: {len(self.width_mults):,} values given; accepted: at most {MAX_VALUES}")
            _check_stage_choices(depths=self.max_depth - self.min_depth + 1, width_mults=len(set(self.width_mults)),
                                 expansions=len(set(self.expansions)), kernels=len(set(self.kernels)),
                                 rank_ratios=len(set(self.rank_ratios)))

    act = "relu6"

    def wanted_strides(self) -> list[int]:
        return list(self.WANTED_STRIDES[: self.options.stages])

    def suggest_stage(self, trial: ChoiceTrial, i: int, g: dict[str, Any], cin: int) -> Stage:
        o = self.options
        depth = trial.suggest_int(f"s{i}_depth", o.min_depth, o.max_depth)
        widths = sorted({max(4, int(round(self.BASE_WIDTHS[i] * m * o.width_mult / 4)) * 4) for m in o.width_mults})
        width = trial.suggest_categorical(f"s{i}_width", widths)
        expansion = trial.suggest_categorical(f"s{i}_expansion", list(o.expansions))
        kernel = trial.suggest_categorical(f"s{i}_kernel", list(o.kernels))
        rank = trial.suggest_categorical(f"s{i}_rank", list(o.rank_ratios))
        blocks = []
        for j in range(depth):
            blocks.append(Block("inverted", width, cin * expansion, None, kernel,
                                self.stage_strides[i] if j == 0 else 1, rank))
            cin = width
        return Stage(tuple(blocks))

    def _params_of(self, spec: ArchSpec) -> dict[str, Any]:
        params: dict[str, Any] = {"stem_width": spec.stem.out_channels}
        cin = spec.stem.out_channels
        for i, stage in enumerate(spec.stages):
            b = stage.blocks[0]
            params.update({f"s{i}_depth": len(stage.blocks), f"s{i}_width": b.out_channels,
                           f"s{i}_expansion": (b.mid_channels or cin) // cin, f"s{i}_kernel": b.kernel,
                           f"s{i}_rank": b.rank_ratio})
            cin = b.out_channels
        return params


@register_space
class PlainSpace(_BuiltinSpace):
    """VGG-like chain of conv blocks with an optional hidden fully-connected layer."""

    name = "plain"
    description = "VGG-like chain: conv-BN-ReLU stages, optional hidden FC (LightLinear)"

    @dataclass(frozen=True)
    class Options:
        stages: int = _opt(3, "number of stages (1-4); each after the first halves the map")
        min_depth: int = _opt(1, "fewest conv layers per stage")
        max_depth: int = _opt(3, "most conv layers per stage")
        widths: tuple[int, ...] = _opt((8, 16, 24, 32), "first-stage widths; stage i uses width * 2**i")
        kernels: tuple[int, ...] = _opt((3, 5), "kernel sizes")
        hidden: tuple[int, ...] = _opt((0, 64, 128), "hidden FC widths (0 = none)")
        rank_ratios: tuple[float, ...] = _opt(RANK_RATIOS, "LightLayer rank ratios per stage")
        width_mult: float = _width_opt()
        stem_stride: int | None = _stride_opt()

        def __post_init__(self) -> None:
            _check_scaling(self.width_mult, self.stem_stride)
            if not (_is_int(self.stages) and 1 <= self.stages <= 4):
                raise ValueError(f"stages must be 1-4, got {self.stages!r}")
            _check_depths(self.min_depth, self.max_depth)
            _check_choices("widths", self.widths)
            _check_choices("kernels", self.kernels, (1, 3, 5, 7))
            _check_choices("rank_ratios", self.rank_ratios, RANK_RATIOS)
            if not self.hidden or not all(_is_int(h) and 0 <= h <= MAX_CHANNELS for h in self.hidden):
                raise ValueError(f"hidden must be integers from 0 to {MAX_CHANNELS:,}, got {list(self.hidden)}")
            if len(self.hidden) > MAX_VALUES:
                raise ValueError(f"hidden: {len(self.hidden):,} values given; accepted: at most {MAX_VALUES}")
            _check_stage_choices(depths=self.max_depth - self.min_depth + 1, widths=len(set(self.widths)),
                                 kernels=len(set(self.kernels)), rank_ratios=len(set(self.rank_ratios)))

    act = "relu"

    def wanted_strides(self) -> list[int]:
        return [1] + [2] * (self.options.stages - 1)

    def stem_widths(self) -> tuple[int, ...]:
        return tuple(self.options.widths)  # the stem takes a first-stage width

    def suggest_stage(self, trial: ChoiceTrial, i: int, g: dict[str, Any], cin: int) -> Stage:
        o = self.options
        depth = trial.suggest_int(f"s{i}_depth", o.min_depth, o.max_depth)
        width = trial.suggest_categorical(f"s{i}_width", _scaled(o.widths, 2**i, o.width_mult))
        kernel = trial.suggest_categorical(f"s{i}_kernel", list(o.kernels))
        rank = trial.suggest_categorical(f"s{i}_rank", list(o.rank_ratios))
        return Stage(tuple(Block("conv", width, None, None, kernel, self.stage_strides[i] if j == 0 else 1, rank)
                           for j in range(depth)))

    def suggest_head(self, trial: ChoiceTrial, g: dict[str, Any], cin: int) -> Head:
        o = self.options
        hidden = trial.suggest_categorical("head_hidden", list(o.hidden))
        head_rank = trial.suggest_categorical("head_rank", list(o.rank_ratios)) if hidden else 1.0
        return Head(hidden=hidden or None, rank_ratio=head_rank)

    def _params_of(self, spec: ArchSpec) -> dict[str, Any]:
        params: dict[str, Any] = {"stem_width": spec.stem.out_channels, "head_hidden": spec.head.hidden or 0}
        for i, stage in enumerate(spec.stages):
            b = stage.blocks[0]
            params.update({f"s{i}_depth": len(stage.blocks), f"s{i}_width": b.out_channels, f"s{i}_kernel": b.kernel,
                           f"s{i}_rank": b.rank_ratio})
        if spec.head.hidden:
            params["head_rank"] = spec.head.rank_ratio
        return params
