"""A stored, named supernet (issue 30): ``nas supernet train|show|list``, resume, bad input."""

from __future__ import annotations

import io
import json
import signal
import socket
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import NAS, TINY_OPTIONS, nas_cli, wait_until

import nas.cli._supernet as cli_supernet
from nas.search import SUPERNET_PREFIX, load_supernet
from nas.workers import lease_holder
from storage import Store

torch.set_num_threads(1)

TRAIN = ["supernet", "train", "--space", "plain", *TINY_OPTIONS, "--epochs", "2", "--threads", "1", "--quiet"]


def _train(name: str, url: str, *extra: str) -> tuple[int, str, str]:
    args = list(TRAIN)
    args.insert(2, name)
    return nas_cli(*args, *extra, "--storage", url)


def _artifacts(url: str) -> dict[str, bytes]:
    store = Store(url)
    try:
        return {k: store.get_artifact(k) or b"" for k in store.artifact_keys("")}
    finally:
        store.close()


def _show(name: str, url: str) -> dict:
    code, out, err = nas_cli("supernet", "show", name, "--format", "json", "--storage", url)
    assert code == 0, err
    return json.loads(out)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A database holding supernet 'sn' of the tiny plain space, trained 2 epochs, uninterrupted."""
    url = f"sqlite:///{tmp_path_factory.mktemp('supernet') / 'nas.db'}"
    code, out, err = _train("sn", url)
    assert code == 0, err
    assert "trained supernet sn" in out and "supernet accuracy" in out
    return url


def test_artifacts_in_one_transaction_listed_by_prefix(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'a.db'}", mode="create")
    try:
        store.put_artifacts({"supernet/a_b/x": b"12", "supernet/a_b/y": b"3", "supernetXa": b"4"})
        store.put_artifacts({"supernet/a_b/x": None, "supernet/a_b/y": b"345"})
        assert store.artifact_keys("supernet/a_b/") == {"supernet/a_b/y": 3}
        assert store.artifact_keys("supernet/a%") == {}  # LIKE wildcards in a prefix are literal
        assert store.artifact_keys("supernet/a_") == {"supernet/a_b/y": 3}
    finally:
        store.close()


def test_train_stores_settings_curve_size_and_weights(trained: str) -> None:
    doc = _show("sn", trained)
    assert doc["status"] == "trained" and doc["epochs_done"] == doc["epochs"] == 2
    assert doc["space"] == "plain" and doc["data"] == "digits" and doc["input_shape"] == [1, 8, 8]
    assert doc["settings"]["space_options"] == {"hidden": [0], "kernels": [3], "max_depth": 1, "widths": [8, 16]}
    assert [c["epoch"] for c in doc["curve"]] == [1, 2]
    assert doc["curve"][-1]["largest"] > 0.5  # chance is 0.1
    assert doc["params"] > 0 and doc["state_bytes"] > 4 * doc["params"] - 1 and doc["stored_weight_bytes"] > 0
    assert "not stand-alone" in doc["accuracy_source"]
    # the layout: record and weights, no checkpoint once trained
    assert set(_artifacts(trained)) == {f"{SUPERNET_PREFIX}sn/record.json", f"{SUPERNET_PREFIX}sn/weights.pt"}
    code, out, _ = nas_cli("supernet", "show", "sn", "--storage", trained)
    assert code == 0 and "status: trained" in out and "41,754 parameters" in out
    code, out, _ = nas_cli("supernet", "list", "--format", "json", "--storage", trained)
    assert code == 0 and [r["name"] for r in json.loads(out)] == ["sn"]
    # training it again does nothing
    before = _artifacts(trained)
    code, out, _ = _train("sn", trained)
    assert code == 0 and "trained already" in out and _artifacts(trained) == before
    store = Store(trained)
    try:
        net, record = load_supernet(store, "sn")
    finally:
        store.close()
    assert record.trained and net.input_shape == (1, 8, 8) and net.contains(net.smallest())


def test_an_interrupted_training_resumes_at_its_stored_epoch_as_if_never_stopped(trained: str, tmp_path: Path,
                                                                                  monkeypatch) -> None:
    url = f"sqlite:///{tmp_path / 'nas.db'}"
    real = cli_supernet._epoch_line

    def stop_after_first(entry, epochs):
        if entry["epoch"] == 1:
            raise KeyboardInterrupt  # Ctrl-C once epoch 1 is stored
        return real(entry, epochs)

    monkeypatch.setattr(cli_supernet, "_epoch_line", stop_after_first)
    args = [a for a in TRAIN if a != "--quiet"]
    args.insert(2, "sn")
    code, _, err = nas_cli(*args, "--storage", url)
    assert code == 130 and "epochs 1-1 of 2 are stored; rerun the same command to resume" in err
    doc = _show("sn", url)
    assert doc["status"] == "training" and doc["epochs_done"] == 1 and len(doc["curve"]) == 1
    assert f"{SUPERNET_PREFIX}sn/checkpoint.pt" in _artifacts(url)
    monkeypatch.setattr(cli_supernet, "_epoch_line", real)
    code, out, err = _train("sn", url)
    assert code == 0 and "resuming after epoch 1 of 2" in err
    doc = _show("sn", url)
    assert doc["status"] == "trained" and [c["epoch"] for c in doc["curve"]] == [1, 2]
    resumed, whole = _artifacts(url), _artifacts(trained)
    assert f"{SUPERNET_PREFIX}sn/checkpoint.pt" not in resumed
    a = torch.load(io.BytesIO(resumed[f"{SUPERNET_PREFIX}sn/weights.pt"]), weights_only=True)
    b = torch.load(io.BytesIO(whole[f"{SUPERNET_PREFIX}sn/weights.pt"]), weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(("args", "needle"), [
    (["--space", "nope"], "unknown search space 'nope'; accepted: mobilenetv2, plain, resnet"),
    (["--space", "plain", "--option", "foo=1"], "space_options: space 'plain': unknown option(s) foo"),
    (["--space", "plain", "--data", "npz:/no/such.npz"], "data: npz:/no/such.npz"),
    (["--space", "plain", "--epochs", "0"], "epochs: got 0; accepted: 1 to 10000"),
    (["--space", "plain", "--epochs", "3", "--dense-epochs", "3"],
     "dense_epochs: got 3; accepted: 0 to 2 (fewer than the 3 epochs)"),
    (["--space", "plain", "--option", "rank_ratios=(0.5,)", "--epochs", "3", "--dense-epochs", "2"],
     "dense_epochs: got 2; accepted: 0 or unset, since no layer of this space is both dense and low-rank"),
    (["--space", "plain", *TINY_OPTIONS[:-2], "--epochs", "2"],
     "supernet 'sn' exists with other settings: stored space_options {\"hidden\": [0], "),
])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(trained: str, tmp_path: Path, args: list[str],
                                                          needle: str) -> None:
    before = _artifacts(trained)
    name = "sn" if "exists" in needle else "other"
    code, out, err = nas_cli("supernet", "train", name, *args, "--storage", trained)
    assert code == 2 and out == "" and err.startswith("error: ") and err.count("\n") == 1, err
    assert needle in err
    assert _artifacts(trained) == before
    if "exists" not in needle:  # a database that did not exist is not created
        fresh = tmp_path / "new.db"
        code, _, err = nas_cli("supernet", "train", "other", *args, "--storage", f"sqlite:///{fresh}")
        assert code == 2 and needle in err and not fresh.exists()


def test_unknown_supernet_is_one_line(trained: str) -> None:
    code, _, err = nas_cli("supernet", "show", "zz", "--storage", trained)
    assert code == 2 and err.strip() == "error: supernet 'zz' is not in this database; accepted: sn"


# ------------------------------------------------------------------------ studies on a supernet


def _trials(name: str, url: str) -> list:
    import optuna

    store = Store(url)
    try:
        return optuna.load_study(study_name=name, storage=store.optuna).get_trials(deepcopy=False)
    finally:
        store.close()


def test_two_budgets_share_one_supernet_and_reach_their_targets(trained: str) -> None:
    weights = _artifacts(trained)
    for study, budget, target in (("on_params", "params<=3k", 4), ("on_flops", "flops<=60k", 3)):
        code, out, err = nas_cli("study", "create", study, "--supernet", "sn", "--budget", budget, "--trials",
                                 str(target), "--sampler", "random", "--storage", trained)
        assert code == 0, err
        assert "supernet accuracy, not stand-alone accuracy" in out
        code, out, err = nas_cli("study", "run", study, "--quiet", "--storage", trained)
        assert code == 0, err
        assert f"{target}/{target} within budget ({target} evaluated on the supernet)" in out
        evaluated = [t for t in _trials(study, trained) if t.user_attrs.get("status") == "supernet"]
        assert len(evaluated) == target
        for t in evaluated:  # labelled, never stand-alone; seconds each
            assert t.user_attrs["accuracy_source"] == "supernet sn" and 0.0 <= t.values[0] <= 1.0
            assert "train_seconds" not in t.user_attrs
        code, out, _ = nas_cli("pareto", study, "--format", "json", "--storage", trained)
        assert code == 0 and {r["accuracy_source"] for r in json.loads(out)} == {"supernet sn"}
        code, out, _ = nas_cli("study", "show", study, "--format", "json", "--storage", trained)
        spec = json.loads(out)["spec"]
        assert spec["supernet"] == "sn" and spec["space"] == "plain" and spec["fit_space"] is True
        assert set(spec["space_options"]["widths"]) <= {8, 16}  # the supernet's, or fitted within them
    assert _artifacts(trained) == weights  # the supernet is shared, not trained again
    # A subnet evaluated by one study is not evaluated again by another on the same supernet: the
    # same draws (same sampler and seed as on_params) come back from the store with the same accuracy.
    first = {t.user_attrs["spec_hash"]: t.values[0] for t in _trials("on_params", trained)
             if t.user_attrs.get("status") == "supernet"}
    assert not any(t.user_attrs.get("inherited_reused") for t in _trials("on_params", trained))
    assert nas_cli("study", "create", "again", "--supernet", "sn", "--budget", "params<=3k", "--trials", "4",
                   "--sampler", "random", "--storage", trained)[0] == 0
    assert nas_cli("study", "run", "again", "--quiet", "--storage", trained)[0] == 0
    again = [t for t in _trials("again", trained) if t.user_attrs.get("status") == "supernet"]
    assert again and all(t.user_attrs.get("inherited_reused") for t in again)
    known = {t.user_attrs["spec_hash"]: t.values[0] for study in ("on_params", "on_flops")
             for t in _trials(study, trained) if t.user_attrs.get("status") == "supernet"}
    assert {t.user_attrs["spec_hash"]: t.values[0] for t in again}.items() <= known.items()
    # half of it starts from the subnets evaluated before (the fast path's seed), the rest are the sampler's
    # draws, the same as on_params' first ones
    drawn = [t.user_attrs["spec_hash"] for t in again if "warm_start" not in t.user_attrs]
    assert len(drawn) == 2 and set(drawn) <= set(first)


def test_a_study_on_a_supernet_refuses_bad_input_in_one_line(trained: str, tmp_path: Path) -> None:
    config = tmp_path / "study.toml"
    config.write_text('name = "c1"\nspace = "plain"\ninput_size = 16\nbudget = "params<=3k"\n'
                      'fit_space = false\n[space_options]\nmax_depth = 1\n')
    cases = [
        (["s9", "--supernet", "sn", "--space", "plain", "--budget", "params<=3k"], "--space does not go with "
         "--supernet"),
        (["s9", "--supernet", "sn", "--option", "max_depth=2", "--budget", "params<=3k"], "--option does not go"),
        (["s9", "--supernet", "zz", "--budget", "params<=3k"], "supernet 'zz' is not in this database; accepted: sn"),
        (["s9", "--supernet", "sn", "--input-size", "16", "--budget", "params<=3k"], "input_size: got 16, "
         "supernet 'sn' was trained with None"),
        (["s9", "--supernet", "sn", "--seed", "3", "--budget", "params<=3k"], "seed: got 3"),
        (["s9", "--supernet", "sn", "--budget", "params<=10"], "budget: params<=10 is below what space 'plain'"),
        (["s9", "--supernet", "sn", "--pruner", "pareto", "--budget", "params<=3k"], "pruner does not apply"),
        (["--config", str(config), "--supernet", "sn"], "supernet 'sn' takes 1x8x8 inputs and 10 classes; the "
         "study's data give 1x16x16"),
    ]
    before = _artifacts(trained)
    for args, needle in cases:
        code, out, err = nas_cli("study", "create", *args, "--storage", trained)
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and needle in err, (args, err)
    assert _artifacts(trained) == before
    code, out, _ = nas_cli("study", "list", "--format", "json", "--storage", trained)
    assert "s9" not in {r["name"] for r in json.loads(out)} and "c1" not in {r["name"] for r in json.loads(out)}


def test_a_second_training_of_one_name_is_refused_while_the_first_runs(tmp_path: Path) -> None:
    """Two foreground `nas supernet train` of one name would write the same records: the second (and a --queue)
    is refused in one line naming the first; Ctrl-C frees the name, and so does kill -9 (at once on one host)."""
    url = f"sqlite:///{tmp_path / 'nas.db'}"
    args = ["supernet", "train", "busy", "--space", "plain", *TINY_OPTIONS, "--epochs", "1000", "--threads", "1",
            "--quiet", "--storage", url]

    def holder() -> str | None:
        try:
            store = Store(url, mode="existing")
        except Exception:  # noqa: BLE001 -- the first process is still creating the database
            return None
        try:
            return lease_holder(store, "busy")
        except Exception:  # noqa: BLE001 -- its tables are not there yet
            return None
        finally:
            store.close()

    for stop in (signal.SIGINT, signal.SIGKILL):
        first = subprocess.Popen([NAS, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            wait_until(holder, "the first training's lease")
            for extra in ([], ["--queue"]):
                code, out, err = nas_cli(*args, *extra)
                assert code == 2 and out == "" and err.count("\n") == 1, err
                assert f"supernet 'busy' is being trained by {socket.gethostname()}:{first.pid} " in err
            first.send_signal(stop)
            first.wait(timeout=120)
        finally:
            if first.poll() is None:
                first.kill()
        store = Store(url, mode="existing")
        try:  # free again: removed on Ctrl-C, its process gone after kill -9
            assert lease_holder(store, "busy") is None
        finally:
            store.close()
        if stop == signal.SIGINT:
            assert not any(k.endswith("lease.json") for k in _artifacts(url))
    code, out, err = nas_cli(*args, "--queue")  # the name is usable again
    assert code == 0 and "queued supernet busy" in out, err


def test_a_supernet_stored_before_dense_first_training_reads_as_0_and_the_same_command_finds_it(
        tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'nas.db'}"
    assert _train("old", url, "--dense-epochs", "0")[0] == 0
    store = Store(url)
    try:  # the record as a lightnas without dense-first training wrote it: no such setting
        key = f"{SUPERNET_PREFIX}old/record.json"
        doc = json.loads(store.get_artifact(key) or b"{}")
        del doc["spec"]["dense_epochs"]
        store.put_artifact(key, json.dumps(doc).encode())
    finally:
        store.close()
    code, out, _ = nas_cli("supernet", "show", "old", "--format", "json", "--storage", url)
    doc = json.loads(out)
    assert code == 0 and doc["settings"]["dense_epochs"] == 0 and doc["dense_epochs"] == 0
    code, out, err = _train("old", url)  # dense_epochs unset: the stored supernet's, not "other settings"
    assert code == 0 and "trained already" in out, err
    code, _, err = _train("old", url, "--dense-epochs", "1")
    assert code == 2 and "stored dense_epochs 0 (given 1)" in err
