"""Zero-cost proxies: scores of an *untrained* network that rank architectures before training.

Each proxy is computed on a freshly initialised network (weights under ``seed``) from at most
one mini-batch, in milliseconds to a second on a CPU. Higher is better for every proxy here
(``params`` and ``flops`` included: in small-network spaces more capacity tends to mean more
accuracy, which is why they are the naive baselines). The papers each formula comes from are
cited at the formula; docs/methods.md section 3 says how lightnas uses them.

Published rank correlations with trained accuracy (Spearman rho, NAS-Bench-201 CIFAR-10,
Abdelfattah et al., "Zero-Cost Proxies for Lightweight NAS", ICLR 2021, table 2): synflow
0.74, jacob_cov 0.73, snip 0.60, grad_norm 0.60, a vote of synflow, jacob_cov and snip 0.82.
BENCHMARKS.md section 9 has what they do on this product's spaces.

A score that cannot be computed (a singular kernel, an overflow) is ``-inf``: the lowest rank.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from search_spaces import ArchSpec, InputError, build_model

__all__ = ["PROXIES", "VOTE", "VOTE_MEMBERS", "ProxyBatch", "ProxyError", "check_proxy", "proxy_batch",
           "score_arch", "score_model", "vote_scores"]

#: The vote of Abdelfattah et al. (2021, section 5): synflow, jacob_cov and snip.
VOTE = "vote"
VOTE_MEMBERS = ("synflow", "jacob_cov", "snip")


class ProxyError(InputError):
    """An unknown proxy name; the message lists the accepted ones."""


@dataclass(frozen=True)
class ProxyBatch:
    """The one mini-batch the data-dependent proxies see (inputs and labels, on one device)."""

    x: torch.Tensor
    y: torch.Tensor
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.x.shape[1:])  # type: ignore[return-value]


def proxy_batch(x: torch.Tensor, y: torch.Tensor, num_classes: int, *, batch_size: int = 64,
                seed: int = 0) -> ProxyBatch:
    """``batch_size`` examples of ``(x, y)`` drawn without replacement under ``seed``: the same
    batch for every architecture, so scores compare networks and not batches."""
    if len(x) == 0 or len(x) != len(y):
        raise ValueError(f"need as many labels as inputs and at least one, got {len(x)} inputs, {len(y)} labels")
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(x), generator=gen)[:batch_size].to(x.device)
    return ProxyBatch(x[idx].float(), y[idx], num_classes)


def _weights_and_grads(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(weight, its gradient)`` of every convolution and linear layer that has a gradient."""
    out = []
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)) and m.weight.grad is not None:
            out.append((m.weight.detach(), m.weight.grad))
    return out


def _finite(value: float) -> float:
    return value if math.isfinite(value) else -math.inf


def _ce_grads(model: nn.Module, batch: ProxyBatch) -> None:
    """Gradients of the cross-entropy of one mini-batch, model in train mode (as Abdelfattah
    et al. compute grad_norm and snip)."""
    model.train()
    model.zero_grad(set_to_none=True)
    loss = nn.functional.cross_entropy(model(batch.x), batch.y)
    loss.backward()


def synflow(model: nn.Module, batch: ProxyBatch) -> float:
    """SynFlow: ``R = 1^T (prod_l |W_l|) 1``, score ``sum_theta theta * dR/dtheta``.

    Tanaka et al., "Pruning neural networks without any data by iteratively conserving synaptic
    flow", NeurIPS 2020, eq. 6 (the synaptic saliency ``dR/dtheta * theta`` of eq. 1 with the
    all-ones input); as a NAS proxy, Abdelfattah et al. 2021, section 3: every parameter made
    positive (``|theta|``), BatchNorm removed, float64, an all-ones input of one example, summed
    over convolution and linear weights. Data-free: the batch gives only the input shape.
    """
    net = copy.deepcopy(model).double()
    for m in list(net.modules()):  # BatchNorm removed (Abdelfattah et al.: bn=False)
        for child_name, child in list(m.named_children()):
            if isinstance(child, nn.modules.batchnorm._BatchNorm):
                setattr(m, child_name, nn.Identity())
    with torch.no_grad():
        for p in net.state_dict().values():
            p.abs_()
    net.eval()
    net.zero_grad(set_to_none=True)
    ones = torch.ones((1, *batch.input_shape), dtype=torch.float64, device=batch.x.device)
    torch.sum(net(ones)).backward()
    total = float(sum(float((w * g).sum()) for w, g in _weights_and_grads(net)))
    return _finite(total)


def grad_norm(model: nn.Module, batch: ProxyBatch) -> float:
    """grad_norm: ``sum_l ||dL/dW_l||_2`` over weight layers, cross-entropy of one batch.

    Abdelfattah et al., "Zero-Cost Proxies for Lightweight NAS", ICLR 2021, section 3.1.
    """
    _ce_grads(model, batch)
    total = float(sum(float(g.norm()) for _, g in _weights_and_grads(model)))
    return _finite(total)


def snip(model: nn.Module, batch: ProxyBatch) -> float:
    """SNIP: ``sum_theta |theta * dL/dtheta|`` over weight layers, cross-entropy of one batch.

    Lee et al., "SNIP: Single-shot Network Pruning based on Connection Sensitivity", ICLR 2019,
    eq. 3 (the connection sensitivity ``|g_j|`` as its first-order form ``|dL/dw * w|``); summed
    over the network as in Abdelfattah et al. 2021, section 3.1.
    """
    _ce_grads(model, batch)
    total = float(sum(float((w * g).abs().sum()) for w, g in _weights_and_grads(model)))
    return _finite(total)


def naswot(model: nn.Module, batch: ProxyBatch) -> float:
    """NASWOT: ``log |K_H|`` with ``K_H[i, j] = N_A - d_H(c_i, c_j)``.

    Mellor et al., "Neural Architecture Search without Training", ICML 2021, section 3 (eq. 2):
    ``c_i`` is the binary code of which ReLU units are active for input ``i`` of the batch,
    ``N_A`` the number of units, ``d_H`` the Hamming distance. Inputs that the network cannot
    tell apart have equal codes and make ``K_H`` singular: ``-inf``.
    """
    codes: list[torch.Tensor] = []

    def hook(_m: nn.Module, _inp: object, out: torch.Tensor) -> None:
        codes.append((out.detach().flatten(1) > 0).double())

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.ReLU, nn.ReLU6))]
    try:
        model.eval()
        with torch.no_grad():
            model(batch.x)
    finally:
        for h in handles:
            h.remove()
    if not codes:
        return -math.inf
    c = torch.cat(codes, dim=1)
    # N_A - d_H(c_i, c_j) = units where both are active + units where both are inactive
    k = c @ c.T + (1 - c) @ (1 - c).T
    sign, logdet = torch.linalg.slogdet(k)
    return float(logdet) if float(sign) > 0 else -math.inf


def jacob_cov(model: nn.Module, batch: ProxyBatch) -> float:
    """jacob_cov: ``-sum_i [log(s_i + k) + 1/(s_i + k)]``, ``k = 1e-5``, over the eigenvalues
    ``s_i`` of the correlation matrix of the input Jacobians of the batch.

    Mellor et al., "Neural Architecture Search without Training", arXiv:2006.04647v1 (2020),
    section 3 (eq. 2); the proxy named jacob_cov in Abdelfattah et al. 2021. ``J_i =
    d(sum of outputs)/dx_i``; networks whose Jacobians are less correlated across inputs score
    higher. A network whose output ignores its input has no defined correlation: ``-inf``.
    """
    model.train()
    x = batch.x.clone().requires_grad_(True)
    model.zero_grad(set_to_none=True)
    model(x).sum().backward()
    assert x.grad is not None
    jac = x.grad.detach().flatten(1).double()
    if not bool(torch.all(jac.std(dim=1) > 0)):
        return -math.inf
    corr = torch.corrcoef(jac)
    eig = torch.linalg.eigvalsh(corr)
    k = 1e-5
    return _finite(-float(torch.sum(torch.log(eig.clamp_min(0) + k) + 1.0 / (eig.clamp_min(0) + k))))


def _params(model: nn.Module, batch: ProxyBatch) -> float:
    """Trainable parameters (the naive baseline of Abdelfattah et al. 2021, table 2)."""
    return float(sum(p.numel() for p in model.parameters() if p.requires_grad))


def _flops(model: nn.Module, batch: ProxyBatch) -> float:
    """FLOPs (2 x MACs) of one example, from the analytic cost model (objectives/cost/_analytic.py)."""
    from ..cost._cost import estimate_cost

    spec = getattr(model, "spec", None)
    if not isinstance(spec, ArchSpec):
        raise ProxyError("proxy flops needs a lightnas network (model.spec)")
    return float(estimate_cost(spec, batch.input_shape, batch.num_classes).totals["flops"])


#: name -> scoring function(model, batch); every one is "higher is better".
PROXIES: dict[str, Callable[[nn.Module, ProxyBatch], float]] = {
    "synflow": synflow,
    "naswot": naswot,
    "jacob_cov": jacob_cov,
    "grad_norm": grad_norm,
    "snip": snip,
    "params": _params,
    "flops": _flops,
}


def check_proxy(name: str, *, allow_vote: bool = True) -> str:
    """``name`` if it is a proxy (or ``vote``); raises :class:`ProxyError` listing the accepted ones."""
    accepted = [*PROXIES, VOTE] if allow_vote else list(PROXIES)
    if name not in accepted:
        raise ProxyError(f"unknown proxy {name!r}; accepted: {', '.join(accepted)}")
    return name


def score_model(model: nn.Module, batch: ProxyBatch, names: Sequence[str], *,
                threads: int | None = 1) -> dict[str, float]:
    """Every proxy of ``names`` for ``model`` (each on a fresh copy: gradients and modes do not
    leak from one proxy to the next, and ``model`` is left as it was), on ``threads`` torch
    threads (one by default: work this small only loses to a second thread on a busy CPU)."""
    from ._train import num_threads

    for n in names:
        check_proxy(n, allow_vote=False)
    out = {}
    with num_threads(threads):
        for n in names:
            net = copy.deepcopy(model)
            try:
                out[n] = PROXIES[n](net, batch)
            except (RuntimeError, FloatingPointError):  # a numerical failure ranks the network last
                out[n] = -math.inf
    return out


def score_arch(arch: ArchSpec, batch: ProxyBatch, names: Sequence[str], *, seed: int = 0,
               threads: int | None = 1) -> dict[str, float]:
    """The proxies of ``names`` for ``arch`` built for the batch's input shape, weights
    initialised under ``seed`` (as training initialises them).

    Example:
        >>> scores = score_arch(arch, proxy_batch(x, y, 10), ["synflow", "naswot"])  # doctest: +SKIP
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(arch, batch.input_shape, batch.num_classes).to(batch.x.device)
    return score_model(model, batch, names, threads=threads)


def vote_scores(scores: Sequence[dict[str, float]], members: Sequence[str] = VOTE_MEMBERS) -> list[float]:
    """The vote of ``members`` over a set of networks: each network's mean rank (1 = lowest)
    across the member proxies, so a network every proxy prefers wins.

    Abdelfattah et al. 2021, section 5, combine synflow, jacob_cov and snip by majority vote over
    pairs; the mean rank (a Borda count) is the same vote extended from pairs to a set.
    """
    from scipy.stats import rankdata

    if not scores:
        return []
    total = [0.0] * len(scores)
    for m in members:
        ranks = rankdata([s[m] for s in scores])  # -inf ranks lowest; ties share their mean rank
        for i, r in enumerate(ranks):
            total[i] += float(r)
    return [t / len(members) for t in total]
