"""One trial: suggest spec -> hash -> cost report -> budget check -> train (or reuse) -> tell.

``TrialObjective`` is the single objective function of lightnas: local workers and the Ray
backend call the same object. What it records on the Optuna trial (user attributes):

* ``spec_hash``, ``cost`` (totals + ``hw_cost``), ``status`` (``over_budget``, ``trained``,
  ``reused``), ``violations`` when over budget, ``val_accuracy``, ``epochs_run``,
  ``train_seconds``, ``curve``, ``fail_reason`` when training failed, ``waiting_for`` when it
  waited for another trial training the same architecture;
* one Optuna constraint per budgeted resource, ``value / limit - 1`` (feasible <= 0), via
  ``Trial.set_constraint`` (Optuna 5), so constrained samplers learn the feasible region; and the
  same values, in the budget's order, as the list system attribute ``constraints`` (Optuna's
  ``_CONSTRAINTS_KEY``, what ``constraints_func`` wrote before Optuna 5), the one form
  optuna-dashboard reads (without it the dashboard counts over-budget trials as feasible).
  Optuna 5 reads both forms into ``FrozenTrial.constraints`` (the list as keys ``"0"``,
  ``"1"``, ...): feasibility is unchanged, and samplers that sum violations rank alike.

Identical architectures are never trained twice at one fidelity. Before training, a trial claims
(architecture hash, fidelity key) in the store (``Store.claim_evaluation``) and keeps the claim alive
with a heartbeat while it trains. A trial of the same architecture meanwhile (another worker, or
another study with the same data and fidelity) records whose claim it met (``waiting_for``), polls
for the evaluation and reuses it (``reused``) once stored; if the owner gives the claim up without
a result (its training failed or was stopped) or dies (no heartbeat for its grace), the waiting
trial takes the claim over and trains. It waits at most ``claim_wait`` seconds for a live owner,
then gives the trial back (:class:`TrialInterrupted`: failed and queued again). The evaluation and
its weights are stored in one transaction, so the stored weights are those of the stored accuracy.

With the ``pareto`` pruner (:mod:`nas.search._early`) a training trial records its partial ``curve``
at every rung epoch and is stopped (``optuna.TrialPruned``; ``status`` ``pruned``,
``stopped_by``) when peers of no higher cost were clearly better at that epoch; an architecture
already stopped in this study is stopped again at once, without training. With
``inherit_weights`` (:mod:`nas.search._inherit`) a network starts from the weights of the stored
architecture that overlaps it most (``inherited_from``). The attributes are typed in
:mod:`nas.search._record`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import optuna
import torch

from objectives import Dataset, TrainConfig, TrainingError, train_spec
from search_spaces import ArchSpec, SearchSpace
from storage import EvaluationRow, Store

from .._artifacts import int8_key, load_state, save_arch, serialize_state, weights_key
from .._errors import TrialInterrupted
from ._early import best_by, dominators, peers_of, rung_epochs
from ._record import Status, record_of
from ._spec import StudySpec, fidelity_key_of
from ._studies import get_study_spec

__all__ = ["CONSTRAINTS_KEY", "StudyContext", "TrialObjective", "load_context", "objective_values"]

#: Optuna's ``_CONSTRAINTS_KEY``: the system attribute holding a trial's constraint values as a list.
CONSTRAINTS_KEY = "constraints"
#: Longest wait (seconds) for another trial's live claim on the same architecture before giving the trial back.
CLAIM_WAIT = 3600.0

log = logging.getLogger("nas.worker")


@dataclass
class StudyContext:
    """What a worker needs to evaluate trials of one study (data loaded once)."""

    study_spec: StudySpec
    store: Store
    data: Dataset
    space: SearchSpace
    train_config: TrainConfig

    @property
    def name(self) -> str:
        return self.study_spec.name


def load_context(name: str, store: Store, *, threads: int | None = None, device: str | None = None) -> StudyContext:
    """The study's spec, data (on the training device), space and train config, loaded once per
    worker; ``device`` overrides the study's (a worker placed on one GPU of several)."""
    from objectives import resolve_device

    study_spec = get_study_spec(name, store)
    dev = resolve_device(device or study_spec.device)
    data = study_spec.load_data().to(dev)
    return StudyContext(study_spec, store, data, study_spec.search_space(data.input_shape),
                        study_spec.train_config(device=str(dev), threads=threads))


def objective_values(study_spec: StudySpec, accuracy: float, cost: dict[str, float]) -> list[float]:
    return [accuracy if o == "accuracy" else float(cost[o]) for o in study_spec.objectives]


class TrialObjective:
    """The objective callable for ``study.optimize``; see the module docstring.

    Args:
        ctx: the study context.
        prune: report validation accuracy per epoch to the trial and raise ``TrialPruned``
            when its pruner says so (local single-objective studies with a pruner).
        should_stop: polled after every epoch; when true the trial raises
            :class:`TrialInterrupted` (a worker draining on SIGTERM).
        on_epoch: called as ``on_epoch(trial, epoch, val_accuracy)`` after every epoch (the
            Ray adapter reports intermediate results to Tune from here).
        claim_wait: the longest wait (seconds) for another trial that trains the same
            architecture and is alive; then the trial raises :class:`TrialInterrupted`.
        wait: runs a storage step that must not be lost to a database outage, as
            ``wait(step, what)``: the writes of a trained network's result (evaluation, weights,
            attributes), which retry while the database is unreachable (workers pass
            :func:`nas.workers.wait_for_database` with a bounded window); None: run it once.
            Meanwhile checks at rung epochs that find the database unreachable are skipped, so
            training goes on through an outage.
    """

    def __init__(self, ctx: StudyContext, *, prune: bool = False, should_stop: Callable[[], bool] | None = None,
                 on_epoch: Callable[[optuna.trial.BaseTrial, int, float], None] | None = None,
                 claim_wait: float = CLAIM_WAIT,
                 wait: Callable[[Callable[[], Any], str], Any] | None = None) -> None:
        self.ctx = ctx
        self.wait = wait
        self.claim_wait = claim_wait
        self.budget = ctx.study_spec.budget_obj()
        self.prune = prune
        self.should_stop = should_stop
        self.on_epoch = on_epoch
        study_spec = ctx.study_spec
        pareto = study_spec.pruner == "pareto"
        self.rungs = set(rung_epochs(study_spec.early_stop, ctx.train_config.epochs)) if pareto else set()
        self.cost_objectives = [o for o in study_spec.objectives if o != "accuracy"]
        self.profile = study_spec.cost_profile()  # resolved once (its database's first): every trial costs the same
        # Validation where a result informs a decision: every epoch for a per-epoch pruner (Optuna's, or
        # Tune's ASHA through on_epoch), else the rungs of the pareto rule and the last epoch. The final
        # accuracy is the same either way, so evaluations stay comparable across studies.
        self.validate_epochs: set[int] | None = None if (prune or on_epoch is not None) else set(self.rungs)
        self.supernet: Any = None
        self.supernet_bn_batches = 8
        if study_spec.supernet is not None:  # subnets evaluated with its weights: loaded once per worker
            from ._supernet import load_supernet

            net, record = load_supernet(ctx.store, study_spec.supernet)
            self.supernet = net.to(ctx.data.x_train.device)
            self.supernet_bn_batches = record.spec.bn_batches
            self.inherited_fidelity = inherited_fidelity(study_spec, record)
            self.inherited_key = fidelity_key_of(self.inherited_fidelity)

    def _epoch_hook(self, trial: optuna.trial.BaseTrial, cost: dict[str, float]
                    ) -> Callable[[int, float], None] | None:
        if not (self.prune or self.should_stop or self.on_epoch or self.rungs):
            return None
        curve: list[float | None] = []

        def hook(epoch: int, val_accuracy: float) -> None:
            curve.append(None if math.isnan(val_accuracy) else val_accuracy)  # nan: not validated
            if self.on_epoch is not None:
                self.on_epoch(trial, epoch, val_accuracy)
            if epoch in self.rungs:
                with self._unless_database_down(trial, f"the early-stopping check at epoch {epoch}"):
                    self._pareto_check(trial, epoch, curve, cost)
            if self.prune and self._should_prune(trial, val_accuracy, epoch):
                trial.set_user_attr("status", Status.PRUNED)
                trial.set_user_attr("epochs_run", epoch)
                trial.set_user_attr("val_accuracy", val_accuracy)
                raise optuna.TrialPruned(f"pruned after epoch {epoch} at validation accuracy {val_accuracy:.4f}")
            if self.should_stop is not None and self.should_stop():
                raise TrialInterrupted(f"worker stopping: interrupted after epoch {epoch}")

        return hook

    def _store(self, step: Callable[[], Any], what: str) -> Any:
        """Run a storage step that must outlive a database outage (see ``wait``)."""
        return step() if self.wait is None else self.wait(step, what)

    @contextmanager
    def _unless_database_down(self, trial: optuna.trial.BaseTrial, what: str) -> Iterator[None]:
        """Skip ``what`` (a check during training) if the database is unreachable: training goes on."""
        from storage import error_line, is_transient

        try:
            yield
        except Exception as e:
            if not is_transient(e):
                raise
            log.warning("%s trial %s: database unavailable (%s); %s skipped, training goes on", self.ctx.name,
                        getattr(trial, "number", None), error_line(e), what)

    def _should_prune(self, trial: optuna.trial.BaseTrial, value: float, epoch: int) -> bool:
        """Report the epoch's accuracy to the pruner and ask it; False when the database is unreachable
        (this epoch is not judged)."""
        with self._unless_database_down(trial, f"the pruner's check at epoch {epoch}"):
            trial.report(value, epoch)
            return bool(trial.should_prune())
        return False

    def _study_trials(self, trial: optuna.trial.BaseTrial) -> list[optuna.trial.FrozenTrial]:
        study = getattr(trial, "study", None)
        if study is None:  # FixedTrial and the like: no study, no peers
            return []
        states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.RUNNING)
        return study.get_trials(deepcopy=False, states=states)  # type: ignore[no-any-return]

    def _pareto_check(self, trial: optuna.trial.BaseTrial, epoch: int, curve: list[float | None],
                      cost: dict[str, float]) -> None:
        """At a rung: publish the curve so far (running peers read it), stop if dominated."""
        trial.set_user_attr("curve", list(curve))
        settings = self.ctx.study_spec.early_stop
        number = getattr(trial, "number", -1)
        peers = peers_of(self._study_trials(trial), exclude=number, epochs=self.ctx.train_config.epochs,
                         spec_hash=trial.user_attrs.get("spec_hash"))
        found = dominators(epoch, curve, cost, peers, self.cost_objectives, settings.margin)
        if len(found) < settings.min_dominators:
            return
        peer, theirs = found[0]
        own = best_by(curve, epoch)
        self._stop(trial, curve, {"trial": peer.number, "epoch": epoch, "accuracy": theirs, "own": own,
                                  "dominators": [p.number for p, _ in found], "margin": settings.margin},
                   f"stopped after epoch {epoch}: best validation accuracy {own:.4f}, while trial {peer.number} of "
                   f"no higher cost had reached {theirs:.4f} by that epoch (margin {settings.margin:g})")

    @staticmethod
    def _stop(trial: optuna.trial.BaseTrial, curve: list[float | None], stopped_by: dict[str, Any],
              message: str) -> None:
        trial.set_user_attr("status", Status.PRUNED)
        trial.set_user_attr("epochs_run", len(curve))
        trial.set_user_attr("val_accuracy", curve[-1])
        trial.set_user_attr("curve", list(curve))
        trial.set_user_attr("stopped_by", stopped_by)
        raise optuna.TrialPruned(message)

    def _init(self, trial: optuna.trial.BaseTrial, arch: ArchSpec) -> Callable[[torch.nn.Module], object] | None:
        """With ``inherit_weights``: start from the most overlapping trained architecture of the study."""
        if not self.ctx.study_spec.inherit_weights:
            return None
        from search_spaces import inherit_weights

        from ._inherit import pick_parent

        parent = pick_parent(arch, self.ctx.name, self.ctx.store, self.ctx.study_spec, self.ctx.data,
                             trials=self._study_trials(trial))
        if parent is None:
            return None
        trial.set_user_attr("inherited_from", {"trial": parent.number, "spec_hash": parent.arch.hash,
                                               "overlap": round(parent.overlap, 4)})
        return lambda model: inherit_weights(model, parent.state, arch, parent.arch)

    def cost(self, arch: ArchSpec) -> dict[str, float]:
        data = self.ctx.data
        return self.ctx.study_spec.cost(arch, data.input_shape, data.num_classes, profile=self.profile)

    def __call__(self, trial: optuna.trial.BaseTrial) -> list[float]:
        ctx = self.ctx
        arch = ctx.space.suggest(trial)
        h = arch.hash
        trial.set_user_attr("spec_hash", h)
        save_arch(ctx.store, arch)
        cost = self.cost(arch)
        trial.set_user_attr("cost", cost)
        if self.budget is not None:
            constraints = self.budget.constraints(cost)
            for name, value in constraints.items():
                trial.set_constraint(name, value)
            storage, trial_id = getattr(trial, "storage", None), getattr(trial, "_trial_id", None)
            if storage is not None and trial_id is not None:  # FixedTrial and the like have no storage
                storage.set_trial_system_attr(trial_id, CONSTRAINTS_KEY, list(constraints.values()))
            violations = self.budget.violations(cost)
            if violations:
                # Over budget: rejected before training, in milliseconds. Accuracy 0 marks "not
                # evaluated"; the constraint values make the trial infeasible for the sampler.
                trial.set_user_attr("status", Status.OVER_BUDGET)
                trial.set_user_attr("violations", violations)
                return objective_values(ctx.study_spec, 0.0, cost)
        if self.supernet is not None:
            return self._inherit_from_supernet(trial, arch, cost)
        fkey = ctx.study_spec.fidelity_key
        done = ctx.store.get_evaluation(h, fkey)
        if done is not None:
            return self._reuse(trial, arch, done, cost)
        self._stopped_before(trial, h)
        with self._claim(trial, h, fkey) as done:
            if done is not None:  # trained by the trial whose claim this one waited for
                return self._reuse(trial, arch, done, cost)
            return self._train(trial, arch, cost)

    def _inherit_from_supernet(self, trial: optuna.trial.BaseTrial, arch: ArchSpec,
                               cost: dict[str, float]) -> list[float]:
        """Evaluate ``arch`` with the study's supernet's weights (exact slices, BatchNorm recalibrated on
        training batches, validated): seconds, and labelled supernet accuracy (``accuracy_source``)."""
        from objectives import evaluate_subnet, num_threads

        ctx = self.ctx
        t0 = time.perf_counter()
        done = ctx.store.get_evaluation(arch.hash, self.inherited_key)
        if done is not None:  # this subnet of these supernet weights was evaluated before (any study)
            accuracy = done.val_accuracy
            trial.set_user_attr("inherited_reused", True)
        else:
            with num_threads(ctx.train_config.threads):
                accuracy = evaluate_subnet(self.supernet, arch, ctx.data, bn_batches=self.supernet_bn_batches)
            ctx.store.put_evaluation(arch.hash, self.inherited_key, self.inherited_fidelity, val_accuracy=accuracy,
                                     cost=cost, seconds=time.perf_counter() - t0, epochs_run=0, curve=[],
                                     artifact_key=None)
        trial.set_user_attr("status", Status.SUPERNET)
        trial.set_user_attr("accuracy_source", f"supernet {ctx.study_spec.supernet}")
        trial.set_user_attr("val_accuracy", accuracy)
        trial.set_user_attr("eval_seconds", time.perf_counter() - t0)
        return objective_values(ctx.study_spec, accuracy, cost)

    def _reuse(self, trial: optuna.trial.BaseTrial, arch: ArchSpec, done: EvaluationRow,
               cost: dict[str, float]) -> list[float]:
        """The stored evaluation of ``arch`` at the study's fidelity as this trial's result (``reused``)."""
        ctx = self.ctx
        trial.set_user_attr("status", Status.REUSED)
        trial.set_user_attr("val_accuracy", done.val_accuracy)
        trial.set_user_attr("epochs_run", done.epochs_run)
        if self.rungs:  # a peer for the early-stopping rule, like the trial that trained it
            trial.set_user_attr("curve", json.loads(done.curve_json or "[]"))
        state = load_state(ctx.store, done.artifact_key) if ctx.study_spec.precision == "int8" and \
            done.artifact_key else None
        accuracy = self._precision(trial, arch, state, done.val_accuracy)
        return objective_values(ctx.study_spec, accuracy, cost)

    def _stopped_before(self, trial: optuna.trial.BaseTrial, h: str) -> None:
        """With the pareto rule: an architecture stopped in this study before is stopped again, untrained."""
        if not self.rungs:
            return
        for t in self._study_trials(trial):
            r = record_of(t)
            if r.state == optuna.trial.TrialState.PRUNED and r.spec_hash == h and r.curve:
                self._stop(trial, r.curve, {**r.stopped_by, "same_as": t.number},
                           f"the same architecture was stopped in trial {t.number}")

    @contextmanager
    def _claim(self, trial: optuna.trial.BaseTrial, h: str, fkey: str) -> Iterator[EvaluationRow | None]:
        """Hold the claim on (``h``, ``fkey``) for the ``with`` block, its heartbeat refreshed meanwhile;
        yields None to train, or the evaluation that the owner of a claim met on the way stored.

        Another trial's live claim is waited for: the evaluation is polled (with backoff up to the
        heartbeat interval, at most 5 s) and the claim tried again, which takes it over once its
        owner released it without a result or stopped beating for its grace.

        Raises:
            TrialInterrupted: the worker is stopping, or a live owner kept the claim for ``claim_wait`` seconds.
        """
        store = self.ctx.store
        interval = float(store.optuna.heartbeat_interval or 10)
        grace = float(store.optuna.grace_period or 2 * interval)  # the trials' own grace (Optuna's default)
        number = getattr(trial, "number", None)
        owner = (f"{self.ctx.name[:100]}#{number}@{socket.gethostname()[:60]}:{os.getpid()}/"
                 f"{uuid.uuid4().hex[:12]}")
        t0, delay, waited_for = time.monotonic(), 0.05, None
        while True:
            claim = store.claim_evaluation(h, fkey, owner, grace=grace)
            if claim.owner == owner:
                break
            if claim.owner != waited_for:
                waited_for = claim.owner
                trial.set_user_attr("waiting_for", {"owner": claim.owner, "since": round(time.time(), 3)})
                log.info("%s trial %s: architecture %s is in training by %s; waiting for its result", self.ctx.name,
                         number, h[:12], claim.owner)
            done = store.get_evaluation(h, fkey)
            if done is not None:
                yield done
                return
            if self.should_stop is not None and self.should_stop():
                raise TrialInterrupted(f"worker stopping: interrupted while waiting for {claim.owner}, which trains "
                                       "the same architecture")
            waited = time.monotonic() - t0
            if waited >= self.claim_wait:
                raise TrialInterrupted(f"waited {waited:.0f} s for {claim.owner}, which trains the same architecture "
                                       "and is alive; given back to be retried")
            time.sleep(min(delay, max(self.claim_wait - waited, 0.0)))
            delay = min(delay * 2, interval, 5.0)
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(interval):
                try:
                    if not store.refresh_claim(h, fkey, owner):
                        log.warning("%s trial %s: the claim on %s was taken over (its heartbeat was late)",
                                    self.ctx.name, number, h[:12])
                        return
                except Exception as e:  # noqa: BLE001 -- the database away: the next beat retries
                    log.debug("claim heartbeat of %s failed: %s", h[:12], e)

        beating = threading.Thread(target=beat, name=f"claim-{h[:12]}", daemon=True)
        try:
            # Stored between the evaluation check and this claim by the owner that just released it.
            done = store.get_evaluation(h, fkey)
            if done is None and waited_for is not None:
                self._stopped_before(trial, h)  # the owner it waited for was stopped early in this study
            beating.start()
            yield done
        finally:
            stop.set()
            if beating.is_alive():
                beating.join(timeout=interval + 5)
            try:
                store.release_claim(h, fkey, owner)
            except Exception as e:  # noqa: BLE001 -- unreleased, it goes stale after its grace and is taken over
                log.warning("%s trial %s: could not release the claim on %s (%s)", self.ctx.name, number, h[:12], e)

    def _train(self, trial: optuna.trial.BaseTrial, arch: ArchSpec, cost: dict[str, float]) -> list[float]:
        """Train ``arch`` (this trial holds its claim) and store the evaluation with its weights."""
        ctx = self.ctx
        h, fkey = arch.hash, ctx.study_spec.fidelity_key
        t0 = time.perf_counter()
        try:
            result = train_spec(arch, ctx.data, ctx.train_config, on_epoch=self._epoch_hook(trial, cost),
                                init=self._init(trial, arch), validate_epochs=self.validate_epochs)
        except TrainingError as e:
            trial.set_user_attr("status", Status.FAILED)
            trial.set_user_attr("fail_reason", e.reason)
            raise
        key = weights_key(h, fkey) if result.state_dict is not None else None
        blob = serialize_state(result.state_dict) if result.state_dict is not None else None
        seconds = time.perf_counter() - t0

        def record() -> EvaluationRow:
            # Each step repeatable: a retry after the connection dropped (the evaluation kept once).
            row = ctx.store.put_evaluation(h, fkey, ctx.study_spec.fidelity_dict(),
                                           val_accuracy=result.val_accuracy, cost=cost, seconds=result.seconds,
                                           epochs_run=result.epochs_run, curve=list(result.curve),
                                           artifact_key=key, artifact=blob)
            trial.set_user_attr("status", Status.TRAINED)
            trial.set_user_attr("val_accuracy", row.val_accuracy)
            trial.set_user_attr("epochs_run", result.epochs_run)
            trial.set_user_attr("train_seconds", seconds)
            trial.set_user_attr("curve", list(result.curve))
            return row

        # The network is trained: its result waits out a database outage rather than be trained again.
        row = self._store(record, f"storing the evaluation of {h[:12]}")
        accuracy = self._precision(trial, arch, result.state_dict, row.val_accuracy)
        return objective_values(ctx.study_spec, accuracy, cost)

    def _precision(self, trial: optuna.trial.BaseTrial, arch: ArchSpec, state: dict[str, Any] | None,
                   fp32: float) -> float:
        """The accuracy the study ranks: ``fp32`` itself, or with ``precision`` int8 the validation accuracy of
        the network quantized after training (``val_accuracy`` becomes it, ``fp32_accuracy`` keeps fp32)."""
        study_spec = self.ctx.study_spec
        if study_spec.precision != "int8":
            return fp32
        if state is None:
            raise TrainingError(f"no stored weights of {arch.hash[:12]} to quantize")
        from objectives import int8_accuracy, num_threads
        from search_spaces import build_model

        data = self.ctx.data
        model = build_model(arch, data.input_shape, data.num_classes)
        model.load_state_dict({k: v.cpu() for k, v in state.items()})
        t0 = time.perf_counter()
        with num_threads(self.ctx.train_config.threads):
            acc, _ = int8_accuracy(model, data.x_train[:study_spec.calibration].cpu(), data.x_val.cpu(),
                                   data.y_val.cpu())
            method = "ptq"
            if study_spec.qat_epochs and fp32 - acc > study_spec.qat_threshold:
                trial.set_user_attr("ptq_accuracy", acc)
                acc, method = self._qat(arch, model, acc)
        trial.set_user_attr("int8_method", method)
        trial.set_user_attr("fp32_accuracy", fp32)
        trial.set_user_attr("val_accuracy", acc)
        trial.set_user_attr("int8_drop", fp32 - acc)
        trial.set_user_attr("quantize_seconds", time.perf_counter() - t0)
        return acc

    def _qat(self, arch: ArchSpec, model: torch.nn.Module, ptq: float) -> tuple[float, str]:
        """Quantization-aware fine-tuning (``qat_epochs`` at a tenth of the study's learning rate); its int8
        network is stored for export (:func:`nas._artifacts.int8_key`) when it beats post-training
        quantization on validation, else post-training quantization stays."""
        from dataclasses import replace

        from objectives import quantize_qat, save_int8, simulated_logits

        study_spec, data = self.ctx.study_spec, self.ctx.data
        config = replace(self.ctx.train_config, epochs=study_spec.qat_epochs, lr=self.ctx.train_config.lr / 10,
                         warmup_fraction=0.0, device="cpu")
        q = quantize_qat(model, data, config)
        pred = simulated_logits(q, data.x_val.cpu()).argmax(1)
        acc = float((pred == data.y_val.cpu()).double().mean())
        if acc <= ptq:
            return ptq, "ptq"
        blob = save_int8(q)
        self._store(lambda: self.ctx.store.put_artifact(int8_key(arch.hash, study_spec), blob),
                    f"storing the int8 network of {arch.hash[:12]}")
        return acc, "qat"


def inherited_fidelity(study_spec: StudySpec, record: Any) -> dict[str, Any]:
    """What a subnet's supernet accuracy depends on besides its architecture: the supernet's weights
    as trained so far (name, epochs, when last stored), the BatchNorm recalibration and the
    validation split. Not the study's training schedule or budget: a study of another budget on
    the same supernet and data reuses the subnets evaluated before (the second budget's front costs
    only the subnets no study evaluated yet). A supernet trained further is another key."""
    d = study_spec.fidelity_dict()
    return {"inherited_from": {"supernet": record.name, "epochs_done": record.epochs_done,
                               "updated_at": record.updated_at, "bn_batches": record.spec.bn_batches},
            **{k: d[k] for k in ("data", "seed", "val_fraction", "input_size") if k in d}}
