"""Issue 30, items 3 and 4: a supernet's ranking check (``nas supernet check``) and fine-tuning a
supernet study's members from their inherited weights (``nas study finetune``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY_OPTIONS, nas_cli, trials_of

from nas.search import SUPERNET_PREFIX, check_supernet, make_supernet_spec, train_stored_supernet
from storage import Store

torch.set_num_threads(1)

TRAIN = ["supernet", "train", "sn", "--space", "plain", *TINY_OPTIONS, "--epochs", "2", "--threads", "1", "--quiet"]


def _artifacts(url: str, prefix: str = "") -> dict[str, bytes]:
    store = Store(url)
    try:
        return {k: store.get_artifact(k) or b"" for k in store.artifact_keys(prefix)}
    finally:
        store.close()


def _json(*args: str) -> object:
    code, out, err = nas_cli(*args, "--format", "json")
    assert code == 0, err
    return json.loads(out)


def _one_line_2(args: list[str], needle: str) -> None:
    code, out, err = nas_cli(*args)
    assert code == 2 and out == "" and err.startswith("error: ") and err.count("\n") == 1, (args, err)
    assert needle in err, (needle, err)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A database holding supernet 'sn' of the tiny plain space (2 epochs) and a study 's' of 6
    subnets on it, run."""
    url = f"sqlite:///{tmp_path_factory.mktemp('check') / 'nas.db'}"
    code, _, err = nas_cli(*TRAIN, "--storage", url)
    assert code == 0, err
    code, _, err = nas_cli("study", "create", "s", "--supernet", "sn", "--budget", "params<=30k", "--trials", "6",
                           "--sampler", "random", "--storage", url)
    assert code == 0, err
    code, _, err = nas_cli("study", "run", "s", "--quiet", "--storage", url)
    assert code == 0, err
    return url


# ----------------------------------------------------------------------------- nas supernet check


def test_check_stores_and_shows_tau_rho_and_every_pair(trained: str) -> None:
    code, out, err = nas_cli("supernet", "check", "sn", "--n", "3", "--epochs", "1", "--storage", trained)
    assert code == 0, err
    assert "Kendall tau" in out and "Spearman rho" in out and "stored with supernet sn" in out
    assert err.count("subnet ") >= 3  # a line per subnet
    check = _json("supernet", "show", "sn", "--storage", trained)["check"]  # type: ignore[index]
    assert check["n"] == 3 and check["epochs"] == 1 and check["seed"] == 0 and check["when"] > 0
    assert len(check["pairs"]) == 3
    for p in check["pairs"]:
        assert 0.0 <= p["supernet"] <= 1.0 and 0.0 <= p["standalone"] <= 1.0 and p["params"] > 0
    params = [p["params"] for p in check["pairs"]]
    assert params == sorted(params) and params[0] < params[-1]  # spanning the space's range
    for k in ("kendall_tau", "spearman_rho"):
        assert check[k] is None or -1.0 <= check[k] <= 1.0
    assert check["fidelity"]["epochs"] == 1 and check["fidelity"]["data"] == "digits"
    code, out, _ = nas_cli("supernet", "show", "sn", "--storage", trained)
    assert code == 0 and "ranking check: Kendall tau" in out and "ranking check pairs" in out
    row = _json("supernet", "list", "--storage", trained)[0]  # type: ignore[index]
    assert row["check_n"] == 3 and row["kendall_tau"] == check["kendall_tau"]
    code, out, _ = nas_cli("supernet", "list", "--storage", trained)
    assert code == 0 and "3 subnets, 1 ep" in out


def test_an_interrupted_check_stores_nothing(trained: str) -> None:
    before = _artifacts(trained, SUPERNET_PREFIX)
    seen = []

    def stop(pair: dict) -> None:
        seen.append(pair)
        if len(seen) == 2:
            raise KeyboardInterrupt

    store = Store(trained)
    try:
        with pytest.raises(KeyboardInterrupt):
            check_supernet(store, "sn", n=4, epochs=1, seed=5, on_subnet=stop)
    finally:
        store.close()
    assert _artifacts(trained, SUPERNET_PREFIX) == before  # the last check (if any) stays as it was


def test_check_refuses_bad_input_in_one_line(trained: str, tmp_path: Path) -> None:
    spec = make_supernet_spec(name="half", space="plain", space_options={"max_depth": 1, "widths": [8]}, epochs=2)
    store = Store(trained)

    def stop(_entry: dict) -> None:
        raise KeyboardInterrupt  # Ctrl-C once epoch 1 is stored: a supernet still training

    try:
        with pytest.raises(KeyboardInterrupt):
            train_stored_supernet(spec, store, on_epoch=stop)
    finally:
        store.close()
    before = _artifacts(trained, SUPERNET_PREFIX)
    check = ["supernet", "check", "--storage", trained]
    for args, needle in [
        (["zz", "--n", "3"], "supernet 'zz' is not in this database; accepted: half, sn"),
        (["half", "--n", "3"], "supernet 'half' has trained 1 of 2 epochs"),
        (["sn", "--n", "2"], "--n: got 2; accepted: 3 to 500"),
        (["sn", "--n", "100000"], "--n: got 100000; accepted: 3 to 500"),
        (["sn", "--n", "3", "--epochs", "0"], "--epochs: got 0; accepted: 1 to 10000"),
    ]:
        _one_line_2([*check[:2], *args, *check[2:]], needle)
    assert _artifacts(trained, SUPERNET_PREFIX) == before


# --------------------------------------------------------------------------- nas study finetune


def test_finetune_the_front_labelled_exported_and_never_duplicated(trained: str, tmp_path: Path) -> None:
    front = _json("pareto", "s", "--storage", trained)
    assert front and {r["accuracy_source"] for r in front} == {"supernet sn"}  # type: ignore[union-attr]
    members = {r["spec_hash"]: r for r in front}  # type: ignore[union-attr]
    n_trials = len(trials_of(trained, "s"))
    code, out, err = nas_cli("study", "finetune", "s", "--epochs", "1", "--storage", trained)
    assert code == 0, err
    assert f"{len(members)} member(s) at 1 fine-tuning epoch(s), {len(members)} new" in out
    trials = trials_of(trained, "s")
    added = [t for t in trials if t.user_attrs.get("status") == "finetuned"]
    assert len(trials) == n_trials + len(members) and len(added) == len(members)
    for t in added:  # labelled, with where its evaluation is and where it came from
        assert t.user_attrs["accuracy_source"] == "finetuned from supernet sn (1 epoch)"
        assert t.user_attrs["epochs_run"] == 1 and t.user_attrs["fidelity_key"]
        assert t.user_attrs["finetuned_from"]["supernet"] == "sn"
    # the front now ranks the fine-tuned accuracy, each row labelled
    rows = _json("pareto", "s", "--storage", trained)
    tuned = [r for r in rows if r["accuracy_source"].startswith("finetuned")]  # type: ignore[union-attr]
    assert tuned and all(r["test_accuracy"] is not None for r in tuned)
    assert {r["trial"] for r in tuned} <= {t.number for t in added}
    code, out, _ = nas_cli("pareto", "s", "--storage", trained)
    assert code == 0 and "finetuned from supernet sn" in out and "neither is stand-alone" in out
    # the study's target counts networks of the search, not fine-tunes
    listed = {r["name"]: r for r in _json("study", "list", "--storage", trained)}  # type: ignore[union-attr]
    assert listed["s"]["within_budget"] == 6
    # export of a fine-tuned member: its fine-tuned weights, labelled
    number = tuned[0]["trial"]
    to = tmp_path / "out"
    code, out, err = nas_cli("export", "s", "--trial", str(number), "--to", str(to), "--formats", "json,state_dict",
                             "--storage", trained)
    assert code == 0, err
    assert "finetuned from supernet sn" in err  # the note says whose weights
    meta = json.loads((to / "model.json").read_text())
    assert meta["accuracy_source"] == "finetuned from supernet sn (1 epoch)"
    state = torch.load(to / "weights.pt", weights_only=True)
    assert state and all(isinstance(v, torch.Tensor) for v in state.values())
    # refinement starts from the fine-tuned weights (--reuse-weights), stopped after its baseline
    from nas.refine import RefineSettings, refine_trial

    got = []

    def stop(e) -> None:
        if e.kind == "candidate":
            got.append(e.row)
            raise KeyboardInterrupt

    store = Store(trained)
    try:
        with pytest.raises(KeyboardInterrupt):
            refine_trial("s", number, store, RefineSettings(reuse_weights=True), on_event=stop)
    finally:
        store.close()
    fkey = next(t for t in added if t.number == number).user_attrs["fidelity_key"]
    assert got[0].method == "baseline" and json.loads(got[0].detail_json)["weights"].endswith(f"/{fkey}.pt")
    assert got[0].val_accuracy == pytest.approx(tuned[0]["accuracy"])  # the fine-tuned network itself
    # a second fine-tune (the front is now the fine-tuned trials) trains and adds nothing
    weights = _artifacts(trained, "weights/")
    code, out, err = nas_cli("study", "finetune", "s", "--front", "--epochs", "1", "--storage", trained)
    assert code == 0, err
    assert ", 0 new" in out and "fine-tuned before in this study" in err
    assert len(trials_of(trained, "s")) == len(trials) and _artifacts(trained, "weights/") == weights


def test_finetune_refuses_bad_input_in_one_line(trained: str) -> None:
    code, _, err = nas_cli("study", "create", "plain1", "--space", "plain", *TINY_OPTIONS, "--budget", "params<=30k",
                           "--trials", "1", "--storage", trained)
    assert code == 0, err
    n = len(trials_of(trained, "s"))
    weights = _artifacts(trained, "weights/")
    ft = ["study", "finetune"]
    for args, needle in [
        (["plain1", "--epochs", "1"], "study 'plain1' is not on a supernet"),
        (["s", "--trial", "999", "--epochs", "1"], "--trial: study 's' has no trial 999; trials that can: 0, 1"),
        (["s", "--epochs", "0"], "--epochs: got 0; accepted: 1 to 10000"),
        (["s", "--front", "--trial", "0", "--epochs", "1"], "give --front (the Pareto front) or --trial N"),
        (["zz", "--epochs", "1"], "zz"),
    ]:
        _one_line_2([*ft, *args, "--storage", trained], needle)
    assert len(trials_of(trained, "s")) == n and _artifacts(trained, "weights/") == weights


def test_api_lists_and_shows_supernets_with_their_check(trained: str) -> None:
    from fastapi.testclient import TestClient

    from nas.serve import ApiSettings, create_app

    with TestClient(create_app(ApiSettings(storage=trained, read_only=True))) as c:
        listed = c.get("/supernets")
        assert listed.status_code == 200
        row = next(r for r in listed.json() if r["name"] == "sn")
        one = c.get("/supernets/sn")
        assert one.status_code == 200
        doc = one.json()
        assert doc["name"] == "sn" and doc["status"] == "trained" and "not stand-alone" in doc["accuracy_source"]
        check = doc["check"]
        if check is not None:  # stored by the check test of this module
            assert row["kendall_tau"] == check["kendall_tau"] and len(check["pairs"]) == check["n"]
        for t in trials_of(trained, "s"):  # fine-tuned by the finetune test of this module: labelled here too
            if t.user_attrs.get("status") == "finetuned":
                detail = c.get(f"/studies/s/trials/{t.number}").json()
                assert detail["accuracy_source"] == "finetuned from supernet sn (1 epoch)"
        missing = c.get("/supernets/zz")
        assert missing.status_code == 404 and "supernet 'zz' is not in this database" in missing.json()["message"]
        page = c.get("/ui/static/studies.js")
        assert page.status_code == 200 and "/supernets" in page.text
