"""Issue 28 (reliability): the Optuna requirement, distillation under augmentation, CPU counts under
affinity and cgroup limits, heartbeats across time zones, one loss read per epoch."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import torch
import torch.utils._python_dispatch
from packaging.requirements import Requirement
from packaging.version import Version

import objectives.train._distill
from nas.refine import RefineSettings
from objectives import Distillation, TrainConfig, TrainingError, load_dataset, teacher_logits, train_model
from search_spaces import ArchSpec, Block, Stage, Stem, build_model

ROOT = Path(__file__).resolve().parents[1]
SMALL = ArchSpec(stem=Stem(8), stages=(Stage((Block("conv", 8),)), Stage((Block("conv", 16, stride=2),))),
                 family="plain")
TEACHER = ArchSpec(stem=Stem(16), stages=(Stage((Block("conv", 16),)), Stage((Block("conv", 32, stride=2),))),
                   family="plain")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


def _run(code: str, env: dict[str, str] | None = None) -> str:
    """Run ``code`` in a fresh interpreter of this environment; its stdout."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **(env or {})}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


# ------------------------------------------------------------------ 1. the Optuna requirement
def test_the_optuna_requirement_has_trial_set_constraint():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    req = next(r for r in map(Requirement, deps) if r.name == "optuna")
    # The objective hands budget constraints to the samplers through Trial.set_constraint, new in
    # Optuna 5.0 (Optuna 5 also stores trial start times in UTC, which the abandoned-trial check reads).
    assert "trial.set_constraint(" in (ROOT / "nas/search/_objective.py").read_text()
    assert hasattr(optuna.trial.Trial, "set_constraint")
    lowest = min(Version(s.version) for s in req.specifier if s.operator in (">=", "~=", "==", "==="))
    assert lowest.major >= 5, f"pyproject allows {req}, whose {lowest} has no Trial.set_constraint"
    assert not req.specifier.contains("4.9.0")  # the last 4.x
    assert req.specifier.contains(optuna.__version__)  # and the installed one is allowed


# ------------------------------------------------------------------ 2. distillation under augmentation
def _refine_run(data, augmentation: str):
    """A refinement run as ``refine_trial`` makes it, for a study with ``augmentation``."""
    import nas.refine._pipeline as pipeline  # the run object of refinement's private pipeline

    return pipeline._Run(name="t", study_spec=SimpleNamespace(augmentation=augmentation, amp="auto"), store=None,
                         trial=0, parent_hash="", settings=RefineSettings(batch_size=64, seed=0), key="", data=data,
                         device=torch.device("cpu"), threads=1, budget=None, emit=lambda e: None, rows={})


def _spy_kd_loss(monkeypatch) -> list[torch.Tensor]:
    """The teacher logits every KD loss of training is computed against."""
    seen: list[torch.Tensor] = []
    real = objectives.train._distill.kd_loss

    def spy(student, teacher, targets, **kw):
        seen.append(teacher.detach().clone())
        return real(student, teacher, targets, **kw)

    monkeypatch.setattr(objectives.train._distill, "kd_loss", spy)
    return seen


def _model(spec: ArchSpec, data, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(spec, data.input_shape, data.num_classes)


def test_with_augmentation_the_teacher_sees_the_students_augmented_batch(digits, monkeypatch):
    teacher, student = _model(TEACHER, digits, 1).eval(), _model(SMALL, digits, 2)
    seen = _spy_kd_loss(monkeypatch)
    inputs: list[torch.Tensor] = []
    student.register_forward_pre_hook(lambda m, args: inputs.append(args[0].detach().clone()) if m.training else None)
    run = _refine_run(digits, "crop-flip")  # the default of cifar10: studies
    run.finetune(student, 1, teacher=run.distill(teacher))

    assert len(seen) == len(inputs) == -(-digits.sizes["train"] // 64)  # one KD loss per training step
    clean = digits.x_train.flatten(1)
    augmented = sum(int(not (x.flatten(1)[:, None] == clean[None]).all(-1).any(-1).all()) for x in inputs)
    assert augmented == len(inputs)  # every batch held crops/flips that are no training image
    teacher.eval()
    with torch.no_grad():
        for x, z in zip(inputs, seen, strict=True):
            torch.testing.assert_close(z, teacher(x))
    assert not teacher.training


def test_without_augmentation_teacher_logits_are_computed_once(digits, monkeypatch):
    teacher, student = _model(TEACHER, digits, 1).eval(), _model(SMALL, digits, 2)
    run = _refine_run(digits, "none")
    soft = run.distill(teacher)
    calls: list[int] = []
    teacher.register_forward_hook(lambda m, a, out: calls.append(len(a[0])))
    seen = _spy_kd_loss(monkeypatch)
    run.finetune(student, 1, teacher=soft)
    assert calls == []  # training indexed the precomputed logits: no teacher forward per batch
    every = teacher_logits(teacher, digits.x_train)
    assert len(seen) == -(-digits.sizes["train"] // 64)
    assert all(any(torch.equal(row, r) for r in every) for z in seen[:2] for row in z[:3])


@pytest.mark.slow
def test_refining_an_augmented_study_runs_the_teacher_on_augmented_batches(tmp_path, monkeypatch):
    import nas.refine._pipeline as pipeline
    from nas.refine import refine_trial
    from nas.search import create_study, make_spec
    from nas.workers import run_study
    from storage import Store

    store = Store(f"sqlite:///{tmp_path / 'aug.db'}")
    options = {"min_depth": 2, "max_depth": 2, "widths": [8, 32], "stem_widths": [8], "block_types": ["basic"],
               "rank_ratios": [1.0]}
    create_study(make_spec(name="aug", space="resnet", data="digits", budget="params<=60k", trials=1, seed=0,
                           space_options=options, device="cpu",
                           fidelity={"epochs": 1, "batch_size": 64, "augment": "crop-flip"}), store)
    optuna.load_study(study_name="aug", storage=store.optuna).enqueue_trial(
        {"stem_width": 8, "block": "basic", **{f"s{i}_{k}": v for i, w in enumerate((8, 16, 32))
                                               for k, v in (("depth", 2), ("width", w), ("rank", 1.0))}})
    run_study("aug", store)

    def clean_logits(*args, **kw):
        raise AssertionError("logits of un-augmented images computed for an augmented study")

    monkeypatch.setattr(pipeline, "teacher_logits", clean_logits)
    by_model: list[bool] = []
    batch_logits = Distillation.batch_logits

    def spy(self, index, x=None):
        by_model.append(self.model is not None and self.logits is None)
        return batch_logits(self, index, x)

    monkeypatch.setattr(Distillation, "batch_logits", spy)
    rows = refine_trial("aug", 0, store, RefineSettings(epochs=1, finetune_epochs=2, iterations=1, long_every=2),
                        threads=1)
    store.close()
    assert [r.method for r in rows][:2] == ["baseline", "prune"] and "fuse" in [r.method for r in rows]
    assert by_model and all(by_model)  # every distilled step ran the teacher on its batch


def test_logits_of_clean_inputs_are_refused_for_augmented_training(digits):
    student = _model(SMALL, digits, 2)
    logits = torch.zeros(digits.sizes["train"], digits.num_classes)
    with pytest.raises(ValueError, match="augment"):
        train_model(student, digits, TrainConfig(epochs=1, device="cpu", threads=1, augment="crop-flip"),
                    teacher=Distillation(logits), keep_state=False)


# ------------------------------------------------------------------ 3. CPUs this process may use
@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs os.sched_setaffinity (Linux)")
def test_threads_per_worker_follows_the_cpu_affinity():
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs at least 2 CPUs to restrict to 1")
    out = _run(f"""
        import os
        os.sched_setaffinity(0, {{{cpus[0]}}})
        from objectives import threads_per_worker
        print(threads_per_worker(1), threads_per_worker(2))
    """)
    assert out == "1 1"


def test_a_cgroup_v2_cpu_quota_caps_the_cpus(tmp_path):
    import objectives.train._accel
    from objectives.train import usable_cpus

    _cgroup_cpu_quota = objectives.train._accel._cgroup_cpu_quota  # a private reader, tested on a fake cgroup tree

    root = tmp_path / "cgroup"
    (root / "job" / "worker").mkdir(parents=True)
    proc = tmp_path / "proc_self_cgroup"
    proc.write_text("0::/job/worker\n")
    assert _cgroup_cpu_quota(root, proc) is None  # no cpu.max files: no cgroup v2 limit
    (root / "job" / "worker" / "cpu.max").write_text("max 100000\n")
    assert _cgroup_cpu_quota(root, proc) is None  # unlimited
    (root / "job" / "cpu.max").write_text("150000 100000\n")  # a parent's limit binds its children
    assert _cgroup_cpu_quota(root, proc) == 1.5
    (root / "job" / "worker" / "cpu.max").write_text("50000 100000\n")
    assert _cgroup_cpu_quota(root, proc) == 0.5
    proc.write_text("0::/\n")  # a container's own cgroup is its root
    (root / "cpu.max").write_text("250000 100000\n")
    assert _cgroup_cpu_quota(root, proc) == 2.5
    assert 1 <= usable_cpus() <= (os.cpu_count() or 1)


# ------------------------------------------------------------------ 4. heartbeats across time zones
_ZONES = {"east": "Pacific/Kiritimati", "west": "America/Adak"}  # UTC+14 and UTC-10 (-9 in summer)


@pytest.mark.skipif(not Path("/usr/share/zoneinfo/Pacific/Kiritimati").exists(), reason="needs the tz database")
def test_a_trial_started_in_one_time_zone_is_judged_by_the_same_clock_in_another(storage_url):
    url = storage_url
    open_study = f"""
        import datetime as dt, optuna
        from sqlalchemy import text
        from storage import Store
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        store = Store({url!r}, heartbeat_interval=10, grace_period=30)
    """
    # A worker at UTC-10 claims two trials: one beats, one was left before its first beat.
    _run(open_study + """
        study = optuna.create_study(study_name="tz", storage=store.optuna)
        beating, silent = study.ask(), study.ask()
        store.optuna.record_heartbeat(beating._trial_id)
    """, {"TZ": _ZONES["west"]})
    # A worker at UTC+14, seconds later: neither is stale nor abandoned.
    out = _run(open_study + """
        study = optuna.load_study(study_name="tz", storage=store.optuna)
        print(store.running_without_heartbeat("tz", older_than=60))
        optuna.storages.fail_stale_trials(study)
        print(sorted(t.state.name for t in study.get_trials()))
    """, {"TZ": _ZONES["east"]})
    assert out.splitlines() == ["[]", "['RUNNING', 'RUNNING']"]
    # The silent trial started two hours ago (UTC); the worker at UTC-10 finds it abandoned.
    out = _run(open_study + """
        two_hours_ago = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) - dt.timedelta(hours=2)
        with store.engine.begin() as conn:
            conn.execute(text("UPDATE trials SET datetime_start = :t WHERE number = 1"), {"t": two_hours_ago})
        print(store.running_without_heartbeat("tz", older_than=60))
    """, {"TZ": _ZONES["west"]})
    assert out == "[2]"  # trial ids count from 1


# ------------------------------------------------------------------ 5. one loss read per epoch
class _HostReads(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts reads of tensor values by the host (``item``, ``float``, ``int``, ``bool``): each is a
    device sync on a GPU."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.reads += 1
        return func(*args, **(kwargs or {}))


def test_training_reads_the_loss_once_per_epoch_not_per_step(digits, monkeypatch):
    listed: list[int] = []
    tolist = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda t: listed.append(t.numel()) or tolist(t))
    model = _model(SMALL, digits, 0)
    epochs, steps = 3, -(-digits.sizes["train"] // 64)
    assert steps >= 10
    with _HostReads() as mode:
        res = train_model(model, digits, TrainConfig(epochs=epochs, batch_size=64, device="cpu", threads=1),
                          validate_epochs=(), keep_state=False)
    assert res.steps == epochs * steps and res.train_loss > 0
    # One read of the step losses per epoch (and at most one for the validation at the end: fewer
    # than 1024 examples; it runs in inference mode, which the dispatch mode does not see).
    assert mode.reads + len(listed) <= epochs + 1, (mode.reads, listed)


class _NanAt(torch.nn.Module):
    """A classifier whose ``nth`` training forward pass returns NaN."""

    def __init__(self, inner: torch.nn.Module, nth: int) -> None:
        super().__init__()
        self.inner, self.nth, self.calls = inner, nth, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        if self.training:
            self.calls += 1
            if self.calls == self.nth:
                return out * float("nan")
        return out


def test_a_non_finite_loss_names_its_epoch_and_step(digits):
    steps = -(-digits.sizes["train"] // 64)
    model = _NanAt(_model(SMALL, digits, 0), nth=steps + 3)  # epoch 2, step 3
    epochs_seen: list[int] = []
    with pytest.raises(TrainingError) as info:
        train_model(model, digits, TrainConfig(epochs=3, batch_size=64, device="cpu", threads=1),
                    on_epoch=lambda e, a: epochs_seen.append(e), keep_state=False)
    assert info.value.reason.startswith("non-finite loss at epoch 2 step 3 (loss=nan, lr=")
    assert epochs_seen == [1]  # the epoch with the NaN is not validated nor reported as done


@pytest.mark.slow
def test_export_on_a_full_disk_leaves_no_truncated_file(tmp_path, capsys):
    """A write that fails part way (here: the file-size limit, as a full disk fails it) leaves no partial file
    and no directory the export created: all files or none (issue 28), said in one line."""
    import json

    from conftest import nas_cli

    db = f"sqlite:///{tmp_path / 'nas.db'}"
    assert nas_cli("study", "create", "f", "--space", "plain", "--budget", "params<=50k", "--epochs", "1",
                   "--trials", "1", "--storage", db)[0] == 0
    assert nas_cli("study", "run", "f", "--quiet", "--storage", db)[0] == 0
    trial = json.loads(nas_cli("pareto", "f", "--format", "json", "--storage", db)[1])[0]["trial"]
    code = f"""
import resource, signal, sys
from storage import Store
from nas._export import export_trial
from nas._errors import NasError
store = Store({db!r})
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))  # the weights are larger than this
try:
    export_trial("f", {trial}, "out", store, formats=("json", "state_dict"))
except NasError as e:
    print(e)
    sys.exit(2)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "writing weights.pt failed" in r.stdout and len(r.stdout.strip().splitlines()) == 1
    assert "nothing written" in r.stdout
    assert not (tmp_path / "out").exists()
