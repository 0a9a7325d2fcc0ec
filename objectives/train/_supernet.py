"""Training a weight-shared supernet and evaluating its subnets (BigNAS, Once-for-all).

:func:`train_supernet` trains a :class:`search_spaces.SuperNet` with the **sandwich rule** of
BigNAS (Yu et al., ECCV 2020): every step runs the largest subnet, the smallest and ``sandwich``
random ones on the same batch, accumulates their gradients and takes one optimiser step. With
**in-place distillation** the largest learns from the labels and every other subnet from the
largest's (detached) predictions of the same batch, :func:`objectives.kd_loss` at temperature 1
by default (BigNAS: soft labels only). The optimiser, schedule and conventions are those of the one
training loop (:func:`objectives.train_model`): SGD with Nesterov momentum 0.9, weight decay on
convolution and linear weights only, linear warm-up then cosine decay per step, the batch
augmentation of ``TrainConfig.augment``, threads and seed from the :class:`TrainConfig`. The
supernet trains in fp32 on the configured device.

Every epoch's randomness (batch order, augmentation, the random subnets, dropout) is drawn from
generators seeded by ``(seed, epoch)``, so a run resumed from an epoch's checkpoint
(:meth:`SupernetEpoch.checkpoint`, ``resume=``) takes the same steps as one never interrupted.

A subnet's accuracy is that of its extracted network (exact weight slices) after **BatchNorm
recalibration**: the running statistics the supernet accumulated blend every subnet, so they are
reset and recomputed on a few training batches in train mode with cumulative averaging
(``momentum=None``), :func:`recalibrate_bn`; nothing else changes. :func:`evaluate_subnet` does
the three steps; on digits it takes well under a second on one thread.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from search_spaces import ArchSpec, SpecError, SuperNet

from ..cost._latency import resolve_device
from ._accel import augment_batch
from ._data import Dataset
from ._distill import kd_loss
from ._train import TrainConfig, TrainingError, _lr_factor, _param_groups, _seeded, evaluate, num_threads

__all__ = ["DENSE_FRACTION", "SupernetEpoch", "SupernetResult", "default_dense_epochs", "dense_phase",
           "evaluate_subnet", "rank_agreement", "recalibrate_bn", "spanning_subnets", "train_supernet"]

# ---------------------------------------------------------------------------------------- BN


@contextlib.contextmanager
def _bn_only_training(model: nn.Module) -> Iterator[list[_BatchNorm]]:
    """BN layers in train mode with cumulative averaging, every other module in eval mode (no
    dropout); modes and momenta restored on exit."""
    modes = {m: m.training for m in model.modules()}
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    momenta = [m.momentum for m in bns]
    try:
        model.eval()
        for m in bns:
            m.train()
            m.momentum = None
        yield bns
    finally:
        for m, mom in zip(bns, momenta, strict=True):
            m.momentum = mom
        for module, was in modes.items():
            module.training = was


def recalibrate_bn(model: nn.Module, x_train: torch.Tensor, *, batches: int = 8, batch_size: int = 128,
                   seed: int = 0) -> nn.Module:
    """Recompute ``model``'s BatchNorm running statistics on ``batches`` batches of ``x_train``.

    The running means and variances (and batch counts) of every BN layer are reset, then the model
    runs, without gradients, on ``batches`` disjoint batches of ``batch_size`` examples drawn by a
    seeded permutation (fewer when ``x_train`` is smaller), with BN layers in train mode and
    ``momentum=None`` (a cumulative average over the batches) and every other module in eval mode.
    Parameters, modes and momenta are left as they were. Returns ``model``.

    Raises:
        ValueError: ``batches`` or ``batch_size`` below 1, or fewer than 2 examples.

    Example:
        >>> recalibrate_bn(supernet.extract(spec), data.x_train, batches=8)  # doctest: +SKIP
    """
    for name, v in (("batches", batches), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if len(x_train) < 2:
        raise ValueError(f"recalibrating BatchNorm needs at least 2 examples, got {len(x_train)}")
    param = next(model.parameters(), None)
    dev = param.device if param is not None else x_train.device
    batch_size = min(batch_size, len(x_train))
    order = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(seed))
    with _bn_only_training(model) as bns, torch.no_grad():
        for m in bns:
            m.reset_running_stats()
        for b in range(batches):
            idx = order[b * batch_size:(b + 1) * batch_size]
            if len(idx) < 2:
                break
            model(x_train[idx.to(x_train.device)].to(dev))
    return model


def evaluate_subnet(supernet: SuperNet, spec: ArchSpec, data: Dataset, *, bn_batches: int = 8,
                    bn_batch_size: int = 128, split: str = "val", seed: int = 0) -> float:
    """Accuracy of subnet ``spec`` inherited from ``supernet``: extract it (exact slices),
    recalibrate its BatchNorm statistics on ``bn_batches`` training batches, validate it on
    ``split`` (``val`` or ``test``). The supernet is left unchanged.

    Raises:
        search_spaces.SpecError: ``spec`` is not a subnet of ``supernet``.
        ValueError: an unknown split.
    """
    if split not in ("val", "test"):
        raise ValueError(f"split: got {split!r}, accepted: val, test")
    model = supernet.extract(spec)
    recalibrate_bn(model, data.x_train, batches=bn_batches, batch_size=bn_batch_size, seed=seed)
    return evaluate(model, getattr(data, f"x_{split}"), getattr(data, f"y_{split}"))


# ------------------------------------------------------------------------------ ranking


def spanning_subnets(specs: Sequence[ArchSpec], input_shape: tuple[int, int, int], num_classes: int,
                     n: int) -> list[ArchSpec]:
    """``n`` of ``specs`` at evenly spaced ranks of their parameter counts, smallest and largest
    kept (all of them, sorted, when there are no more than ``n``): subnets spanning a space's cost
    range, for comparing supernet-inherited with stand-alone accuracy.

    Raises:
        ValueError: ``n`` below 2.
    """
    from ..cost import estimate_cost

    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an integer of at least 2, got {n!r}")
    costed = sorted(specs, key=lambda s: estimate_cost(s, input_shape, num_classes)["params"])  # stable: ties in order
    if len(costed) <= n:
        return costed
    picks = sorted({round(i * (len(costed) - 1) / (n - 1)) for i in range(n)})
    return [costed[i] for i in picks]


def rank_agreement(a: Sequence[float], b: Sequence[float]) -> tuple[float | None, float | None]:
    """Kendall tau(-b) and Spearman rho between two rankings of the same networks (``a[i]`` and
    ``b[i]`` score network ``i``); None where undefined (fewer than 2 networks, or every score of
    one side equal)."""
    from scipy.stats import kendalltau, spearmanr

    if len(a) != len(b):
        raise ValueError(f"rank_agreement: {len(a)} scores against {len(b)}")
    if len(a) < 2 or len(set(a)) < 2 or len(set(b)) < 2:
        return None, None

    def num(v: Any) -> float | None:
        v = float(v)
        return v if math.isfinite(v) else None

    return num(kendalltau(a, b).statistic), num(spearmanr(a, b).statistic)


# ---------------------------------------------------------------------------------- training


@dataclass
class SupernetEpoch:
    """One epoch of supernet training.

    Attributes:
        epoch: 1-based.
        loss: mean training loss of the largest subnet (cross-entropy on the labels).
        student_loss: mean loss of the other subnets of the sandwich (distillation or CE).
        largest: validation accuracy of the largest subnet after BN recalibration (``None`` when
            not validated).
        smallest: the same for the smallest subnet.
        seconds: wall time since training started (this run).
        lr: learning rate of the epoch's last step.
    """

    epoch: int
    loss: float
    student_loss: float
    largest: float | None
    smallest: float | None
    seconds: float
    lr: float
    _state: Callable[[], dict[str, Any]] | None = field(default=None, repr=False, compare=False)

    def checkpoint(self) -> dict[str, Any]:
        """What resumes training after this epoch (``train_supernet(..., resume=...)``): the epoch,
        the supernet's and the optimiser's state (CPU copies)."""
        if self._state is None:
            raise ValueError("this epoch record holds no checkpoint (only the one passed to on_epoch does)")
        return self._state()


@dataclass
class SupernetResult:
    """What :func:`train_supernet` did: the per-epoch records, steps, wall time, and whether
    ``max_seconds`` stopped it early."""

    curve: list[SupernetEpoch]
    steps: int
    seconds: float
    epochs_run: int
    timed_out: bool = False

    @property
    def largest(self) -> float | None:
        return self.curve[-1].largest if self.curve else None

    @property
    def smallest(self) -> float | None:
        return self.curve[-1].smallest if self.curve else None


def _optimizer(supernet: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """The training loop's SGD and parameter groups; OFA's kernel transform matrices (start at the
    identity) are kept out of weight decay, which would pull them to zero."""
    groups = _param_groups(supernet, config.weight_decay)
    transforms = {id(p) for n, p in supernet.named_parameters() if ".transforms." in f".{n}"}
    if transforms:
        groups[0]["params"] = [p for p in groups[0]["params"] if id(p) not in transforms]
        groups[1]["params"] = groups[1]["params"] + [p for p in supernet.parameters() if id(p) in transforms]
    return torch.optim.SGD(groups, lr=config.lr, momentum=0.9, nesterov=config.nesterov)


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch) % (2**63 - 1)


def train_supernet(supernet: SuperNet, data: Dataset, config: TrainConfig, *, epochs: int | None = None,
                   sandwich: int = 2, inplace_distill: bool = True, distill_temperature: float = 1.0,
                   distill_alpha: float = 1.0, validate: bool = True, bn_batches: int = 8,
                   on_epoch: Callable[[int, SupernetEpoch], None] | None = None,
                   resume: dict[str, Any] | None = None, dense_epochs: int | None = None) -> SupernetResult:
    """Train ``supernet`` in place on ``data`` with the sandwich rule and in-place distillation.

    Args:
        supernet: a :class:`search_spaces.SuperNet` for ``data``'s input shape and classes.
        data: the dataset (moved to the training device once).
        config: batch size, learning rate, weight decay, warm-up, augmentation, seed, device,
            threads and time limit, as for :func:`objectives.train_model`; ``epochs`` overrides
            ``config.epochs`` (the schedule spans them).
        sandwich: random subnets per step besides the largest and the smallest (BigNAS: 2).
        inplace_distill: the other subnets learn from the largest's predictions (``kd_loss`` with
            ``distill_temperature`` and ``distill_alpha``, 1.0 = soft labels only) instead of
            from the labels.
        validate: after each epoch, validate the largest and smallest subnets (extracted, BN
            recalibrated on ``bn_batches`` training batches).
        on_epoch: ``on_epoch(epoch, record)`` after each epoch; ``record.checkpoint()`` is what
            ``resume`` takes. Exceptions propagate.
        resume: a checkpoint of an earlier run with the same arguments: training goes on from
            the epoch after it, with the same steps as an uninterrupted run.
        dense_epochs: train dense first (OFA's progressive shrinking, applied to LightLayer ranks):
            in epochs 1..``dense_epochs`` every subnet trained is made dense (rank ratio 1
            everywhere: the largest, the smallest's and the random subnets' dense counterparts);
            at the end of epoch ``dense_epochs`` each low-rank factor pair is set to the truncated
            SVD of its layer's trained dense weight (:meth:`SuperNet.factors_from_dense`), then
            every subnet trains. Low-rank factors shared by every width, depth and kernel learn
            several times slower from random initialisation than dense weights do (BENCHMARKS.md
            section 15). None: :func:`default_dense_epochs`; 0: off. Ignored (0) for a supernet
            without both forms (:meth:`SuperNet.has_factors_of_dense`).

    Returns:
        A :class:`SupernetResult`; the supernet is left in eval mode, set to its largest subnet.

    Raises:
        TrainingError: a non-finite loss.
        search_spaces.SpecError: the data's input shape or classes differ from the supernet's.
        ValueError: bad ``sandwich``/``epochs``, an empty training split, a checkpoint of a
            later epoch than planned.
    """
    t0 = time.perf_counter()
    epochs = config.epochs if epochs is None else epochs
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    if isinstance(sandwich, bool) or not isinstance(sandwich, int) or sandwich < 0:
        raise ValueError(f"sandwich must be a non-negative integer, got {sandwich!r}")
    dense_epochs = dense_phase(supernet, epochs, dense_epochs)
    if tuple(data.input_shape) != tuple(supernet.input_shape) or data.num_classes != supernet.num_classes:
        raise SpecError(f"data: {data.name} has input {'x'.join(map(str, data.input_shape))} and "
                        f"{data.num_classes} classes, the supernet takes "
                        f"{'x'.join(map(str, supernet.input_shape))} and {supernet.num_classes}")
    dev = resolve_device(config.device)
    with num_threads(config.threads), _seeded(config.seed, dev):
        supernet.to(dev)
        data = data.to(dev)
        n = len(data.y_train)
        if n == 0:
            raise ValueError("the training split is empty")
        batch = min(config.batch_size, n)
        steps_per_epoch = math.ceil(n / batch)
        total_steps = epochs * steps_per_epoch
        optimizer = _optimizer(supernet, config)
        start = 0
        if resume is not None:
            start = int(resume["epoch"])
            if start > epochs:
                raise ValueError(f"resume: the checkpoint is of epoch {start}, beyond the {epochs} planned")
            supernet.load_state_dict(resume["supernet"])
            optimizer.load_state_dict(resume["optimizer"])
        loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
        largest, smallest = supernet.largest(), supernet.smallest()
        dense_smallest = supernet.dense_of(smallest) if dense_epochs else smallest

        def student_loss(out: torch.Tensor, teacher: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            if inplace_distill:
                return kd_loss(out, teacher, y, temperature=distill_temperature, alpha=distill_alpha)
            return loss_fn(out, y)

        def state() -> dict[str, Any]:
            return {"epoch": epoch,
                    "supernet": {k: v.detach().to("cpu", copy=True) for k, v in supernet.state_dict().items()},
                    "optimizer": _cpu(optimizer.state_dict())}

        curve: list[SupernetEpoch] = []
        step = start * steps_per_epoch
        timed_out = False
        epoch = start
        lr = config.lr
        for epoch in range(start + 1, epochs + 1):
            seed = _epoch_seed(config.seed, epoch)
            gen = torch.Generator().manual_seed(seed)
            rng = random.Random(seed)
            torch.manual_seed(seed)  # dropout
            supernet.train()
            perm = torch.randperm(n, generator=gen).to(dev)
            losses = torch.zeros(steps_per_epoch, device=dev)
            students = torch.zeros(steps_per_epoch, device=dev)
            sizes: list[int] = []
            for i in range(steps_per_epoch):
                idx = perm[i * batch:(i + 1) * batch]
                if len(idx) < 2 and sizes:  # a batch of one breaks BatchNorm
                    break
                lr = config.lr * _lr_factor(step, total_steps, config.warmup_fraction)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                x = augment_batch(data.x_train[idx], gen, config.augment)
                y = data.y_train[idx]
                optimizer.zero_grad(set_to_none=True)
                supernet.set_active(largest)
                out = supernet(x)
                loss = loss_fn(out, y)
                loss.backward()
                teacher = out.detach()
                others = [smallest] + [supernet.sample(rng) for _ in range(sandwich)]
                if epoch <= dense_epochs:  # dense first: the dense counterparts (same draws)
                    others = [dense_smallest] + [supernet.dense_of(o) for o in others[1:]]
                total = torch.zeros((), device=dev)
                for spec in others:
                    supernet.set_active(spec)
                    s_loss = student_loss(supernet(x), teacher, y)
                    s_loss.backward()
                    total = total + s_loss.detach()
                optimizer.step()
                losses[i] = loss.detach()
                students[i] = total / max(1, len(others))
                sizes.append(len(idx))
                step += 1
                if config.max_seconds is not None and time.perf_counter() - t0 > config.max_seconds:
                    timed_out = epoch < epochs or i < steps_per_epoch - 1
                    break
            values, s_values = losses[:len(sizes)].tolist(), students[:len(sizes)].tolist()
            for k, (a, b) in enumerate(zip(values, s_values, strict=True)):
                if not (math.isfinite(a) and math.isfinite(b)):
                    raise TrainingError(f"non-finite loss at epoch {epoch} step {k + 1} (largest {a}, others {b}, "
                                        f"lr={lr:.3g})")
            seen = max(1, sum(sizes))
            if epoch == dense_epochs:  # the ranks open: factors start from the trained dense layers
                supernet.factors_from_dense()
            record = SupernetEpoch(
                epoch=epoch, loss=sum(v * s for v, s in zip(values, sizes, strict=True)) / seen,
                student_loss=sum(v * s for v, s in zip(s_values, sizes, strict=True)) / seen,
                largest=evaluate_subnet(supernet, largest, data, bn_batches=bn_batches) if validate else None,
                smallest=evaluate_subnet(supernet, smallest, data, bn_batches=bn_batches) if validate else None,
                seconds=time.perf_counter() - t0, lr=lr, _state=state)
            curve.append(replace(record, _state=None))
            if on_epoch is not None:
                on_epoch(epoch, record)
            if timed_out:
                break
        supernet.set_active(largest)
        supernet.eval()
    return SupernetResult(curve=curve, steps=step, seconds=time.perf_counter() - t0,
                          epochs_run=epoch, timed_out=timed_out)


#: Share of a supernet's epochs trained dense first (``train_supernet``'s ``dense_epochs``): measured in
#: BENCHMARKS.md section 15d (25 subnets' mean supernet accuracy, digits 0.872 -> 0.956, MNIST 0.736 -> 0.908).
DENSE_FRACTION = 0.3


def default_dense_epochs(epochs: int) -> int:
    """The dense-first epochs of a supernet trained ``epochs`` epochs: :data:`DENSE_FRACTION` of them,
    rounded, leaving at least one epoch for every rank (0 for a single epoch)."""
    return min(epochs - 1, max(0, round(DENSE_FRACTION * epochs)))


def dense_phase(supernet: SuperNet, epochs: int, dense_epochs: int | None) -> int:
    """The dense-first epochs ``train_supernet`` runs (see its ``dense_epochs``).

    Raises:
        ValueError: ``dense_epochs`` not an integer from 0 to ``epochs - 1``.
    """
    if dense_epochs is not None and (isinstance(dense_epochs, bool) or not isinstance(dense_epochs, int)
                                     or not 0 <= dense_epochs < max(1, epochs)):
        raise ValueError(f"dense_epochs must be an integer from 0 to epochs - 1 ({epochs - 1}), got {dense_epochs!r}")
    if not supernet.has_factors_of_dense():
        return 0
    return default_dense_epochs(epochs) if dense_epochs is None else dense_epochs


def _cpu(obj: Any) -> Any:
    """A copy of a (nested) optimiser state with every tensor on the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_cpu(v) for v in obj]
    return obj
