"""Weight inheritance in a study: the parent a child starts from (network morphism, docs/methods.md section 3).

The matching of tensors (which slices of a parent's weights a child takes) is a spec + weights
operation and lives in ``search_spaces`` (:func:`search_spaces.overlap`,
:func:`search_spaces.inherit_weights`); choosing the parent among a study's trained
architectures is the study's business and lives here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import optuna
import torch

from search_spaces import ArchSpec, overlap, spec_state_shapes
from storage import Store

from .._artifacts import load_arch, load_state, weights_key
from .._errors import NasError
from .._lru import LRUCache
from ._record import Status, record_of

if TYPE_CHECKING:
    from objectives import Dataset

    from ._spec import StudySpec

__all__ = ["Parent", "pick_parent"]


@dataclass
class Parent:
    """The chosen parent: its trial, architecture, weights and overlap with the child."""

    number: int
    arch: ArchSpec
    state: dict[str, torch.Tensor]
    overlap: float


#: Parameter shapes by (spec hash, input shape, classes), the least recently used dropped past 4096.
_SHAPES: LRUCache[tuple[str, tuple[int, ...], int], dict[str, tuple[int, ...]]] = LRUCache(limit=4096)


def _shapes(spec: ArchSpec, input_shape: tuple[int, int, int], classes: int) -> dict[str, tuple[int, ...]]:
    return _SHAPES.get_or_put((spec.hash, tuple(input_shape), classes),
                              lambda: spec_state_shapes(spec, input_shape, classes))


def pick_parent(child: ArchSpec, study: str, store: Store, study_spec: StudySpec, data: Dataset, *,
                min_overlap: float = 0.2, trials: list[optuna.trial.FrozenTrial] | None = None) -> Parent | None:
    """The trained architecture of ``study`` (same family, weights stored at the study's fidelity)
    that covers most of ``child``'s parameters; ties go to the higher validation accuracy. None
    when nothing covers ``min_overlap``."""
    shape, classes = tuple(data.input_shape), int(data.num_classes)
    if trials is None:
        trials = optuna.load_study(study_name=study, storage=store.optuna).get_trials(
            deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    child_shapes = _shapes(child, shape, classes)  # type: ignore[arg-type]
    scored: list[tuple[float, float, int, ArchSpec]] = []
    seen: set[str] = set()
    for t in trials:
        r = record_of(t)
        h = r.spec_hash
        if r.state != optuna.trial.TrialState.COMPLETE or r.status != Status.TRAINED or not h \
                or h in seen or h == child.hash:
            continue
        seen.add(h)
        try:
            arch = load_arch(store, h)
        except NasError:
            continue
        if arch.family != child.family:
            continue
        ov = overlap(child, child_shapes, arch, _shapes(arch, shape, classes))  # type: ignore[arg-type]
        if ov >= min_overlap:
            scored.append((ov, float(r.val_accuracy or 0.0), -t.number, arch))
    for ov, _acc, neg_number, arch in sorted(scored, key=lambda x: x[:3], reverse=True):
        state = load_state(store, weights_key(arch.hash, study_spec.fidelity_key))
        if state is not None:  # else (weights not stored) the next best
            return Parent(-neg_number, arch, state, ov)
    return None
