"""Registry of named search spaces (timm-style): ``@register_space`` keys a class by name."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar

import optuna

from ._build import check_input_shape
from ._spec import ArchSpec

__all__ = ["SearchSpace", "SpaceError", "get_space", "list_spaces", "register_space"]

_SPACES: dict[str, type[SearchSpace]] = {}


class SpaceError(ValueError):
    """Unknown search space or option, or an option value out of range."""


class SearchSpace:
    """A named family of architectures that maps an Optuna trial to an ``ArchSpec``.

    Subclasses set ``name``, ``description`` and an ``Options`` dataclass (every field has a
    default and a ``metadata={"help": ...}``) and implement :meth:`suggest`. ``suggest`` uses
    Optuna's define-by-run API only, so it works with any sampler and with
    ``optuna.trial.FixedTrial``. Instances are immutable in practice and safe to share.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    Options: ClassVar[type]

    def __init__(self, input_shape: Sequence[int] = (3, 32, 32), **options: Any) -> None:
        self.input_shape = check_input_shape(input_shape)
        accepted = [f.name for f in dataclasses.fields(self.Options)]
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            raise SpaceError(f"space '{self.name}': unknown option(s) {', '.join(unknown)}; "
                             f"accepted: {', '.join(accepted)}")
        try:
            self.options = self.Options(**options)
        except (TypeError, ValueError) as e:
            raise SpaceError(f"space '{self.name}': {e}") from None

    def suggest(self, trial: optuna.trial.BaseTrial) -> ArchSpec:
        raise NotImplementedError

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
