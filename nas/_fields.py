"""What every setting means and its default, in one place.

The study spec (:class:`nas.search.StudySpec`, its fidelity and early-stopping settings) and the
refinement settings (:class:`nas.refine.RefineSettings`) declare their fields from these entries,
and the CLI's help is generated from the same entries, so a changed default cannot make the help
lie. This module imports nothing heavy: ``nas --help`` reads it without loading torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["AUTO_SAMPLER", "EARLY_STOP", "FIDELITY", "PROXY_NAMES", "PRUNERS", "REFINE", "SAMPLERS",
           "SINGLE_METRIC_PRUNERS", "STUDY", "Doc",
           "declare", "help_text"]

SAMPLERS = ("auto", "tpe", "nsga2", "gp", "random")
#: What ``auto`` runs, measured (BENCHMARKS.md section 11): with 40 networks trained within budget
#: on digits and on MNIST, TPE reached random search's final hypervolume in 0.31 / 0.28 of random's
#: wall time (2 of 3 seeds <= 1/3 on both), GP in 0.49 / 0.84: the GP's fit costs seconds per trial
#: (it grows with the cube of the trials seen), as much as a low-fidelity trial. ``gp`` stays a
#: choice for studies whose trials take minutes (docs/design.md, "Samplers").
AUTO_SAMPLER = "tpe"
#: Zero-cost proxies a study can be guided by (``objectives.PROXIES`` and the vote; kept here so
#: that ``nas --help`` does not import torch; tests/test_proxies.py checks they agree).
PROXY_NAMES = ("synflow", "naswot", "jacob_cov", "grad_norm", "snip", "params", "flops", "vote")
#: Early stopping of poor trials on validation accuracy. ``median``, ``asha``, ``hyperband``:
#: Optuna's pruners (Tune's ASHA on Ray), single-objective (accuracy) studies only. ``pareto``:
#: lightnas's Pareto-aware rule, any study with accuracy as an objective.
PRUNERS = ("none", "median", "asha", "hyperband", "pareto")
#: The pruners that rank trials on the one metric accuracy.
SINGLE_METRIC_PRUNERS = ("median", "asha", "hyperband")


@dataclass(frozen=True)
class Doc:
    """A field's meaning and default (``factory`` for a mutable default; ``required``: none)."""

    help: str
    default: Any = None
    factory: Callable[[], Any] | None = None
    required: bool = False

    def shown_default(self) -> str | None:
        """The default as the CLI shows it, or None when there is nothing to show."""
        value = self.factory() if self.factory is not None else self.default
        if value is None or value in ("", {}, []) or hasattr(value, "model_fields"):
            return None
        if isinstance(value, bool):
            return "on" if value else "off"
        if isinstance(value, (list, tuple)):
            return ",".join(map(str, value))
        return str(value)


def declare(doc: Doc, **constraints: Any) -> Any:
    """A pydantic ``Field`` with this entry's default and description (and the constraints)."""
    from pydantic import Field

    if doc.required:
        return Field(description=doc.help, **constraints)
    if doc.factory is not None:
        return Field(default_factory=doc.factory, description=doc.help, **constraints)
    return Field(default=doc.default, description=doc.help, **constraints)


def help_text(doc: Doc) -> str:
    """The CLI help of a field: its meaning, and its default when it has one."""
    shown = doc.shown_default()
    return doc.help if shown is None else f"{doc.help} (default {shown})"


STUDY: dict[str, Doc] = {
    "name": Doc("study name", required=True),
    "space": Doc("search space (see 'nas spaces')", required=True),
    "space_options": Doc("options of the search space (see 'nas spaces')", factory=dict),
    "data": Doc("digits | idx:DIR | cifar10:DIR | npz:FILE", "digits"),
    "budget": Doc("resource budget, e.g. 'flops<=5M params<=100k peak_mem<=256KiB'", ""),
    "budget_weights": Doc("FS-DNN weight per budgeted resource (1/n each when not given)", factory=dict),
    "objectives": Doc("accuracy, hw_cost or any cost resource", factory=lambda: ["accuracy", "hw_cost"]),
    "sampler": Doc(" | ".join(SAMPLERS) + f" (auto: {AUTO_SAMPLER}, the fastest to a good front in BENCHMARKS.md "
                   "section 11; gp, Optuna's constrained Gaussian-process sampler, when trials take minutes)", "auto"),
    "proxy": Doc("zero-cost proxy that picks which of several sampled candidates within the budget is trained: "
                 + " | ".join(PROXY_NAMES) + " (none when not given)"),
    "proxy_candidates": Doc("--proxy: candidates drawn from the sampler per trial", 8),
    "pruner": Doc("none | pareto (Pareto-aware early stopping, any objectives) | median | asha | hyperband "
                  "(objective accuracy only)", "none"),
    "early_stop": Doc("settings of the pareto pruner"),
    "inherit_weights": Doc("start each network from the weights of the most overlapping trained architecture of "
                           "the study (network morphism)", False),
    "seed": Doc("seed of samplers, data splits and training", 0),
    "device": Doc("torch device: auto | cpu | cuda | cuda:N", "auto"),
    "amp": Doc("mixed precision on CUDA: auto (bf16 where supported, else fp16 with loss scaling) | off | bf16 | "
               "fp16; the CPU always trains in fp32", "auto"),
    "cost_device": Doc("device profile for latency and energy (see 'nas hardware profiles')", "rpi4"),
    "precision": Doc("fp32 | int8: with int8 every trained network is quantized after training (post-training "
                     "int8, calibrated on training images) and its int8 validation accuracy is the accuracy objective "
                     "(fp32 kept beside it); needs lightnas[deploy]", "fp32"),
    "calibration": Doc("--precision int8: training images that calibrate the int8 activation ranges", 256),
    "qat_epochs": Doc("--precision int8: quantization-aware fine-tuning epochs for a network whose post-training "
                      "int8 accuracy is more than --qat-threshold below fp32 (0: never)", 0),
    "qat_threshold": Doc("--precision int8: the drop from fp32 (validation accuracy, a fraction) above which "
                         "--qat-epochs are spent", 0.005),
    "trials": Doc("target: networks evaluated within the budget (over-budget samples are rejected and do not "
                  "count)", 30),
    "fit_space": Doc("scale the space to the budget when too little of it fits (TinyNAS; your own --option "
                     "values are kept)", True),
    "fit_resolution": Doc("let budget fitting also resize the inputs (TinyNAS's resolution knob; your images are "
                          "kept as they are otherwise)", False),
    "input_size": Doc("resize inputs to this short side in pixels"),
    "val_fraction": Doc("share of the training data held out for validation", 0.15),
    "supernet": Doc("a trained supernet ('nas supernet train') whose subnets are the candidates: each is evaluated "
                    "with the supernet's weights (BN recalibrated, seconds; supernet accuracy, not stand-alone "
                    "accuracy) instead of being trained; the space, options, data and seed are the supernet's "
                    "(the options narrowed to a sub-space when fitted to the budget)"),
    "fidelity": Doc("how hard each trial trains"),
}

FIDELITY: dict[str, Doc] = {
    "epochs": Doc("training epochs per trial (fidelity)", 8),
    "train_fraction": Doc("share of the training split each trial trains on", 1.0),
    "batch_size": Doc("training batch size", 64),
    "lr": Doc("peak learning rate (SGD, warm-up then cosine)", 0.1),
    "augment": Doc("training augmentation: auto (crop-flip for cifar10: data, none otherwise) | none | crop-flip "
                   "(random crop after zero padding, horizontal flip)", "auto"),
}

EARLY_STOP: dict[str, Doc] = {
    "rungs": Doc("--pruner pareto: epochs at which curves are compared (E/9 and E/3 of E epochs when not given)"),
    "margin": Doc("--pruner pareto: how much better (validation accuracy) a peer of no higher cost must be", 0.1),
    "min_dominators": Doc("--pruner pareto: peers that must dominate before a stop", 1),
}

REFINE: dict[str, Doc] = {
    "epochs": Doc("baseline training epochs at the refinement fidelity", 20),
    "reuse_weights": Doc("baseline = the weights the search stored (no training)", False),
    "finetune_epochs": Doc("F, fine-tuning epochs per pruning attempt, the paper's 320; short fusion fine-tuning "
                           "ceil(F*50/320), long ceil(F*200/320), patience ceil(F*20/320)", 8),
    "margin": Doc("pruning keeps accuracy >= baseline - margin", 0.01),
    "iterations": Doc("outer pruning iterations", 3),
    "max_drop": Doc("fusion stops once accuracy is this far below the pruned model's", 0.03),
    "long_every": Doc("long fine-tuning after this many removals", 4),
    "temperature": Doc("distillation temperature T", 4.0),
    "alpha": Doc("weight of the soft (distillation) loss; 1-alpha on the labels", 0.9),
    "lr": Doc("fine-tuning learning rate (SGD, cosine)", 0.01),
    "weight_decay": Doc("fine-tuning weight decay", 1e-4),
    "batch_size": Doc("fine-tuning batch size", 64),
    "min_channels": Doc("channels every pruned width keeps", 1),
    "low_rank": Doc("last, LightLayers (low rank) until this budget holds, e.g. 'params<=20k flops<=1M'"),
    "seed": Doc("seed of initialisation and batch order", 0),
}
