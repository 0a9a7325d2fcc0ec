"""Post-search refinement (docs/methods.md section 2): dynamic pruning, then layer fusion with distillation.

``refine_trial(study, trial, store, settings)`` takes a trained trial's architecture and runs:

0. **Baseline** (step 0): train the architecture at the refinement fidelity (``epochs`` on the
   whole training split, the study's batch size and learning rate), or, with
   ``reuse_weights``, take the weights the search stored at the study's fidelity.
1. **Dynamic pruning** (steps 1..``iterations``, 3 by default): measure channel sparsity on the
   validation set (:func:`search_spaces.channel_sparsity`), then :func:`threshold_search` for the
   pruning threshold ``Pc``; every attempt prunes at ``Pc`` (a new, smaller spec with sliced
   weights) and fine-tunes ``finetune_epochs`` with early stopping (``patience``). The target
   accuracy is the baseline's minus ``margin``. Each iteration starts from the previous one's
   model and is stored. An attempt that removes nothing is the unpruned model (no fine-tune);
   attempts that remove the same channels share one fine-tune.
2. **Layer fusion** (the following steps): the pruned model is the teacher. Repeatedly remove
   the material block (:func:`search_spaces.choose_fusion`), fine-tune ``short_epochs`` with
   only the carrier trainable and the distillation loss (``temperature``, ``alpha``); after
   every ``long_every`` removals fine-tune everything ``long_epochs`` and store the result as a
   candidate. Stop when a candidate's accuracy is more than ``max_drop`` below the pruned
   model's (that candidate is stored too) or no block can be removed (the removals since the
   last long fine-tuning then get one, and are stored).
3. **LightLayers** (with ``low_rank``, a budget expression): the most compressed candidate
   still within ``max_drop`` gets lower rank ratios, greedily, until it meets that budget
   (:func:`search_spaces.low_rank_plan`); its convolutions are replaced by
   ``LightConv2d.from_dense`` and everything is fine-tuned ``long_epochs`` with distillation.

Epoch counts keep the paper's ratios: fine-tuning ``F = finetune_epochs`` stands for its 320,
short ``ceil(F * 50 / 320)``, long ``ceil(F * 200 / 320)``, patience ``ceil(F * 20 / 320)``.

Every candidate is committed as soon as it exists: its architecture, cost report (with the
study's ``hw_cost``), weights (artifact store), validation and test accuracy, and lineage
(parent trial, step, parent step, method, settings) in ``lightnas_refinements``. A run is
keyed by (study, trial, settings hash); calling ``refine_trial`` again with the same settings
loads the last stored step's spec and weights and continues from there, so Ctrl-C loses at
most the step in progress. The run is deterministic for a seed, so a resumed run stores what
an uninterrupted one would have.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial

from objectives import (
    Budget,
    Dataset,
    Distillation,
    TrainConfig,
    evaluate,
    parse_budget,
    resolve_device,
    teacher_logits,
    train_model,
)
from search_spaces import (
    ArchSpec,
    LightNet,
    apply_low_rank,
    build_model,
    channel_sparsity,
    choose_fusion,
    fusion_candidates,
    keep_channels,
    low_rank_plan,
    prunable_widths,
    prune_channels,
    remove_block,
)
from storage import RefinementRow, Store

from .._artifacts import load_arch, load_network, save_arch, save_state, weights_key
from .._errors import NasError, TrialInterrupted
from ..search import Status, StudySpec, get_study_spec, pareto_rows, record_of, trial_fidelity_key
from ._settings import RefineSettings, settings_key, settings_record
from ._threshold import threshold_search

__all__ = ["RefineEvent", "check_parent", "parent_trials", "refine_trial"]


# ----------------------------------------------------------------------------------- parents
def _trials(name: str, store: Store) -> dict[int, FrozenTrial]:
    study = optuna.load_study(study_name=name, storage=store.optuna)
    return {t.number: t for t in study.get_trials(deepcopy=False)}


def _refinable(t: FrozenTrial) -> bool:
    return record_of(t).evaluated


def check_parent(name: str, number: int, store: Store, trials: dict[int, FrozenTrial] | None = None) -> FrozenTrial:
    """The trial ``number`` of study ``name`` if it can be refined (trained, within the budget).

    Raises:
        NasError: unknown trial, over budget, or never trained; the message names trials that can.
    """
    trials = trials if trials is not None else _trials(name, store)
    ok = [n for n, t in sorted(trials.items()) if _refinable(t)]
    hint = (f"trials that can: {', '.join(map(str, ok[:12]))}{' ...' if len(ok) > 12 else ''}" if ok
            else "no trial of it has been trained yet; run 'nas study run' first")
    if number not in trials:
        raise NasError(f"study {name!r} has no trial {number}; {hint}")
    t = trials[number]
    if _refinable(t):
        return t
    r = record_of(t)
    status = r.status
    if status == Status.OVER_BUDGET:
        over = ", ".join(f"{k} +{v:.0%}" for k, v in r.violations.items())
        raise NasError(f"trial {number} is over the budget ({over}) and was never trained; "
                       f"refine takes trained trials within the budget; {hint}")
    raise NasError(f"trial {number} was not trained (state {t.state.name.lower()}"
                   f"{', status ' + status if status else ''}); {hint}")


def parent_trials(name: str, store: Store, *, trial: int | None = None, pareto: bool = False) -> list[int]:
    """The trials to refine: ``[trial]`` (checked) or every member of the study's Pareto front.

    Raises:
        NasError: both or neither of ``trial`` and ``pareto``; a trial that cannot be refined;
            an empty front.
    """
    if (trial is None) == (not pareto):
        raise NasError("give exactly one of --trial N (one trial) or --pareto (every Pareto-front member)")
    get_study_spec(name, store)
    if trial is not None:
        check_parent(name, trial, store)
        return [trial]
    front = [int(r["trial"]) for r in pareto_rows(name, store, with_test=False)]
    if not front:
        raise NasError(f"study {name!r} has no trained trial within its budget yet; run 'nas study run {name}' first")
    return sorted(front)


# ----------------------------------------------------------------------------------- the run
@dataclass(frozen=True)
class RefineEvent:
    """Progress of a run, for displays.

    Attributes:
        trial: the parent trial.
        kind: ``phase`` (a step begins), ``attempt`` (one pruning threshold tried), ``candidate``
            (a candidate was stored; ``row`` is set), ``resumed`` (stored steps were loaded),
            ``note`` (something the user should know), ``done``.
        message: one line.
        row: the stored candidate, for ``candidate`` events.
        stored: candidates of this run stored so far.
        expected: candidates the run is expected to store in all (the fusion steps are an
            estimate until fusion ends: removable blocks / ``long_every``).
    """

    trial: int
    kind: str
    message: str
    row: RefinementRow | None = None
    stored: int = 0
    expected: int = 0


@dataclass
class _Run:
    name: str
    study_spec: StudySpec
    store: Store
    trial: int
    parent_hash: str
    settings: RefineSettings
    key: str
    data: Dataset
    device: torch.device
    threads: int | None
    budget: Budget | None
    emit: Callable[[RefineEvent], None]
    rows: dict[int, RefinementRow]
    expected: int = 0
    should_stop: Callable[[], bool] | None = None

    def on_epoch(self, epoch: int, _accuracy: float) -> None:
        """After every training epoch: stop the run (the step in progress is lost) when asked."""
        if self.should_stop is not None and self.should_stop():
            raise TrialInterrupted(f"worker stopping: refinement of trial {self.trial} interrupted after epoch {epoch} "
                                   f"of step {max(self.rows, default=-1) + 1}")

    def expect_fusion(self, spec: ArchSpec, already: int = 0) -> None:
        """Re-estimate the steps left: fusion candidates ``spec`` still allows, then low rank."""
        s = self.settings
        fuse = math.ceil(len(fusion_candidates(spec, self.data.input_shape)) / s.long_every)
        self.expected = s.iterations + 1 + already + fuse + (s.low_rank is not None)

    def config(self, epochs: int) -> TrainConfig:
        """Fine-tuning configuration: docs/methods.md section 2's plain SGD (momentum 0.9, no Nesterov),
        cosine annealing from ``lr`` restarted with every run (no warm-up), its weight decay."""
        s = self.settings
        return TrainConfig(epochs=epochs, batch_size=s.batch_size, lr=s.lr, seed=s.seed, device=str(self.device),
                           threads=self.threads, weight_decay=s.weight_decay, nesterov=False, warmup_fraction=0.0,
                           augment=self.study_spec.augmentation, amp=self.study_spec.amp)

    def finetune(self, model: LightNet, epochs: int, *, teacher: Distillation | None = None,
                 trainable: list[str] | None = None, patience: int | None = None) -> float:
        """Fine-tune ``model`` in place (the one training loop); its validation accuracy."""
        res = train_model(model, self.data, self.config(epochs), keep_state=False, on_epoch=self.on_epoch,
                          teacher=teacher, trainable=trainable, patience=patience)
        return res.val_accuracy

    def distill(self, teacher: LightNet) -> Distillation:
        """The teacher, with the run's temperature and alpha. Without augmentation its soft labels
        of the training split are computed once here (every fine-tune reuses them); with it the
        teacher runs on each augmented batch the student trains on."""
        s = self.settings
        logits = teacher_logits(teacher, self.data.x_train) if self.study_spec.augmentation == "none" else None
        return Distillation(logits, s.temperature, s.alpha, model=teacher)

    def say(self, kind: str, message: str, row: RefinementRow | None = None) -> None:
        stored = len(self.rows)
        self.emit(RefineEvent(self.trial, kind, message, row, stored, max(self.expected, stored)))

    def cost(self, arch: ArchSpec) -> dict[str, float]:
        return self.study_spec.cost(arch, self.data.input_shape, self.data.num_classes, with_depth=True)

    def load(self, row: RefinementRow) -> LightNet:
        model = load_network(self.store, load_arch(self.store, row.spec_hash), row.artifact_key,
                             self.data.input_shape, self.data.num_classes)
        if model is None:
            raise NasError(f"refinement step {row.step} of trial {self.trial} has lost its weights "
                           f"({row.artifact_key})")
        return model.to(self.device).eval()

    def save(self, step: int, method: str, parent_step: int | None, model: LightNet, accuracy: float,
             detail: dict[str, Any], seconds: float) -> RefinementRow:
        arch = model.spec
        save_arch(self.store, arch)
        test = evaluate(model, self.data.x_test, self.data.y_test) if len(self.data.y_test) else None
        key = f"refined/{self.name}/{self.trial}/{self.key}/{step}.pt"
        save_state(self.store, key, {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()})
        row = self.store.put_refinement(
            study=self.name, parent_trial=self.trial, parent_spec_hash=self.parent_hash, settings_hash=self.key,
            step=step, parent_step=parent_step, method=method, spec_hash=arch.hash,
            settings=settings_record(self.settings, self.study_spec), detail=detail, val_accuracy=accuracy,
            test_accuracy=test, cost=self.cost(arch), artifact_key=key, seconds=seconds)
        self.rows[step] = row
        cost = json.loads(row.cost_json)
        self.say("candidate", f"step {step} {method}: accuracy {row.val_accuracy:.4f}, flops {_si(cost['flops'])}, "
                              f"params {_si(cost['params'])}, depth {int(cost['depth'])}", row)
        return row


def _si(v: float) -> str:
    for div, suf in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.3g}{suf}"
    return f"{v:.4g}"


def _baseline(run: _Run, arch: ArchSpec) -> tuple[LightNet, RefinementRow]:
    if 0 in run.rows:
        return run.load(run.rows[0]), run.rows[0]
    s, t0 = run.settings, time.perf_counter()
    data = run.data
    if s.reuse_weights:
        key = weights_key(arch.hash, trial_fidelity_key(run.study_spec, _trials(run.name, run.store)[run.trial]))
        stored = load_network(run.store, arch, key, data.input_shape, data.num_classes)
        if stored is None:
            raise NasError(f"trial {run.trial} has no stored weights at the study's fidelity; "
                           "leave out --reuse-weights to train it")
        model = stored.to(run.device)
        acc = evaluate(model, data.x_val, data.y_val)
        detail: dict[str, Any] = {"weights": key}
        run.say("phase", f"baseline: stored weights of the search, accuracy {acc:.4f}")
    else:
        f = run.study_spec.fidelity
        run.say("phase", f"baseline: training {s.epochs} epochs")
        with torch.random.fork_rng():
            torch.manual_seed(s.seed)
            model = build_model(arch, data.input_shape, data.num_classes)
        cfg = TrainConfig(epochs=s.epochs, batch_size=f.batch_size, lr=f.lr, seed=s.seed, device=str(run.device),
                          threads=run.threads, augment=run.study_spec.augmentation, amp=run.study_spec.amp)
        res = train_model(model, data, cfg, keep_state=False, on_epoch=run.on_epoch)
        acc = res.val_accuracy
        detail = {"epochs": res.epochs_run, "curve": res.curve}
    model.eval()
    return model, run.save(0, "baseline", None, model, acc, detail, time.perf_counter() - t0)


def _prune_iteration(run: _Run, k: int, model: LightNet, accuracy: float, target: float) -> tuple[LightNet, float]:
    s, t0 = run.settings, time.perf_counter()
    n = s.iterations
    run.say("phase", f"prune {k}/{n}: measuring channel sparsity")
    sparsity = channel_sparsity(model, run.data.x_val)
    widths = {w.name: w.size for w in prunable_widths(model.spec)}
    tried: dict[tuple, tuple[LightNet, float]] = {}

    def attempt(pc: float) -> float:
        keep = keep_channels(sparsity, pc, model.spec, min_channels=s.min_channels)
        removed = sum(widths[w] - len(idx) for w, idx in keep.items())
        if not keep:
            run.say("attempt", f"prune {k}/{n} Pc={pc:.4f}: removes nothing, accuracy {accuracy:.4f}")
            return accuracy
        sig = tuple(sorted((w, tuple(idx)) for w, idx in keep.items()))
        if sig not in tried:
            cand = prune_channels(model, keep)
            tried[sig] = (cand, run.finetune(cand, s.finetune_epochs, patience=s.patience))
            run.say("attempt", f"prune {k}/{n} Pc={pc:.4f}: -{removed} channels, accuracy {tried[sig][1]:.4f} "
                               f"(target {target:.4f})")
        return tried[sig][1]

    search = threshold_search(attempt, target)
    chosen, acc, removed = model, accuracy, {}
    if search.threshold is not None:
        keep = keep_channels(sparsity, search.threshold, model.spec, min_channels=s.min_channels)
        if keep:
            chosen, acc = tried[tuple(sorted((w, tuple(idx)) for w, idx in keep.items()))]
            removed = {w: widths[w] - len(idx) for w, idx in keep.items()}
    detail = {"iteration": k, "target": target, "threshold": search.threshold,
              "visited": [list(v) for v in search.visited], "removed_channels": removed,
              "widths_before": widths, "widths_after": {w.name: w.size for w in prunable_widths(chosen.spec)}}
    if not removed:
        run.say("note", f"prune {k}/{n}: no threshold kept accuracy >= {target:.4f}; the model stays as it was")
    run.save(k, "prune", k - 1, chosen, acc, detail, time.perf_counter() - t0)
    return chosen, acc


def _fuse(run: _Run, teacher: LightNet, reference: float) -> None:
    s = run.settings
    n = s.iterations
    fused = [r for st, r in sorted(run.rows.items()) if r.method == "fuse"]
    if any(r.method == "low_rank" for r in run.rows.values()):
        return
    if fused:
        last = json.loads(fused[-1].detail_json)
        if last.get("stop"):
            return
        current, removals, parent = run.load(fused[-1]), int(last["removals"]), fused[-1].step
    else:
        current, removals, parent = run.load(run.rows[n]), 0, n
    run.expect_fusion(current.spec, len(fused))
    soft = run.distill(teacher)
    pending: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    floor = reference - s.max_drop

    def long_finetune(stop: str | None) -> bool:
        nonlocal parent, pending, t0
        run.say("phase", f"fuse: long fine-tune of everything ({s.long_epochs} epochs) after {removals} removals")
        accuracy = run.finetune(current, s.long_epochs, teacher=soft)
        if accuracy < floor:
            stop = f"accuracy {accuracy:.4f} is more than {s.max_drop:g} below the pruned model's {reference:.4f}"
        detail = {"removals": removals, "removed": pending, "reference": reference, "stop": stop}
        row = run.save(max(run.rows) + 1, "fuse", parent, current, accuracy, detail, time.perf_counter() - t0)
        parent, pending, t0 = row.step, [], time.perf_counter()
        if stop:
            run.say("note", f"fuse: stopped: {stop}")
        return stop is not None

    while True:
        choice = choose_fusion(current.spec, current.input_shape)
        if choice is None:
            if pending:
                long_finetune("no block left whose removal keeps the shapes")
            elif removals == 0:
                run.say("note", "fuse: no block can be removed (every block changes its shape)")
            return
        block = current.spec.blocks[choice.material]
        carrier = choice.carrier - (choice.carrier > choice.material)
        current = remove_block(current, choice.material)
        removals += 1
        channels = sum(block.inner_widths) or block.out_channels
        run.say("phase", f"fuse: removed blocks.{choice.material} ({block.type}, {channels} channels); short "
                         f"fine-tune of the carrier blocks.{choice.carrier} ({s.short_epochs} epochs)")
        short = run.finetune(current, s.short_epochs, teacher=soft, trainable=[f"blocks.{carrier}"])
        pending.append({"material": choice.material, "carrier": choice.carrier, "block": block.type,
                        "channels": channels, "short_accuracy": short})
        if len(pending) >= s.long_every and long_finetune(None):
            return


def _low_rank(run: _Run, teacher: LightNet, reference: float) -> None:
    s = run.settings
    if s.low_rank is None or any(r.method == "low_rank" for r in run.rows.values()):
        return
    budget = parse_budget(s.low_rank)
    floor = reference - s.max_drop
    ok = [r for st, r in sorted(run.rows.items()) if (r.method == "fuse" and r.val_accuracy >= floor)]
    base_row = ok[-1] if ok else run.rows[s.iterations]
    base = run.load(base_row)
    t0 = time.perf_counter()

    def totals(a: ArchSpec) -> dict[str, float]:
        return run.study_spec.cost(a, run.data.input_shape, run.data.num_classes)

    arch, met = low_rank_plan(base.spec, totals, budget)
    if arch == base.spec:
        run.say("note", f"low rank: step {base_row.step} already meets {budget}; nothing to factorise")
        return
    if not met:
        run.say("note", f"low rank: {budget} is out of reach by rank alone; using the lowest ranks that still help")
    run.say("phase", f"low rank: LightLayers for {budget} on step {base_row.step}, fine-tune {s.long_epochs} epochs")
    model = apply_low_rank(base, arch)
    accuracy = run.finetune(model, s.long_epochs, teacher=run.distill(teacher))
    ratios = {f"blocks.{i}": b.rank_ratio for i, b in enumerate(arch.blocks)
              if b.rank_ratio != base.spec.blocks[i].rank_ratio}
    if arch.head.rank_ratio != base.spec.head.rank_ratio:
        ratios["head"] = arch.head.rank_ratio
    detail = {"budget": str(budget), "budget_met": met, "base_step": base_row.step, "rank_ratios": ratios,
              "reference": reference}
    run.save(max(run.rows) + 1, "low_rank", base_row.step, model, accuracy, detail, time.perf_counter() - t0)


def refine_trial(name: str, number: int, store: Store, settings: RefineSettings | None = None, *,
                 threads: int | None = None, on_event: Callable[[RefineEvent], None] | None = None,
                 should_stop: Callable[[], bool] | None = None) -> list[RefinementRow]:
    """Refine trial ``number`` of study ``name`` (see the module docstring); resume if stored.

    Args:
        name: the study.
        number: a trained trial within the budget.
        store: the database.
        settings: :class:`RefineSettings` (defaults sized for a 2-core CPU on ``digits``).
        threads: torch threads for training (``None``: torch's setting).
        on_event: receives :class:`RefineEvent` progress; exceptions it raises propagate (every
            stored candidate stays stored).
        should_stop: polled after every training epoch; when true the run raises
            :class:`nas.TrialInterrupted` (a worker draining on SIGTERM); a rerun continues
            from the last stored step.

    Returns:
        The run's stored candidates, by step.

    Raises:
        NasError: unknown study or trial, a trial that cannot be refined, unreadable data.
        objectives.TrainingError: a loss became non-finite.

    Example:
        >>> rows = refine_trial("s1", 12, Store("sqlite:///nas.db"))  # doctest: +SKIP
        >>> [(r.step, r.method) for r in rows]  # doctest: +SKIP
        [(0, 'baseline'), (1, 'prune'), (2, 'prune'), (3, 'prune'), (4, 'fuse')]
    """
    from objectives import DataError

    settings = settings or RefineSettings()
    study_spec = get_study_spec(name, store)
    trial = check_parent(name, number, store)
    parent_hash = str(record_of(trial).spec_hash)
    arch = load_arch(store, parent_hash)
    device = resolve_device(study_spec.device)
    try:  # the whole training split: the refinement fidelity ignores the search's train_fraction
        data = study_spec.load_data(whole_train=True).to(device)
    except DataError as e:
        raise NasError(str(e), field="data", argument=False) from None
    key = settings_key(settings, study_spec, parent_hash)
    rows = {r.step: r for r in store.get_refinements(name, parent_trial=number, settings_hash=key)
            if r.parent_spec_hash == parent_hash}
    run = _Run(name, study_spec, store, number, parent_hash, settings, key, data, device, threads,
               study_spec.budget_obj(),
               on_event or (lambda e: None), rows, should_stop=should_stop)
    run.expect_fusion(arch)
    if rows:
        last = rows[max(rows)]
        run.say("resumed", f"resuming after stored step {last.step} ({last.method})")

    model, base_row = _baseline(run, arch)
    target = base_row.val_accuracy - settings.margin
    accuracy = base_row.val_accuracy
    for k in range(1, settings.iterations + 1):
        if k in run.rows:
            continue
        if k - 1 in run.rows and k - 1 > 0:
            model, accuracy = run.load(run.rows[k - 1]), run.rows[k - 1].val_accuracy
        model, accuracy = _prune_iteration(run, k, model, accuracy, target)
    pruned_row = run.rows[settings.iterations]
    teacher = run.load(pruned_row)
    _fuse(run, teacher, pruned_row.val_accuracy)
    _low_rank(run, teacher, pruned_row.val_accuracy)
    run.expected = len(run.rows)
    run.say("done", f"trial {number}: {len(run.rows)} candidates stored")
    return [run.rows[k] for k in sorted(run.rows)]
