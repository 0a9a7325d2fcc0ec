"""Registry of named search spaces (timm-style): ``@register_space`` keys a class by name."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

from ._build import check_input_shape
from ._errors import InputError
from ._spec import ArchSpec, Head, Stage, Stem

__all__ = ["ChoiceTrial", "EnumeratingTrial", "RandomTrial", "SearchSpace", "SpaceError", "enumerate_choices",
           "get_space", "list_spaces", "register_space"]

_SPACES: dict[str, type[SearchSpace]] = {}


class SpaceError(InputError):
    """Unknown search space or option, or an option value out of range."""


@runtime_checkable
class ChoiceTrial(Protocol):
    """What a space needs to draw its choices: Optuna's define-by-run calls, nothing else.

    ``optuna.trial.Trial`` and ``FixedTrial`` satisfy it, as do the random, enumerating and
    checking trials of this module and the sampler-answered trial of ``nas.search`` (the proxy
    pre-screen), so a space never depends on Optuna's trial type.
    """

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any: ...

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int: ...


class SearchSpace:
    """A named family of architectures that maps an Optuna trial to an ``ArchSpec``.

    Subclasses set ``name``, ``description``, ``act`` and an ``Options`` dataclass (every field
    has a default and a ``metadata={"help": ...}``), a list ``stage_strides`` (one entry per
    stage), and implement the segments :meth:`suggest` assembles, in this order:
    :meth:`suggest_globals` (choices every stage sees, e.g. the stem width), :meth:`stem`,
    :meth:`suggest_stage` once per stage (given the width that enters it) and
    :meth:`suggest_head`. Cost is additive over these segments, which is what lets
    :mod:`objectives.cost._feasibility` find a space's exact minimum stage by stage.

    Everything uses Optuna's define-by-run API only, so it works with any sampler, with
    ``optuna.trial.FixedTrial`` and with the enumerating and random trials of this module.
    Instances are immutable in practice and safe to share.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    Options: ClassVar[type]
    act: ClassVar[str] = "relu"
    stage_strides: tuple[int, ...] = ()

    def __init__(self, input_shape: Sequence[int] = (3, 32, 32), **options: Any) -> None:
        self.input_shape = check_input_shape(input_shape)
        accepted = [f.name for f in dataclasses.fields(self.Options)]
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            shown = ", ".join(u if u.isprintable() else repr(u) for u in unknown)
            raise SpaceError(f"space '{self.name}': unknown option(s) {shown}; "
                             f"accepted: {', '.join(accepted)}")
        # A list option given one value (`--option widths=16`, `block_types=basic`) is that one choice.
        listed = {f.name for f in dataclasses.fields(self.Options) if f.default_factory is not dataclasses.MISSING}
        options = {k: (v,) if k in listed and isinstance(v, (str, int, float)) else v for k, v in options.items()}
        try:
            self.options = self.Options(**options)
        except (TypeError, ValueError) as e:
            raise SpaceError(f"space '{self.name}': {e}") from None

    def suggest_globals(self, trial: ChoiceTrial) -> dict[str, Any]:
        """Choices made once per network, before the stages (the stem width, a block type)."""
        raise NotImplementedError

    def stem(self, g: dict[str, Any]) -> Stem:
        raise NotImplementedError

    def suggest_stage(self, trial: ChoiceTrial, i: int, g: dict[str, Any], cin: int) -> Stage:
        """Stage ``i`` given the global choices and the width ``cin`` entering it."""
        raise NotImplementedError

    def suggest_head(self, trial: ChoiceTrial, g: dict[str, Any], cin: int) -> Head:
        """The classifier head given the width of the last stage (default: pool + linear)."""
        return Head()

    def suggest(self, trial: ChoiceTrial) -> ArchSpec:
        """The architecture for ``trial``'s choices (an Optuna trial, or any define-by-run trial)."""
        g = self.suggest_globals(trial)
        stem = self.stem(g)
        cin, stages = stem.out_channels, []
        for i in range(len(self.stage_strides)):
            stage = self.suggest_stage(trial, i, g, cin)
            stages.append(stage)
            cin = stage.blocks[-1].out_channels
        head = self.suggest_head(trial, g, cin)
        return ArchSpec(stem=stem, stages=tuple(stages), head=head, act=self.act, family=self.name)

    def sample(self, rng: random.Random) -> ArchSpec:
        """One architecture drawn uniformly at every choice (as Optuna's RandomSampler draws),
        without an Optuna study: microseconds, for estimating shares of a space."""
        return self.suggest(RandomTrial(rng))

    def _params_of(self, spec: ArchSpec) -> dict[str, Any]:
        """The parameters :meth:`suggest` would need to produce ``spec`` (unchecked)."""
        raise NotImplementedError(f"space '{self.name}' cannot map a spec back to its parameters")

    def check_params(self, params: dict[str, Any]) -> ArchSpec:
        """The spec :meth:`suggest` gives for ``params``, if every value lies in its distribution
        (a categorical choice of the options, an integer within its range) and none is missing.

        Raises:
            SpaceError: naming the parameters outside this space.
        """
        trial = _CheckingTrial(params)
        spec = self.suggest(trial)
        if trial.bad:
            raise SpaceError(f"parameters outside space '{self.name}' with these options: "
                             f"{', '.join(sorted(trial.bad))}")
        return spec

    def params_of(self, spec: ArchSpec) -> dict[str, Any]:
        """The trial parameters under which :meth:`suggest` returns exactly ``spec`` (same hash):
        what ``study.enqueue_trial`` needs to seed a search with a known architecture.

        Raises:
            SpaceError: ``spec`` is not in this space (another family, a width or depth outside
                the options, a pruned network with per-block widths, another input size).

        Example:
            >>> space = get_space("plain", input_shape=(1, 8, 8))
            >>> from search_spaces import sample_spec
            >>> spec = sample_spec(space, 0)
            >>> space.suggest(optuna.trial.FixedTrial(space.params_of(spec))).hash == spec.hash
            True
        """
        if spec.family != self.name:
            raise SpaceError(f"spec {spec.short_hash} is a {spec.family!r} network, not one of space '{self.name}'")
        try:
            params = self._params_of(spec)
            back: ArchSpec | None = self.check_params(params)
        except (SpaceError, ValueError, KeyError, IndexError, AttributeError, TypeError):
            back, params = None, {}
        if back is None or back.hash != spec.hash:
            raise SpaceError(f"spec {spec.short_hash} is not in space '{self.name}' with options {self.options} "
                             f"for input {'x'.join(map(str, self.input_shape))} (a width, depth, kernel or rank "
                             "outside them, per-block widths, or another input size)")
        return params

    @classmethod
    def option_help(cls) -> list[tuple[str, Any, str]]:
        """``(name, default, help)`` for every option."""
        out = []
        for f in dataclasses.fields(cls.Options):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc,operator]
            out.append((f.name, default, f.metadata.get("help", "")))
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(input_shape={self.input_shape}, options={self.options})"


class _CheckingTrial:
    """A define-by-run trial that answers from ``params`` and notes every value outside its
    distribution (answering a valid one instead, so the space can go on)."""

    def __init__(self, params: dict[str, Any]) -> None:
        self.params, self.bad = params, []  # type: ignore[var-annotated]

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        if name not in self.params:
            self.bad.append(f"{name} (missing)")
            return choices[0]
        value = self.params[name]
        if not any(type(value) is type(c) and value == c or value == c and isinstance(c, float) for c in choices):
            self.bad.append(f"{name}={value!r} (accepted: {list(choices)})")
            return choices[0]
        return value

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int:
        value = self.params.get(name)
        if name not in self.params:
            self.bad.append(f"{name} (missing)")
            return low
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            self.bad.append(f"{name}={value!r} (accepted: {low}..{high})")
            return low
        return value

    def suggest_float(self, name: str, low: float, high: float, **_kw: Any) -> float:
        value = self.params.get(name)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not low <= value <= high:
            self.bad.append(f"{name}={value!r} (accepted: {low}..{high})")
            return low
        return float(value)


class RandomTrial:
    """A define-by-run trial answering every choice uniformly at random from ``rng``."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        return choices[self.rng.randrange(len(choices))]

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int:
        return low + step * self.rng.randrange((high - low) // step + 1)


class EnumeratingTrial:
    """A define-by-run trial that answers the ``path[k]``-th choice at its ``k``-th decision
    (0 past the end of the path), recording how many choices each decision had."""

    def __init__(self, path: Sequence[int]) -> None:
        self.path, self.sizes, self.params = path, [], {}  # type: ignore[var-annotated]

    def _pick(self, name: str, choices: Sequence[Any]) -> Any:
        k = len(self.sizes)
        self.sizes.append(len(choices))
        value = choices[self.path[k] if k < len(self.path) else 0]
        self.params[name] = value
        return value

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        return self._pick(name, list(choices))

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int:
        return int(self._pick(name, range(low, high + 1, step)))


def enumerate_choices(fn: Callable[[Any], Any]) -> Iterator[tuple[dict[str, Any], Any]]:
    """Every ``(params, fn(trial))`` of a define-by-run function, depth first: conditional
    choices (a parameter asked only for some values of another) are followed as they arise.

    Example:
        >>> [p for p, _ in enumerate_choices(lambda t: t.suggest_int("a", 0, 1) and t.suggest_int("b", 0, 1))]
        [{'a': 0}, {'a': 1, 'b': 0}, {'a': 1, 'b': 1}]
    """
    path: list[int] = []
    while True:
        trial = EnumeratingTrial(path)
        result = fn(trial)
        yield trial.params, result
        sizes = trial.sizes
        path = [path[k] if k < len(path) else 0 for k in range(len(sizes))]
        k = len(sizes) - 1
        while k >= 0 and path[k] + 1 >= sizes[k]:
            k -= 1
        if k < 0:
            return
        path = path[:k] + [path[k] + 1]


def register_space(cls: type[SearchSpace]) -> type[SearchSpace]:
    """Class decorator adding a space to the registry under ``cls.name``."""
    if cls.name in _SPACES:
        raise ValueError(f"search space {cls.name!r} is already registered")
    _SPACES[cls.name] = cls
    return cls


def list_spaces() -> list[str]:
    """Names of all registered search spaces, sorted."""
    return sorted(_SPACES)


def space_class(name: str) -> type[SearchSpace]:
    try:
        return _SPACES[name]
    except KeyError:
        raise SpaceError(f"unknown search space {name!r}; accepted: {', '.join(list_spaces())}") from None


def get_space(name: str, input_shape: Sequence[int] = (3, 32, 32), **options: Any) -> SearchSpace:
    """Instantiate a registered space for an input shape, with options that narrow it.

    Raises:
        SpaceError: unknown name (the message lists the valid ones) or bad option.

    Example:
        >>> space = get_space("resnet", input_shape=(1, 8, 8), max_depth=2)
        >>> space.options.max_depth
        2
    """
    return space_class(name)(input_shape, **options)
