"""Races between workers, studies and the threads of ``nas serve`` (issue 28, "Reliability").

* two trials of one new architecture at the same fidelity at once (separate ``Store`` objects on one
  SQLite file, and on PostgreSQL): one trains it, the other waits for the claim and reuses the result,
  and the stored weights are those of the stored accuracy; a claim whose owner died is taken over;
* one profile name stored with different numbers in two databases, their studies read alternately and
  from two threads: each costs with its own database's profile; the API's export cache hammered by
  concurrent requests: no ``KeyError``;
* a study deleted and created again under its name: a long-running worker and the API's caches treat it
  as the new study it is.
"""

from __future__ import annotations

import json
import random
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import optuna
import pytest
from conftest import WAIT, trials_of, wait_until
from optuna.trial import TrialState

from nas import TrialInterrupted, load_network
from nas.search import (
    StudySpec,
    TrialObjective,
    create_study,
    delete_study,
    get_study_spec,
    list_studies,
    load_context,
    make_spec,
)
from nas.workers import run_worker
from objectives import DeviceError, estimate_cost, evaluate, get_device
from search_spaces import sample_spec
from storage import SCHEMA_VERSION, Meta, Store

SPACE = {"max_depth": 1, "widths": (8, 16), "kernels": (3,), "hidden": (0,), "rank_ratios": (1.0,)}


def spec(name: str, trials: int, *, epochs: int = 3, **kw):
    fields = dict(name=name, space="plain", data="digits", budget="params<=60k", trials=trials, seed=1,
                  sampler="random", space_options=SPACE, device="cpu",
                  fidelity={"epochs": epochs, "train_fraction": 0.5, "batch_size": 64})
    fields.update(kw)
    return make_spec(**fields)



@pytest.fixture
def fast_switching() -> Iterator[None]:
    """Threads switch every microsecond: a window between two steps that should be one is met at once."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


def enqueue(url: str, name: str, arch_seed: int = 0, times: int = 2) -> tuple[str, list[int]]:
    """Start ``times`` trials of study ``name`` that suggest the same architecture: (its hash, trial ids).
    Asked one after the other (two processes popping Optuna's queue at once may pop one trial twice
    on SQLite; workers ask under the study's lock)."""
    store = Store(url)
    try:
        ctx = load_context(name, store, threads=1)
        arch = sample_spec(ctx.space, seed=arch_seed)
        study = optuna.load_study(study_name=name, storage=store.optuna)
        for _ in range(times):
            study.enqueue_trial(ctx.space.params_of(arch))
        return arch.hash, [study.ask()._trial_id for _ in range(times)]
    finally:
        store.close()


def trial_of(store: Store, name: str, trial_id: int) -> tuple[optuna.Study, optuna.Trial]:
    """A started trial, through ``store``'s own connections."""
    study = optuna.load_study(study_name=name, storage=store.optuna)
    study.get_trials(deepcopy=False)  # Optuna's trial cache learns the trials started elsewhere
    return study, optuna.trial.Trial(study, trial_id)


# ------------------------------------------------------------------- 1. one architecture, trained once


def test_two_trials_of_one_new_architecture_train_it_once(storage_url):
    create = Store(storage_url)
    create_study(spec("race", 10), create)
    create.close()
    h, ids = enqueue(storage_url, "race")
    training = [threading.Event(), threading.Event()]
    start = threading.Barrier(2, timeout=WAIT)

    def run(i: int) -> str:
        store = Store(storage_url)  # each its own Store: its own connections, as two workers have
        try:
            ctx = load_context("race", store, threads=1)
            study, trial = trial_of(store, "race", ids[i])

            def on_epoch(_t: optuna.trial.BaseTrial, epoch: int, _acc: float) -> None:
                # A trainer goes on past its first epoch only once the other trial has met the
                # architecture too: trains it as well, or waits for this one's claim.
                if epoch != 1:
                    return
                training[i].set()
                wait_until(lambda: training[1 - i].is_set()
                           or "waiting_for" in store.optuna.get_trial(ids[1 - i]).user_attrs,
                           "the other trial to meet the architecture")

            objective = TrialObjective(ctx, on_epoch=on_epoch)
            start.wait()
            values = objective(trial)
            study.tell(trial, values)
            return str(store.optuna.get_trial(ids[i]).user_attrs["status"])
        finally:
            store.close()

    with ThreadPoolExecutor(2) as pool:
        statuses = sorted(pool.map(run, range(2)))
    assert statuses == ["reused", "trained"]  # one training, not two

    store = Store(storage_url)
    try:
        trials = {t._trial_id: t for t in trials_of(storage_url, "race")}
        reused = next(trials[i] for i in ids if trials[i].user_attrs["status"] == "reused")
        trained = next(trials[i] for i in ids if trials[i].user_attrs["status"] == "trained")
        assert reused.user_attrs["waiting_for"]["owner"].startswith(f"race#{trained.number}@")
        ctx = load_context("race", store, threads=1)
        ev = store.get_evaluation(h, ctx.study_spec.fidelity_key)
        assert ev is not None
        assert reused.values == trained.values and reused.values[0] == ev.val_accuracy
        # The stored weights are those of the stored accuracy.
        model = load_network(store, sample_spec(ctx.space, seed=0), ev.artifact_key, ctx.data.input_shape,
                             ctx.data.num_classes)
        assert model is not None
        assert evaluate(model, ctx.data.x_val.cpu(), ctx.data.y_val.cpu()) == pytest.approx(ev.val_accuracy)
        assert store.get_claim(h, ctx.study_spec.fidelity_key) is None  # released
    finally:
        store.close()


def test_two_studies_with_the_same_data_and_fidelity_train_an_architecture_once(sqlite_url):
    store = Store(sqlite_url)
    create_study(spec("one", 10), store)
    create_study(spec("two", 10), store)
    store.close()
    stores = [Store(sqlite_url), Store(sqlite_url)]
    try:
        ctxs = [load_context(n, s, threads=1) for n, s in zip(("one", "two"), stores, strict=True)]
        assert ctxs[0].study_spec.fidelity_key == ctxs[1].study_spec.fidelity_key
        arch = sample_spec(ctxs[0].space, seed=3)
        first = threading.Event()
        studies = [optuna.load_study(study_name=n, storage=s.optuna) for n, s in zip(("one", "two"), stores,
                                                                                       strict=True)]
        trials = []
        for study, ctx in zip(studies, ctxs, strict=True):
            study.enqueue_trial(ctx.space.params_of(arch))
            trials.append(study.ask())

        def on_epoch(_t: optuna.trial.BaseTrial, epoch: int, _acc: float) -> None:
            if epoch == 1:  # study two meets the architecture while study one trains it
                first.set()
                wait_until(lambda: "waiting_for" in stores[1].optuna.get_trial(trials[1]._trial_id).user_attrs
                           or trials[1].user_attrs.get("status"), "study two to meet the architecture")

        def second() -> list[float]:
            first.wait(WAIT)
            return TrialObjective(ctxs[1])(trials[1])

        with ThreadPoolExecutor(2) as pool:
            one = pool.submit(TrialObjective(ctxs[0], on_epoch=on_epoch), trials[0])
            two = pool.submit(second)
            assert one.result()[0] == two.result()[0]
        assert [t.user_attrs["status"] for t in trials] == ["trained", "reused"]
    finally:
        for s in stores:
            s.close()


def test_claims_are_exclusive_and_a_dead_owners_claim_is_taken_over(storage_url):
    s = Store(storage_url)
    try:
        a = s.claim_evaluation("a" * 64, "fk", "alive", grace=3600)
        assert a.owner == "alive"
        assert s.claim_evaluation("a" * 64, "fk", "other", grace=30).owner == "alive"  # live: not taken
        assert s.refresh_claim("a" * 64, "fk", "alive") and not s.refresh_claim("a" * 64, "fk", "other")
        assert s.claim_evaluation("a" * 64, "other-fidelity", "other", grace=30).owner == "other"
        s.claim_evaluation("d" * 64, "fk", "ghost", grace=0.0)  # an owner that never beats
        assert s.claim_evaluation("d" * 64, "fk", "heir", grace=30).owner == "heir"
        assert not s.refresh_claim("d" * 64, "fk", "ghost")
        s.release_claim("d" * 64, "fk", "ghost")  # not the ghost's any more: it stays the heir's
        assert s.get_claim("d" * 64, "fk").owner == "heir"
        s.release_claim("d" * 64, "fk", "heir")
        assert s.get_claim("d" * 64, "fk") is None
    finally:
        s.close()


def test_a_trial_takes_over_the_claim_of_an_owner_that_died_and_trains(sqlite_url):
    store = Store(sqlite_url)
    try:
        create_study(spec("heir", 10), store)
        h, ids = enqueue(sqlite_url, "heir", times=1)
        ctx = load_context("heir", store, threads=1)
        fkey = ctx.study_spec.fidelity_key
        study, trial = trial_of(store, "heir", ids[0])
        objective = TrialObjective(ctx)
        # Killed mid-training: its claim stays, its heartbeat never comes (grace 3 s: long enough for the
        # trial to meet the claim alive even on a loaded machine, then see it die).
        store.claim_evaluation(h, fkey, "killed-worker", grace=3.0)
        objective(trial)
        attrs = store.optuna.get_trial(trial._trial_id).user_attrs
        assert attrs["status"] == "trained" and attrs["waiting_for"]["owner"] == "killed-worker"
        assert store.get_evaluation(h, fkey) is not None and store.get_claim(h, fkey) is None

        # A live owner (heartbeat grace an hour) is waited for, at most claim_wait seconds: the trial
        # is given back to be retried, untrained.
        other = sample_spec(ctx.space, seed=5)
        assert other.hash != h
        store.claim_evaluation(other.hash, fkey, "busy-worker", grace=3600)
        study.enqueue_trial(ctx.space.params_of(other))
        waiting = study.ask()
        with pytest.raises(TrialInterrupted, match="busy-worker"):
            TrialObjective(ctx, claim_wait=0.3)(waiting)
        assert store.get_evaluation(other.hash, fkey) is None
        assert store.get_claim(other.hash, fkey).owner == "busy-worker"
    finally:
        store.close()


def test_a_schema_5_database_opens_and_gains_the_claims_table(storage_url):
    s = Store(storage_url)
    with s.engine.begin() as conn:  # as lightnas 5 left it: no claims table
        conn.exec_driver_sql("DROP TABLE lightnas_claims")
        conn.execute(Meta.__table__.update().where(Meta.key == "schema_version").values(value="5"))
    s.close()
    again = Store(storage_url, mode="existing")
    try:
        assert again.schema_version == SCHEMA_VERSION == 6
        assert again.claim_evaluation("e" * 64, "fk", "me", grace=30).owner == "me"
    finally:
        again.close()


# ------------------------------------------------------------------- 2. nas serve's threads


def test_two_databases_with_one_profile_name_each_cost_with_their_own(tmp_path, fast_switching):
    """A profile name stored in two databases with different numbers: studies of each, read alternately and
    from two threads in one process (as by ``nas serve``'s threads), cost with their own database's profile."""
    base = get_device("cortex-m7")
    arch = sample_spec(spec("x", 1).search_space((1, 8, 8)), 0)
    stores, want = [], []
    for i, power in enumerate((0.5, 5.0)):
        store = Store(f"sqlite:///{tmp_path / f'db{i}.db'}")
        stores.append(store)
        store.save_device_profile("board", base.model_copy(update={"name": "board", "board_power_w": power}).to_toml())
        doc = {**json.loads(spec(f"s{i}", 1).to_json()), "cost_device": "board"}  # as the API validates a body
        create_study(StudySpec.model_validate_json(json.dumps(doc), context={"profiles": store.device_profiles()}),
                     store, target=0)
        want.append(estimate_cost(arch, (1, 8, 8), 10, get_device("board", store.device_profiles()))["energy_uj"])
    assert want[0] != want[1]
    with pytest.raises(DeviceError, match="unknown device profile 'board'"):
        get_device("board")  # known to each database's studies only, never to the process

    def energy(i: int) -> float:
        return get_study_spec(f"s{i}", stores[i]).cost(arch, (1, 8, 8), 10)["energy_uj"]

    try:
        assert [energy(i) for i in (0, 1, 0, 1)] == [want[0], want[1], want[0], want[1]]
        listed = [e.study_spec for i in (1, 0) for e in list_studies(stores[i])]
        assert [s.cost_profile().board_power_w for s in listed if s is not None] == [5.0, 0.5]
        with ThreadPoolExecutor(2) as pool:
            runs = [pool.submit(lambda i=i: [energy(i) for _ in range(30)]) for i in (0, 1)]
            assert [f.result(timeout=WAIT) for f in runs] == [[want[0]] * 30, [want[1]] * 30]
    finally:
        for store in stores:
            store.close()


def test_export_cache_under_concurrent_requests(sqlite_url, fast_switching):
    from fastapi import Response

    from nas.serve import ApiSettings, create_app

    store = Store(sqlite_url)
    service = create_app(ApiSettings(storage=sqlite_url, read_only=True), store).state.nas
    errors: list[BaseException] = []

    def build(key: tuple) -> Response:
        return Response(repr(key).encode(), media_type="application/octet-stream",
                        headers={"Content-Disposition": f'attachment; filename="{key[1]}.onnx"'})

    def route_export(key: tuple) -> Response:
        """What the export routes do with the cache (nas.serve._results.cached_export), step by step."""
        hit = service.exports.get(key)
        if hit is None:
            r = build(key)
            hit = (bytes(r.body), str(r.media_type), {"Content-Disposition": r.headers["content-disposition"]})
            service.exports[key] = hit
            while len(service.exports) > 64:  # EXPORT_CACHE
                service.exports.popitem(last=False)
        service.exports.move_to_end(key)
        return Response(hit[0], media_type=hit[1], headers=hit[2])

    def requests(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(3000):
                key = (rng.choice("ab"), rng.randrange(200))
                r = route_export(key) if rng.random() < 0.5 else service.cached_export(key, lambda k=key: build(k))
                assert r.body == repr(key).encode()
        except BaseException as e:  # noqa: BLE001 -- reported below
            errors.append(e)

    def deletes() -> None:  # DELETE /studies/a drops the study's files (nas.serve._studies.delete)
        try:
            for _ in range(300):
                for key in [k for k in service.exports if k[0] == "a"]:
                    del service.exports[key]
        except BaseException as e:  # noqa: BLE001 -- reported below
            errors.append(e)

    try:
        with ThreadPoolExecutor(5) as pool:
            for f in [pool.submit(requests, i) for i in range(4)] + [pool.submit(deletes)]:
                f.result(timeout=WAIT)
        assert errors == [], repr(errors[:3])
        assert len(service.exports) <= 64
    finally:
        store.close()


# ------------------------------------------------------------------- 3. a study deleted and created again


def test_api_data_shape_follows_a_study_created_again_under_its_name(sqlite_url, tmp_path):
    from nas.serve import ApiSettings, create_app

    x = np.random.default_rng(0).random((80, 12, 12), dtype=np.float32)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=np.arange(80) % 4)
    store = Store(sqlite_url)
    try:
        create_study(spec("s", 10), store)
        service = create_app(ApiSettings(storage=sqlite_url, read_only=True), store).state.nas
        assert service.shape(get_study_spec("s", store)).input_shape == (1, 8, 8)
        delete_study("s", store)  # by another process (the CLI), not through this server
        create_study(spec("s", 10, data=f"npz:{tmp_path / 'd.npz'}"), store)
        shape = service.shape(get_study_spec("s", store))
        assert (shape.input_shape, shape.num_classes) == ((1, 12, 12), 4)
    finally:
        store.close()


def test_api_export_cache_follows_a_study_created_again_under_its_name(sqlite_url):
    from fastapi.testclient import TestClient

    from nas.serve import ApiSettings, create_app

    store = Store(sqlite_url)
    arch = sample_spec(spec("x", 1).search_space((1, 8, 8)), 0)
    store.put_architecture(arch.hash, arch.family, arch.to_json())
    latencies = []
    try:
        with TestClient(create_app(ApiSettings(storage=sqlite_url, read_only=True), store)) as c:
            for device in ("rpi4", "cortex-m7"):  # the same trial (architecture, fidelity) costed on another device
                create_study(spec("s", 10, cost_device=device), store, target=0)
                optuna.load_study(study_name="s", storage=store.optuna).add_trial(optuna.trial.create_trial(
                    params={}, distributions={}, values=[0.5, 0.1],
                    user_attrs={"status": "trained", "spec_hash": arch.hash}))
                r = c.get("/studies/s/trials/0/export", params={"format": "json"})
                assert r.status_code == 200, r.text
                latencies.append(r.json()["model"]["cost"]["totals"]["latency_ms"])
                delete_study("s", store)  # by another process (the CLI), not through this server
        assert latencies[0] != latencies[1]  # the new study's file, not the old one's from the cache
    finally:
        store.close()


@pytest.mark.parametrize("names", [None, ["w"]], ids=["all-studies", "named"])
def test_a_worker_serves_a_study_deleted_and_created_again(storage_url, names):
    store = Store(storage_url)
    create_study(spec("w", 5, epochs=1), store)
    stop = threading.Event()
    seen: list[tuple[str, int, str]] = []

    def on_trial(name: str, t: optuna.trial.FrozenTrial) -> None:
        generation = "new" if any(g == "recreated" for *_, g in seen) else "old"
        seen.append((name, t.number, generation))
        if generation == "old":  # between two trials: someone deletes the study and creates it again
            delete_study("w", store)
            create_study(spec("w", 1, epochs=2), store)  # another fidelity: its networks must be trained
            seen.append(("w", -1, "recreated"))
        else:
            stop.set()

    try:
        run_worker(names, storage_url, stop=stop, heartbeat=1, poll_min=0.05, poll_max=0.2,
                   deadline=time.time() + WAIT, on_trial=on_trial)
        assert stop.is_set(), f"the worker returned without training the new study: {seen}"
        trials = trials_of(storage_url, "w")  # the new study's, trained as the new study says (2 epochs)
        assert [(t.state, t.user_attrs.get("status"), t.user_attrs.get("epochs_run")) for t in trials] == \
            [(TrialState.COMPLETE, "trained", 2)]
    finally:
        store.close()


def test_a_worker_survives_its_study_deleted_and_created_again_while_a_trial_runs(sqlite_url):
    store = Store(sqlite_url)
    create_study(spec("m", 3, epochs=40, fidelity={"epochs": 40, "train_fraction": 1.0, "batch_size": 32}), store)
    stop = threading.Event()
    done: list[tuple[str, int]] = []
    recreated = threading.Event()

    def recreate() -> None:
        # As soon as the worker's trial trains (running, with a heartbeat), replace the study.
        wait_until(lambda: store.study_counts("m").get("RUNNING"), "a running trial")
        delete_study("m", store)
        create_study(spec("m", 1, epochs=1), store)
        recreated.set()

    def on_trial(name: str, t: optuna.trial.FrozenTrial) -> None:
        done.append((name, t.number))
        if recreated.is_set() and trials_of(sqlite_url, "m"):
            stop.set()

    try:
        with ThreadPoolExecutor(1) as pool:
            replacing = pool.submit(recreate)
            run_worker(["m"], sqlite_url, stop=stop, heartbeat=1, poll_min=0.05, poll_max=0.2,
                       deadline=time.time() + WAIT, on_trial=on_trial)
            replacing.result(timeout=WAIT)
        new = [t for t in trials_of(sqlite_url, "m") if t.state == TrialState.COMPLETE]
        assert [(t.user_attrs.get("status"), t.user_attrs.get("epochs_run")) for t in new] == [("trained", 1)]
    finally:
        store.close()
