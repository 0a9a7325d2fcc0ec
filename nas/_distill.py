"""Fine-tuning for refinement: SGD with cosine annealing, optional distillation, frozen layers.

``objectives.train_model`` trains a network from its initialisation (Nesterov, warm-up, peak
``lr`` 0.1). Refinement fine-tunes *trained* networks with SEEDS.md section 2's settings
instead: plain SGD, momentum 0.9, ``lr`` 0.01, weight decay 1e-4, batch 64, cosine annealing
to zero over each fine-tuning run (every run restarts the schedule: the paper's "cosine
annealing with a restart"). Two things the trainer has no place for:

* **distillation:** the loss is :func:`nas._surgery.kd_loss` against a teacher's logits.
  The trainer uses no augmentation, so the teacher's logits of the training set are computed
  once (eval mode) and indexed per batch, instead of running the teacher on every step;
* **frozen layers:** only units under the ``trainable`` prefixes get gradients; the others
  are frozen *completely*: no gradient, and kept in eval mode so their BatchNorm statistics
  do not move either.

Both loops share the trainer's conventions: the dataset as tensors, a seeded permutation per
epoch, weight decay on conv/linear weights only, a non-finite loss raises
``objectives.TrainingError``, torch threads set for the run and restored.

(DESIGN.md puts the distillation loss in ``objectives``; it lives here with the refinement
that uses it, and depends on nothing in ``nas``, so it can move there as is.)
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from objectives import Dataset, TrainConfig, TrainingError, evaluate, num_threads, resolve_device

from ._surgery import kd_loss

__all__ = ["FinetuneResult", "finetune", "frozen_except", "teacher_logits"]


@dataclass
class FinetuneResult:
    """Outcome of one fine-tuning run.

    Attributes:
        val_accuracy: validation accuracy of the weights left in the model.
        epochs_run: epochs trained (fewer than planned when patience stopped the run).
        seconds: wall time.
        curve: validation accuracy after every epoch.
    """

    val_accuracy: float
    epochs_run: int
    seconds: float
    curve: list[float] = field(default_factory=list)


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


@torch.no_grad()
def teacher_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Logits of ``model`` (eval mode) for every row of ``x``, on ``x``'s device."""
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    try:
        return torch.cat([model(x[i:i + batch_size].to(dev)).to(x.device) for i in range(0, len(x), batch_size)])
    finally:
        model.train(was)


def finetune(model: nn.Module, data: Dataset, config: TrainConfig, *, teacher: torch.Tensor | None = None,
             temperature: float = 4.0, alpha: float = 0.9, trainable: Sequence[str] | None = None,
             patience: int | None = None, on_epoch: Callable[[int, float], None] | None = None) -> FinetuneResult:
    """Fine-tune ``model`` in place on ``data.x_train`` and return its validation accuracy.

    Args:
        model: a trained classifier.
        data: the dataset (moved to the training device once).
        config: ``epochs``, ``batch_size``, ``lr``, ``weight_decay``, ``seed``, ``device``,
            ``threads`` (the other fields are not used).
        teacher: logits of a teacher for every training example (see :func:`teacher_logits`);
            the loss is then :func:`nas._surgery.kd_loss` with ``temperature`` and ``alpha``,
            else cross-entropy.
        trainable: module name prefixes that train (``["blocks.3"]``); ``None`` trains all.
        patience: stop when validation accuracy has not improved for this many epochs and
            restore the best epoch's weights (the paper's early stopping); ``None`` runs all
            epochs and keeps the last weights.
        on_epoch: called as ``on_epoch(epoch, val_accuracy)``; exceptions propagate.

    Raises:
        objectives.TrainingError: the loss became NaN or infinite.
    """
    t0 = time.perf_counter()
    dev = resolve_device(config.device)
    with num_threads(config.threads), torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(config.seed)
        model.to(dev)
        data = data.to(dev)
        soft = teacher.to(dev) if teacher is not None else None
        n = len(data.y_train)
        if soft is not None and len(soft) != n:
            raise ValueError(f"teacher logits for {len(soft)} examples, the training split has {n}")
        batch = min(config.batch_size, n)
        steps = math.ceil(n / batch)
        total = config.epochs * steps
        gen = torch.Generator().manual_seed(config.seed)
        ce = nn.CrossEntropyLoss()
        curve: list[float] = []
        best: tuple[float, dict[str, torch.Tensor]] | None = None
        since_best = 0
        with frozen_except(model, trainable) as frozen:
            params = [p for p in model.parameters() if p.requires_grad]
            groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": config.weight_decay},
                      {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
            opt = torch.optim.SGD(groups, lr=config.lr, momentum=0.9)
            step = 0
            for epoch in range(1, config.epochs + 1):
                model.train()
                for m in frozen:
                    m.eval()
                perm = torch.randperm(n, generator=gen).to(dev)
                for i in range(steps):
                    idx = perm[i * batch:(i + 1) * batch]
                    if len(idx) < 2 and i:  # a batch of one breaks BatchNorm
                        break
                    for g in opt.param_groups:
                        g["lr"] = config.lr * 0.5 * (1 + math.cos(math.pi * step / total))
                    out = model(data.x_train[idx])
                    y = data.y_train[idx]
                    loss = (kd_loss(out, soft[idx], y, temperature=temperature, alpha=alpha) if soft is not None
                            else ce(out, y))
                    if not math.isfinite(float(loss.detach())):
                        raise TrainingError(f"non-finite loss while fine-tuning, epoch {epoch} step {i + 1}")
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    step += 1
                acc = evaluate(model, data.x_val, data.y_val)
                curve.append(acc)
                if on_epoch is not None:
                    on_epoch(epoch, acc)
                if patience is not None:
                    if best is None or acc > best[0]:
                        best, since_best = (acc, copy.deepcopy(model.state_dict())), 0
                    else:
                        since_best += 1
                        if since_best >= patience:
                            break
        if best is not None and best[0] > curve[-1]:
            model.load_state_dict(best[1])
        model.eval()
    return FinetuneResult(max(curve) if best is not None else curve[-1], len(curve), time.perf_counter() - t0, curve)
