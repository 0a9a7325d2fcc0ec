"""Knowledge distillation as a loss and a teacher for the one training loop (``train_model``).

Refinement (docs/methods.md section 2) fine-tunes a student against the soft labels of a teacher, the
network before fusion, with temperature ``T = 4`` and the hard labels besides. The trainer
holds the dataset as tensors. Without augmentation the teacher's logits of the training split
are computed once (eval mode) and indexed per batch: :func:`teacher_logits` makes them. With
augmentation (``crop-flip``, natural images) the student sees a different crop and flip of an
image every epoch, and logits of the clean image are not the teacher's answer for it: the
teacher model then runs on every augmented batch (eval mode, no gradients).
:class:`Distillation` carries the teacher into :func:`objectives.train_model`, and
:func:`kd_loss` is the loss it then minimises.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Distillation", "kd_loss", "teacher_logits"]


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor, *, temperature: float = 4.0,
            alpha: float = 0.9) -> torch.Tensor:
    """Knowledge-distillation loss (Hinton, Vinyals and Dean, "Distilling the Knowledge in a
    Neural Network", 2015), docs/methods.md section 2's soft and hard labels together.

    ``alpha * T^2 * KL(softmax(z_t/T) || softmax(z_s/T)) + (1 - alpha) * CE(z_s, y)``, where the
    soft labels are ``q_i = exp(z_i/T) / sum_j exp(z_j/T)``. ``T^2`` keeps the soft term's
    gradients on the scale of the hard term's as ``T`` changes (Hinton et al., section 2).

    Example:
        >>> z = torch.randn(4, 10)
        >>> float(kd_loss(z, z, torch.zeros(4, dtype=torch.long), alpha=1.0)) == 0.0
        True
    """
    t = float(temperature)
    log_p = F.log_softmax(student / t, dim=1)
    q = F.softmax(teacher / t, dim=1)
    soft = F.kl_div(log_p, q, reduction="batchmean") * (t * t)
    if alpha >= 1.0:
        return alpha * soft
    return alpha * soft + (1.0 - alpha) * F.cross_entropy(student, targets)


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


@dataclass(frozen=True)
class Distillation:
    """A teacher for :func:`objectives.train_model`: its ``logits`` for every training example
    (:func:`teacher_logits`), its ``model``, or both, and the loss's ``temperature`` and ``alpha``
    (see :func:`kd_loss`).

    Training without augmentation uses the logits (computed once from ``model`` when not given);
    augmented training needs ``model``, which runs on each augmented batch.

    Raises:
        ValueError: neither ``logits`` nor ``model``.

    Example:
        >>> soft = Distillation(model=teacher, temperature=4.0)  # doctest: +SKIP
        >>> train_model(student, data, TrainConfig(augment="crop-flip"), teacher=soft)  # doctest: +SKIP
    """

    logits: torch.Tensor | None = None
    temperature: float = 4.0
    alpha: float = 0.9
    model: nn.Module | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.logits is None and self.model is None:
            raise ValueError("a Distillation needs the teacher's logits of the training split or the teacher model")

    def for_training(self, x_train: torch.Tensor, augment: str, channels_last: bool = False) -> Distillation:
        """This teacher as :func:`objectives.train_model` uses it on ``x_train`` (on the training
        device) with augmentation ``augment``: the logits on that device when ``augment`` is
        ``none``, else the model there (moved in place; NHWC with ``channels_last``).

        Raises:
            ValueError: logits for another number of examples; augmentation without ``model``.
        """
        dev = x_train.device
        if augment != "none":
            if self.model is None:
                raise ValueError(f"augment {augment!r}: distilling needs the teacher model (Distillation(model=...)), "
                                 "its logits of un-augmented images do not match augmented batches")
            model = self.model.to(dev)
            if channels_last:
                model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
            return replace(self, logits=None, model=model)
        if self.logits is not None:
            logits = self.logits
        else:
            assert self.model is not None
            logits = teacher_logits(self.model.to(dev), x_train)
        if len(logits) != len(x_train):
            raise ValueError(f"teacher logits for {len(logits)} examples, the training split has {len(x_train)}")
        return replace(self, logits=logits.to(dev), model=None)

    def batch_logits(self, index: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """The teacher's logits of a batch: its stored logits of training examples ``index``, or
        (no logits) its model's of the batch ``x`` itself, in eval mode, without gradients."""
        if self.logits is not None:
            return self.logits[index]
        if self.model is None or x is None:
            raise ValueError("a teacher without logits needs its model and the batch")
        model, was = self.model, self.model.training
        if was:
            model.eval()
        try:
            with torch.no_grad():
                return model(x)
        finally:
            if was:
                model.train()

    def loss(self, student: torch.Tensor, index: torch.Tensor, targets: torch.Tensor,
             x: torch.Tensor | None = None) -> torch.Tensor:
        """The loss of a batch: the student's logits against the teacher's of the same examples
        (:meth:`batch_logits`: of the augmented batch ``x`` when the teacher is a model)."""
        return kd_loss(student, self.batch_logits(index, x), targets, temperature=self.temperature,
                       alpha=self.alpha)
