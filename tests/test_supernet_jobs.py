"""A supernet trained by workers and on Ray (issue 30, item 1): ``nas supernet train ... --queue``,
``nas worker`` (``--supernet``), ``--backend ray``; stops at an epoch boundary and resumes there."""

from __future__ import annotations

import datetime as dt
import json
import threading
from pathlib import Path

import pytest
import torch
from conftest import TINY_OPTIONS, nas_cli, nas_here
from sqlalchemy import update

from nas.search import get_supernet, make_supernet_spec, train_stored_supernet
from nas.workers import job_info, run_worker
from storage import JobRow, Store

torch.set_num_threads(1)

TRAIN = ["--space", "plain", *TINY_OPTIONS, "--epochs", "2", "--threads", "1", "--quiet"]


def _train(name: str, url: str, *extra: str) -> tuple[int, str, str]:
    return nas_cli("supernet", "train", name, *TRAIN, *extra, "--storage", url)


def _show(name: str, url: str) -> dict:
    code, out, err = nas_cli("supernet", "show", name, "--format", "json", "--storage", url)
    assert code == 0, err
    return json.loads(out)


def _jobs(url: str) -> list[JobRow]:
    store = Store(url)
    try:
        return store.list_jobs()
    finally:
        store.close()


def _work(url: str, **kw) -> dict[str, int]:
    """An in-process ``nas worker --until-done`` (one thread); its jobs by final state."""
    return run_worker(None, url, until_done=True, jobs=True, threads=1, poll_min=0.1, **kw).jobs


def test_a_queued_supernet_is_trained_by_a_worker_and_only_by_one_in_scope(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'nas.db'}"
    code, out, err = _train("sn", url, "--queue")
    assert code == 0 and "queued supernet sn as job 1" in out, err
    [job] = _jobs(url)
    assert (job.kind, job.study, job.state, job.trial) == ("supernet", "supernet:sn", "queued", -1)
    doc = _show("sn", url)
    assert doc["status"] == "queued" and doc["epochs_done"] == 0 and doc["job"]["id"] == 1
    code, out, _ = nas_cli("supernet", "show", "sn", "--storage", url)
    assert code == 0 and "status: job 1: queued, waiting for a 'nas worker'" in out
    # listed as a supernet (queued, nothing measured yet), not as a study
    code, out, _ = nas_cli("supernet", "list", "--format", "json", "--storage", url)
    [row] = json.loads(out)
    assert code == 0 and (row["name"], row["status"], row["epochs"], row["params"]) == ("sn", "queued", "0/2", None)
    code, out, _ = nas_cli("supernet", "list", "--storage", url)
    assert code == 0 and "sn" in out and "queued" in out
    from fastapi.testclient import TestClient

    from nas.serve import ApiSettings, create_app

    with TestClient(create_app(ApiSettings(storage=url, read_only=True))) as c:
        assert [(r["name"], r["status"]) for r in c.get("/supernets").json()] == [("sn", "queued")]
        one = c.get("/supernets/sn")
        assert one.status_code == 200 and one.json()["status"] == "queued" and one.json()["job"]["id"] == 1
    code, out, _ = nas_cli("study", "list", "--format", "json", "--storage", url)
    assert code == 0 and json.loads(out) == []
    assert job_info(job)["kind"] == "supernet"
    # a worker scoped to another supernet leaves it queued
    assert _work(url, supernets=["other"]) == {}
    assert _jobs(url)[0].state == "queued"
    assert _work(url, supernets=["sn"]) == {"done": 1}
    [job] = _jobs(url)
    assert job.state == "done" and job.attempts == 1 and json.loads(job.result_json)["epochs_done"] == 2
    doc = _show("sn", url)
    assert doc["status"] == "trained" and [c["epoch"] for c in doc["curve"]] == [1, 2]
    assert doc["job"]["state"] == "done" and doc["job"]["progress"]["epochs_done"] == 2
    with TestClient(create_app(ApiSettings(storage=url, read_only=True))) as c:
        assert c.get("/supernets/sn").json()["job"]["state"] == "done"
        [row] = c.get("/supernets").json()
        assert (row["name"], row["status"], row["epochs"]) == ("sn", "trained", "2/2") and row["params"] > 0
    code, out, _ = _train("sn", url, "--queue")  # done: nothing queued again
    assert code == 0 and "trained already" in out and len(_jobs(url)) == 1


def test_a_repeated_request_finds_its_job_and_other_settings_are_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'nas.db'}"
    assert _train("sn", url, "--queue")[0] == 0
    code, out, _ = _train("sn", url, "--queue")
    assert code == 0 and out.startswith("supernet sn was queued before: job 1: queued") and len(_jobs(url)) == 1
    code, out, err = _train("sn", url, "--queue", "--seed", "3")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "error: supernet 'sn' is queued as job 1 with other settings: seed 0 (given 3)" in err
    code, out, err = _train("sn", url)  # nor trained here beside its worker
    assert code == 2 and err.count("\n") == 1 and "supernet 'sn' is queued for a worker (job 1: queued" in err
    assert len(_jobs(url)) == 1 and _show("sn", url)["status"] == "queued"


def test_a_stopped_worker_queues_the_job_again_and_the_next_resumes_at_the_stored_epoch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'nas.db'}"
    assert _train("sn", url, "--queue")[0] == 0
    stop = threading.Event()
    beat = Store.job_heartbeat

    def sigterm_after_epoch_1(self, job_id, worker, progress=None):  # SIGTERM while epoch 1 is stored
        if progress and progress.get("epochs_done") == 1:
            stop.set()
        return beat(self, job_id, worker, progress)

    monkeypatch.setattr(Store, "job_heartbeat", sigterm_after_epoch_1)
    assert _work(url, stop=stop) == {"queued": 1}
    monkeypatch.setattr(Store, "job_heartbeat", beat)
    [job] = _jobs(url)
    assert job.state == "queued" and job.attempts == 0 and job.error == "worker stopping after epoch 1"
    doc = _show("sn", url)
    assert doc["status"] == "training" and doc["epochs_done"] == 1 and doc["job"]["state"] == "queued"
    first = doc["curve"][0]
    code, out, _ = nas_cli("supernet", "show", "sn", "--storage", url)
    assert "training: 1/2 epochs stored" in out and "queued training: job 1: queued, 1/2 epochs stored" in out
    assert "last stopped: worker stopping after epoch 1" in out
    assert _work(url) == {"done": 1}
    doc = _show("sn", url)
    assert doc["status"] == "trained" and [c["epoch"] for c in doc["curve"]] == [1, 2]
    assert doc["curve"][0] == first  # epoch 1 was not trained again
    assert _jobs(url)[0].attempts == 1


def test_a_job_of_a_killed_worker_is_taken_again_after_3_heartbeats_and_resumes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'nas.db'}"
    assert _train("sn", url, "--queue")[0] == 0
    store = Store(url)
    try:
        job = store.claim_job("dead:1", heartbeat=1)
        assert job is not None and job.state == "running"
        spec = make_supernet_spec(name="sn", space="plain", space_options={"max_depth": 1, "widths": [8, 16],
                                  "kernels": [3], "hidden": [0]}, epochs=2)

        def killed(entry: dict) -> None:  # kill -9 once epoch 1 is stored: no finish, no more beats
            raise SystemExit

        with pytest.raises(SystemExit):
            train_stored_supernet(spec, store, on_epoch=killed)
        long_ago = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=60)
        with store.session() as s:  # its last beat over 3x its heartbeat ago
            s.execute(update(JobRow).values(heartbeat_at=long_ago, started_at=long_ago))
        first = get_supernet(store, "sn").curve[0]  # type: ignore[union-attr]
    finally:
        store.close()
    assert _show("sn", url)["job"]["state"] == "running"
    assert _work(url, heartbeat=1) == {"done": 1}
    [job] = _jobs(url)
    assert job.state == "done" and job.attempts == 2
    doc = _show("sn", url)
    assert doc["status"] == "trained" and [c["epoch"] for c in doc["curve"]] == [1, 2] and doc["curve"][0] == first


@pytest.mark.parametrize(("args", "needle"), [
    (["supernet", "train", "sn", *TRAIN, "--queue", "--backend", "ray"], "--queue: only with --backend local"),
    (["supernet", "train", "sn", *TRAIN, "--backend", "slurm"], "--backend: got 'slurm'; accepted: local, ray"),
    (["supernet", "train", "sn", *TRAIN, "--address", "auto"], "--address: only with --backend ray"),
    (["supernet", "train", "sn", *TRAIN, "--backend", "ray", "--cpus-per-trial", "0"],
     "--cpus-per-trial: must be a number > 0, got 0"),
    (["worker", "--supernet", "sn", "--no-jobs"], "--supernet: a supernet's training is a queued job"),
])
def test_bad_input_is_one_line_exit_2_and_stores_nothing(tmp_path: Path, args: list[str], needle: str) -> None:
    r = nas_here(*args, "--storage", "sqlite:///new.db", cwd=tmp_path, check=False)
    assert r.returncode == 2 and r.stdout == "" and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1
    assert needle in r.stderr, r.stderr
    assert not (tmp_path / "new.db").exists()


def test_a_worker_for_an_unknown_supernet_is_one_line(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'nas.db'}"
    assert _train("sn", url, "--queue")[0] == 0
    code, out, err = nas_cli("worker", "--supernet", "zz", "--storage", url)
    assert code == 2 and err.strip() == "error: --supernet: 'zz' is neither stored nor queued in this database; " \
                                        "accepted: sn"


def test_on_ray_one_task_trains_it_ctrl_c_cancels_and_a_rerun_resumes(tmp_path: Path, local_ray) -> None:
    from nas.workers.ray import RayOptions, run_supernet_ray

    url = f"sqlite:///{tmp_path / 'nas.db'}"
    spec = make_supernet_spec(name="sr", space="plain", space_options={"max_depth": 1, "widths": [8, 16],
                              "kernels": [3], "hidden": [0]}, epochs=4)
    store = Store(url, mode="create")
    seen: list[int] = []

    def ctrl_c(entry: dict) -> None:
        seen.append(entry["epoch"])
        raise KeyboardInterrupt

    try:
        with pytest.raises(KeyboardInterrupt):
            run_supernet_ray(spec, store, options=RayOptions(cpus_per_trial=1), on_epoch=ctrl_c)
        kept = get_supernet(store, "sr")
        assert kept is not None and kept.status == "training" and 1 <= kept.epochs_done < 4 and seen == [1]
    finally:
        store.close()
    code, out, err = nas_cli("supernet", "train", "sr", "--space", "plain", *TINY_OPTIONS, "--epochs", "4",
                             "--backend", "ray", "--cpus-per-trial", "1", "--storage", url)
    assert code == 0, err
    assert f"resuming after epoch {kept.epochs_done} of 4" in err and "trained supernet sr" in out
    assert "epoch 4/4" in err  # the driver prints the epochs its task stores
    doc = _show("sr", url)
    assert doc["status"] == "trained" and [c["epoch"] for c in doc["curve"]] == [1, 2, 3, 4]
    assert doc["curve"][0]["loss"] == kept.curve[0]["loss"]
