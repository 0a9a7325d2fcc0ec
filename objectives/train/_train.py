"""The accuracy objective: the one training loop of lightnas, fast and deterministic for small CNNs.

In the style of nanoGPT and airbench: the dataset is a set of tensors already on the device,
batches are slices of a seeded permutation, there is no ``DataLoader``; augmentation, when a
study asks for it (natural images), is done on the batch tensor with the loop's seeded
generator. A trial trains a few epochs at low fidelity, so the loop is kept to what matters for
speed and reproducibility:

- SGD with momentum 0.9 (Nesterov by default); weight decay on convolution and linear weights
  only (not on BatchNorm parameters or biases, which small networks do not need regularised).
- Learning rate: linear warm-up from 0.1 x ``lr`` over the first ``warmup_fraction`` of steps (at
  least one step), then cosine decay to zero at the planned last step (Loshchilov and Hutter,
  SGDR, ICLR 2017; the warm-up of Goyal et al. 2017). ``warmup_fraction=0`` is plain cosine
  annealing from ``lr``: what refinement's fine-tuning uses (docs/methods.md section 2), each run
  restarting the schedule.
- Deterministic on CPU for a given ``seed``: the global RNG is forked (the caller's random
  state is left untouched), shuffling uses its own ``torch.Generator``.
- On CUDA, the device's plan (:func:`objectives.device_plan`): mixed precision (bf16, or fp16
  with a grad scaler), channels_last, pinned memory, cuDNN autotuning. On the CPU the loop is
  fp32 and unchanged.

Refinement needs three more things of the same loop: a teacher (``teacher``, a
:class:`objectives.Distillation`: the loss becomes :func:`objectives.kd_loss`; with augmentation
the teacher's logits are those of the augmented batch the student sees), frozen layers
(``trainable``: only units under those module prefixes train; the others get no gradient and
stay in eval mode, so their BatchNorm statistics do not move either) and early stopping with
the best weights restored (``patience``).

A non-finite loss raises :class:`TrainingError` at the end of its epoch, before validation (the
search records a failed trial and goes on): the step losses stay on the device and are read
back once per epoch, not once per step, which on a GPU would wait for every step to finish.
Exceptions from ``on_epoch`` propagate, which is how pruners stop a trial early.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from search_spaces import ArchSpec, build_model

from ..cost._latency import resolve_device
from ._accel import AMP_MODES, AUGMENTATIONS, DevicePlan, ThreadGovernor, augment_batch, device_plan, usable_cpus
from ._data import Dataset
from ._distill import Distillation

__all__ = ["TrainConfig", "TrainResult", "TrainingError", "evaluate", "frozen_except", "num_threads",
           "threads_per_worker", "train_model", "train_spec"]

_WARMUP_START = 0.1


class TrainingError(RuntimeError):
    """Training failed in a way that says the architecture/hyper-parameters are bad.

    Attributes:
        reason: one line, e.g. ``"non-finite loss at epoch 1 step 3"``.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class TrainConfig:
    """How to train one network.

    Attributes:
        epochs: planned passes over the training split; the schedule spans them.
        batch_size: examples per step (clamped to the training-set size).
        lr: peak learning rate of SGD (Nesterov momentum 0.9), reached after warm-up.
        label_smoothing: cross-entropy label smoothing in [0, 1).
        seed: fixes weight initialisation (in :func:`train_spec`) and batch order.
        device: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda``, ``cuda:N``.
        threads: CPU threads for the duration of training (restored afterwards); ``None``
            leaves torch's setting alone. See :func:`threads_per_worker`. With
            ``adapt_threads`` this is the most the loop uses.
        adapt_threads: on the CPU, let a :class:`objectives.ThreadGovernor` run the steps at 1
            thread whenever that measures faster than ``threads`` (small networks, or another
            process holding a core), checking again every ~10 s; false keeps ``threads`` fixed.
        max_seconds: stop after this much wall time (checked after every step); the result
            records ``timed_out``.
        weight_decay: L2 penalty on convolution and linear weights.
        nesterov: Nesterov momentum (plain momentum 0.9 when false).
        warmup_fraction: share of the steps spent warming up (0: plain cosine annealing).
        augment: ``none`` or ``crop-flip`` (random crop after zero padding, horizontal flip; on
            the batch tensor on the device, see :func:`objectives.augment_batch`).
        amp: mixed precision on CUDA, one of ``auto`` (bf16 where supported, else fp16 with a
            grad scaler), ``off``, ``bf16``, ``fp16``; the CPU always trains in fp32. See
            :func:`objectives.device_plan`.

    Example:
        >>> TrainConfig(epochs=5, lr=0.1).batch_size
        128
    """

    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.1
    label_smoothing: float = 0.0
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    max_seconds: float | None = None
    weight_decay: float = 5e-4
    nesterov: bool = True
    warmup_fraction: float = 0.1
    augment: str = "none"
    amp: str = "auto"
    adapt_threads: bool = True

    def __post_init__(self) -> None:
        def positive_int(name: str, value: object) -> None:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

        def number(name: str, value: object, ok: Callable[[float], bool], accepted: str) -> None:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(float(value)):
                raise ValueError(f"{name} must be {accepted}, got {value!r}")

        positive_int("epochs", self.epochs)
        positive_int("batch_size", self.batch_size)
        number("lr", self.lr, lambda v: 0 < v < math.inf, "a positive number")
        number("label_smoothing", self.label_smoothing, lambda v: 0 <= v < 1, "a number in [0, 1)")
        number("weight_decay", self.weight_decay, lambda v: 0 <= v < math.inf, "a non-negative number")
        number("warmup_fraction", self.warmup_fraction, lambda v: 0 <= v < 1, "a number in [0, 1)")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"augment must be one of {', '.join(AUGMENTATIONS)}, got {self.augment!r}")
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {', '.join(AMP_MODES)}, got {self.amp!r}")
        if self.threads is not None:
            positive_int("threads", self.threads)
        if self.max_seconds is not None:
            number("max_seconds", self.max_seconds, lambda v: v > 0, "a positive number of seconds or None")


@dataclass
class TrainResult:
    """What one training run achieved.

    Attributes:
        val_accuracy: validation accuracy of the final weights.
        test_accuracy: test accuracy of the final weights, when asked for.
        train_loss: mean training loss over the last epoch run.
        epochs_run: epochs that trained on at least one batch (the last may be partial when
            ``timed_out``).
        seconds: wall time of training and evaluation.
        curve: validation accuracy after each epoch run (``None`` for an epoch that was not
            validated: see ``validate_epochs`` of :func:`train_model`).
        steps: optimiser steps taken.
        timed_out: stopped by ``max_seconds`` before the planned epochs.
        state_dict: the final weights on the CPU (``None`` when not kept).
        thread_steps: steps run at each CPU thread count (``{1: 300, 2: 20}``; empty on CUDA).
    """

    val_accuracy: float
    test_accuracy: float | None
    train_loss: float
    epochs_run: int
    seconds: float
    curve: list[float | None] = field(default_factory=list)
    steps: int = 0
    timed_out: bool = False
    state_dict: dict[str, torch.Tensor] | None = field(default=None, repr=False)
    thread_steps: dict[int, int] = field(default_factory=dict)


def threads_per_worker(workers: int) -> int:
    """CPU threads each of ``workers`` processes may use so that workers x threads <= the CPUs this
    process may run on (:func:`usable_cpus` in objectives/train/_accel.py: affinity and cgroup quota, not the
    machine's count).

    Example:
        >>> threads_per_worker(1) == usable_cpus()
        True
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    return max(1, usable_cpus() // workers)


@contextlib.contextmanager
def num_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` torch threads (None: unchanged), restoring the old count."""
    old = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's global RNG inside the block and restore the caller's state after it."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> float:
    """Classification accuracy of ``model`` on ``(x, y)``, in eval mode, without gradients.

    The model's training/eval mode is restored afterwards. ``x`` and ``y`` are moved to the
    model's device when needed.

    Raises:
        ValueError: empty or mismatched ``x``/``y``.

    Example:
        >>> acc = evaluate(model, data.x_val, data.y_val)  # doctest: +SKIP
    """
    if len(x) == 0 or len(x) != len(y):
        raise ValueError(f"need as many labels as inputs and at least one, got {len(x)} inputs, {len(y)} labels")
    param = next(model.parameters(), None)
    dev = param.device if param is not None else x.device
    was_training = model.training
    model.eval()
    correct = 0
    try:
        with torch.inference_mode():
            for i in range(0, len(x), batch_size):
                xb = x[i:i + batch_size].to(dev, non_blocking=True)
                yb = y[i:i + batch_size].to(dev, non_blocking=True)
                correct += int((model(xb).argmax(dim=1) == yb).sum())
    finally:
        model.train(was_training)
    return correct / len(x)


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _lr_factor(step: int, total: int, warmup_fraction: float) -> float:
    """Linear warm-up over the first ``warmup_fraction`` of steps (none at 0), then cosine decay to
    0 at ``total``."""
    warmup = max(1, int(round(warmup_fraction * total))) if warmup_fraction > 0 else 0
    if step < warmup:
        return _WARMUP_START + (1 - _WARMUP_START) * step / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _under(name: str, prefixes: Sequence[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@contextlib.contextmanager
def frozen_except(model: nn.Module, trainable: Sequence[str] | None) -> Iterator[list[nn.Module]]:
    """Freeze every parameter outside the ``trainable`` module prefixes (``None``: freeze none).

    Yields the frozen leaf modules, which the caller keeps in eval mode while training.
    ``requires_grad`` is restored on exit.
    """
    if trainable is None:
        yield []
        return
    saved = {n: p.requires_grad for n, p in model.named_parameters()}
    frozen = [m for n, m in model.named_modules() if not _under(n, trainable) and not any(True for _ in m.children())]
    try:
        for n, p in model.named_parameters():
            p.requires_grad_(_under(n.rsplit(".", 1)[0], trainable))
        yield frozen
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(saved[n])


@contextlib.contextmanager
def _cudnn_benchmark(plan: DevicePlan) -> Iterator[None]:
    """cuDNN autotuning for the duration of training, when the plan asks for it (restored after)."""
    if not plan.cudnn_benchmark:
        yield
        return
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def _placed(model: nn.Module, data: Dataset, plan: DevicePlan) -> tuple[nn.Module, Dataset]:
    """``model`` and ``data`` on the plan's device, in its memory format (pinned copy on CUDA)."""
    if not plan.channels_last:
        return model.to(plan.device), data.to(plan.device)
    model = model.to(plan.device).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return model, data.to(plan.device, pin_memory=plan.pin_memory, channels_last=True)


def train_model(model: nn.Module, data: Dataset, config: TrainConfig, *, evaluate_test: bool = False,
                on_epoch: Callable[[int, float], None] | None = None, keep_state: bool = True,
                teacher: Distillation | None = None, trainable: Sequence[str] | None = None,
                patience: int | None = None, validate_epochs: Collection[int] | None = None) -> TrainResult:
    """Train ``model`` in place on ``data`` and report validation (and test) accuracy.

    Args:
        model: any classifier mapping ``N x C x H x W`` to ``N x num_classes`` logits.
        data: the dataset; moved to the training device once.
        config: optimiser, schedule, seed, device, threads and time limit.
        evaluate_test: also measure test accuracy of the final weights.
        on_epoch: called as ``on_epoch(epoch, val_accuracy)`` after each epoch (1-based);
            exceptions it raises propagate (e.g. a pruner stopping the trial).
        keep_state: return the final weights (CPU copies) in ``TrainResult.state_dict``.
        teacher: distil from a teacher (the loss is then :func:`objectives.kd_loss`) instead of
            cross-entropy on the labels alone. Without augmentation its logits of the training
            split are computed once (or taken as given); with augmentation the teacher model (eval
            mode, no gradients, moved to the training device) runs on every augmented batch.
        trainable: module name prefixes that train (``["blocks.3"]``); ``None`` trains all.
        patience: stop when validation accuracy has not improved for this many epochs and
            restore the best epoch's weights (``val_accuracy`` is then the best); ``None`` runs
            every epoch and keeps the last weights.
        validate_epochs: validate only after these epochs and the last one run (``None``: after
            every epoch; ignored with ``patience``, which needs every epoch). Validation leaves
            the weights, BatchNorm statistics and random state alone, so the final accuracy is
            the same either way; an epoch not validated is ``None`` in the curve and ``nan`` for
            ``on_epoch``. What it saves: a full validation pass per skipped epoch.

    Returns:
        A :class:`TrainResult`.

    Raises:
        TrainingError: the loss became NaN or infinite.
        ValueError: an empty training split; teacher logits for another number of examples; a
            teacher without its model for augmented training.

    Example:
        >>> data = load_dataset("digits")  # doctest: +SKIP
        >>> spec = sample_spec(get_space("plain", input_shape=data.input_shape), seed=0)  # doctest: +SKIP
        >>> train_spec(spec, data, TrainConfig(epochs=10)).val_accuracy > 0.9  # doctest: +SKIP
        True
    """
    t0 = time.perf_counter()
    dev = resolve_device(config.device)
    plan = device_plan(dev, config.amp)
    with num_threads(config.threads), _seeded(config.seed, dev), frozen_except(model, trainable) as frozen, \
            _cudnn_benchmark(plan):
        model, data = _placed(model, data, plan)
        n = len(data.y_train)
        if n == 0:
            raise ValueError("the training split is empty")
        if teacher is not None:
            teacher = teacher.for_training(data.x_train, config.augment, plan.channels_last)
        batch = min(config.batch_size, n)
        steps_per_epoch = math.ceil(n / batch)
        total_steps = config.epochs * steps_per_epoch
        optimizer = torch.optim.SGD(_param_groups(model, config.weight_decay), lr=config.lr, momentum=0.9,
                                    nesterov=config.nesterov)
        scaler = torch.amp.GradScaler(dev.type) if plan.grad_scaler else None
        loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
        gen = torch.Generator().manual_seed(config.seed)
        governor = ThreadGovernor(torch.get_num_threads()) if dev.type == "cpu" and config.adapt_threads else None

        curve: list[float | None] = []
        best: tuple[float, dict[str, torch.Tensor]] | None = None
        since_best = 0
        step = 0
        train_loss = math.nan
        timed_out = False
        epochs_run = 0
        for epoch in range(1, config.epochs + 1):
            model.train()
            for m in frozen:
                m.eval()
            perm = torch.randperm(n, generator=gen).to(dev)
            # Each step's loss stays on the device; the epoch reads them back once (a read per step
            # would make a GPU finish every step before the host could queue the next).
            step_losses = torch.zeros(steps_per_epoch, device=dev)
            sizes: list[int] = []
            lrs: list[float] = []
            seen = 0
            for i in range(steps_per_epoch):
                idx = perm[i * batch:(i + 1) * batch]
                if len(idx) < 2 and seen:  # a batch of one breaks BatchNorm; skip the remainder
                    break
                for group in optimizer.param_groups:
                    group["lr"] = config.lr * _lr_factor(step, total_steps, config.warmup_fraction)
                with governor.step() if governor is not None else contextlib.nullcontext():
                    x = augment_batch(data.x_train[idx], gen, config.augment)
                    y = data.y_train[idx]
                    with plan.autocast():
                        out = model(x)
                        loss = teacher.loss(out, idx, y, x) if teacher is not None else loss_fn(out, y)
                    step_losses[i] = loss.detach()
                    optimizer.zero_grad(set_to_none=True)
                    if scaler is not None:  # fp16: scaled loss, steps with inf/NaN gradients skipped
                        scaler.scale(loss).backward()
                        scaler.step(optimizer)
                        scaler.update()
                    else:
                        loss.backward()
                        optimizer.step()
                sizes.append(len(idx))
                lrs.append(optimizer.param_groups[0]["lr"])
                step += 1
                seen += len(idx)
                if config.max_seconds is not None and time.perf_counter() - t0 > config.max_seconds:
                    timed_out = epoch < config.epochs or i < steps_per_epoch - 1
                    break
            values = step_losses[:len(sizes)].tolist()  # the epoch's one read from the device
            for k, value in enumerate(values):
                if not math.isfinite(value):
                    raise TrainingError(f"non-finite loss at epoch {epoch} step {k + 1} (loss={value}, "
                                        f"lr={lrs[k]:.3g})")
            epochs_run = epoch
            train_loss = sum(v * s for v, s in zip(values, sizes, strict=True)) / max(seen, 1)
            if config.max_seconds is not None and epoch < config.epochs and \
                    time.perf_counter() - t0 > config.max_seconds:
                timed_out = True
            last = epoch == config.epochs or timed_out
            if patience is not None or validate_epochs is None or last or epoch in validate_epochs:
                with plan.autocast():
                    val_acc = evaluate(model, data.x_val, data.y_val)
                curve.append(val_acc)
            else:
                val_acc = math.nan
                curve.append(None)
            if on_epoch is not None:
                on_epoch(epoch, val_acc)
            if patience is not None:
                if best is None or val_acc > best[0]:
                    best, since_best = (val_acc, copy.deepcopy(model.state_dict())), 0
                else:
                    since_best += 1
                    if since_best >= patience:
                        break
            if timed_out:
                break
        if best is not None and best[0] > (curve[-1] or 0.0):
            model.load_state_dict(best[1])
        model.eval()
        with plan.autocast():
            test_acc = evaluate(model, data.x_test, data.y_test) if evaluate_test and len(data.y_test) else None
        state = {k: v.detach().to("cpu", memory_format=torch.contiguous_format, copy=True)
                 for k, v in model.state_dict().items()} if keep_state else None
        thread_steps = dict(governor.steps_at) if governor is not None else \
            {torch.get_num_threads(): step} if dev.type == "cpu" else {}
    final = curve[-1]
    assert final is not None  # the last epoch run is always validated
    val = best[0] if best is not None and best[0] > final else final
    return TrainResult(val_accuracy=val, test_accuracy=test_acc, train_loss=train_loss, epochs_run=epochs_run,
                       seconds=time.perf_counter() - t0, curve=curve, steps=step, timed_out=timed_out,
                       state_dict=state, thread_steps=thread_steps)


def train_spec(spec: ArchSpec, data: Dataset, config: TrainConfig, *, evaluate_test: bool = False,
               on_epoch: Callable[[int, float], None] | None = None, keep_state: bool = True,
               init: Callable[[nn.Module], object] | None = None,
               validate_epochs: Collection[int] | None = None) -> TrainResult:
    """Build ``spec`` for ``data`` (weights initialised under ``config.seed``) and train it.

    ``init``, if given, is called on the built model before training (to start from inherited
    weights, say); the other keyword arguments are those of :func:`train_model`.

    Raises:
        TrainingError: the loss became NaN or infinite.
        search_spaces.SpecError: the data have an input shape or class count the builder rejects.

    Example:
        >>> spec = sample_spec(get_space("plain", input_shape=(1, 8, 8)), seed=0)  # doctest: +SKIP
        >>> result = train_spec(spec, load_dataset("digits"), TrainConfig(epochs=10))  # doctest: +SKIP
    """
    dev = resolve_device(config.device)
    with num_threads(config.threads), _seeded(config.seed, dev):
        model = build_model(spec, data.input_shape, data.num_classes)
    if init is not None:
        init(model)
    return train_model(model, data, config, evaluate_test=evaluate_test, on_epoch=on_epoch, keep_state=keep_state,
                       validate_epochs=validate_epochs)
