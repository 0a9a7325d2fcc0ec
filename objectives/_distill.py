"""Knowledge distillation as a loss and a teacher for the one training loop (``train_model``).

Refinement (docs/methods.md section 2) fine-tunes a student against the soft labels of a teacher, the
network before fusion, with temperature ``T = 4`` and the hard labels besides. The trainer
holds the dataset as tensors and uses no augmentation, so the teacher's logits of the training
split are computed once (eval mode) and indexed per batch: :func:`teacher_logits` makes them,
:class:`Distillation` carries them into :func:`objectives.train_model`, and :func:`kd_loss` is
the loss it then minimises.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    (:func:`teacher_logits`), and the loss's ``temperature`` and ``alpha`` (see :func:`kd_loss`)."""

    logits: torch.Tensor
    temperature: float = 4.0
    alpha: float = 0.9

    def loss(self, student: torch.Tensor, index: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The loss of a batch: the student's logits against the teacher's of the same examples."""
        return kd_loss(student, self.logits[index], targets, temperature=self.temperature, alpha=self.alpha)
