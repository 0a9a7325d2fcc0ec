"""The pruning-threshold search of docs/methods.md section 2: a binary search driven by fine-tuning accuracy."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["ThresholdSearch", "threshold_search"]


@dataclass(frozen=True)
class ThresholdSearch:
    """Result of :func:`threshold_search`.

    Attributes:
        visited: ``(Pc, accuracy)`` of every attempt, in order.
        threshold: the final ``Pu`` when some attempt met the target (the lowest threshold that
            did, i.e. the most pruning), ``None`` when none did (prune nothing).
        upper, lower: the final ``Pu`` and ``Pl``.
    """

    visited: tuple[tuple[float, float], ...]
    threshold: float | None
    upper: float
    lower: float


def threshold_search(accuracy_at: Callable[[float], float], target: float, *, upper: float = 1.0,
                     lower: float = 0.5, tolerance: float = 0.03) -> ThresholdSearch:
    """The pruning-threshold search of docs/methods.md section 2, literally.

    ``Pu = 1.0``, ``Pl = 0.5``, ``Pc = (Pu + Pl) / 2``. While ``Pu - Pl >= 0.03``: prune at ``Pc``,
    fine-tune, measure (``accuracy_at(Pc)``). If accuracy >= target: ``Pu = Pc`` and ``Pc``
    decreases by a quarter of the interval. If accuracy < target: ``Pl = Pc`` and ``Pc``
    increases by half of the interval. "The interval" is ``Pu - Pl`` after the bound has
    moved, read in the order the sentence gives: a failure puts ``Pc`` at the middle of the new
    interval; a success puts it a quarter below the new ``Pu`` (a cautious step towards more
    pruning). Reading it as the interval before the move would send ``Pc`` to ``Pu`` itself
    after a failure, an attempt that cannot meet the target any better than the one that just
    passed there.

    Visited sequences (``Pc``, with ``Pu - Pl`` after each attempt):

    * every attempt meets the target: 0.75, 0.6875, 0.640625, 0.60546875, 0.5791015625,
      0.559326171875, 0.54449462890625, 0.5333709716796875, 0.525028228759765625
      (9 attempts; the interval shrinks to 3/4 each time, 0.0250 at the end);
    * no attempt meets it: 0.75, 0.875, 0.9375, 0.96875, 0.984375 (5 attempts; halves; 0.0156);
    * accuracy >= target exactly when ``Pc >= 0.62``: 0.75, 0.6875, 0.640625, 0.60546875 (fails),
      0.623046875, then ``Pu - Pl = 0.0176 < 0.03``: threshold 0.623046875.

    Args:
        accuracy_at: prunes at a threshold, fine-tunes and returns the accuracy.
        target: the accuracy to keep (the baseline's minus a margin).
        upper, lower, tolerance: ``Pu``, ``Pl`` and the stopping gap (1.0, 0.5, 0.03).

    Returns:
        A :class:`ThresholdSearch`.

    Example:
        >>> threshold_search(lambda pc: 1.0 if pc >= 0.62 else 0.0, 0.5).threshold
        0.623046875
    """
    if not 0.0 <= lower < upper:
        raise ValueError(f"need 0 <= lower < upper, got lower={lower}, upper={upper}")
    if tolerance <= 0:
        raise ValueError(f"tolerance must be positive, got {tolerance}")
    pu, pl = float(upper), float(lower)
    pc = (pu + pl) / 2
    visited: list[tuple[float, float]] = []
    while pu - pl >= tolerance:
        acc = float(accuracy_at(pc))
        visited.append((pc, acc))
        if acc >= target:
            pu = pc
            pc = pc - (pu - pl) / 4
        else:
            pl = pc
            pc = pc + (pu - pl) / 2
    return ThresholdSearch(tuple(visited), pu if pu < upper else None, pu, pl)
