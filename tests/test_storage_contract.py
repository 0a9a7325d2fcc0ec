"""The storage contract: what every repository of a :class:`storage.Store` promises, run on SQLite
(fast tier) and on a real PostgreSQL (slow tier) through the ``store`` fixture, as Optuna's
``pytest_storages`` runs one suite over every storage. A backend that breaks a promise fails here,
whichever command would have met it."""

from __future__ import annotations

import pytest

from storage import JOB_STATES, Store


def test_studies_are_added_listed_retargeted_and_deleted_once(store: Store) -> None:
    assert store.get_study("a") is None and store.list_studies() == []
    store.add_study("a", '{"x": 1}', 5, info='{"fit": 1}')
    store.add_study("b", "{}", 3)
    assert [r.name for r in store.list_studies()] == ["a", "b"]  # in creation order
    store.set_target("a", 9)
    row = store.get_study("a")
    assert row is not None and row.target_trials == 9 and row.spec_json == '{"x": 1}' and row.info_json == '{"fit": 1}'
    assert row.created_at is not None
    assert store.delete_study("a") is True
    assert store.delete_study("a") is False, "a second delete finds nothing (another client won)"
    assert [r.name for r in store.list_studies()] == ["b"]


def test_device_profiles_are_stored_replaced_and_listed_by_name(store: Store) -> None:
    assert store.device_profiles() == {}
    store.save_device_profile("m7", "name = 'm7'\n")
    store.save_device_profile("a53", "name = 'a53'\n")
    store.save_device_profile("m7", "name = 'm7'\nclock = 2\n")
    assert store.device_profiles() == {"a53": "name = 'a53'\n", "m7": "name = 'm7'\nclock = 2\n"}


def test_an_evaluation_is_stored_once_with_its_weights_and_the_first_one_wins(store: Store) -> None:
    store.put_architecture("h1", "plain", '{"spec": 1}')
    store.put_architecture("h1", "plain", '{"spec": 1}')  # again: harmless
    assert store.get_architecture("h1") == '{"spec": 1}' and store.get_architecture("nope") is None
    kw = dict(fidelity={"epochs": 1}, cost={"flops": 10.0}, seconds=1.5, epochs_run=1, curve=[0.5])
    first = store.put_evaluation("h1", "f1", val_accuracy=0.9, artifact_key="w/h1", artifact=b"first", **kw)
    second = store.put_evaluation("h1", "f1", val_accuracy=0.1, artifact_key="w/h1", artifact=b"second", **kw)
    assert first.val_accuracy == second.val_accuracy == 0.9, "the first recorded evaluation is returned"
    assert store.get_artifact("w/h1") == b"first", "the stored weights are those of the stored accuracy"
    ev = store.get_evaluation("h1", "f1")
    assert ev is not None and ev.val_accuracy == 0.9 and ev.test_accuracy is None and ev.epochs_run == 1
    store.set_test_accuracy("h1", "f1", 0.85)
    assert store.get_evaluation("h1", "f1").test_accuracy == 0.85  # type: ignore[union-attr]
    assert store.get_evaluation("h1", "other fidelity") is None


def test_a_claim_is_held_by_one_owner_until_released_or_silent_past_its_grace(store: Store) -> None:
    held = store.claim_evaluation("h", "f", "worker-1", grace=60)
    assert held.owner == "worker-1"
    assert store.claim_evaluation("h", "f", "worker-2", grace=60).owner == "worker-1", "a live claim is kept"
    assert store.refresh_claim("h", "f", "worker-1") is True
    assert store.refresh_claim("h", "f", "worker-2") is False, "only the owner refreshes"
    store.release_claim("h", "f", "worker-2")  # not the owner: nothing happens
    assert store.get_claim("h", "f").owner == "worker-1"  # type: ignore[union-attr]
    store.release_claim("h", "f", "worker-1")
    assert store.get_claim("h", "f") is None
    store.claim_evaluation("h", "f", "worker-1", grace=0)  # silent at once: anyone may take it over
    assert store.claim_evaluation("h", "f", "worker-2", grace=60).owner == "worker-2"


def test_proxy_scores_are_cached_per_input_and_the_first_value_is_kept(store: Store) -> None:
    assert store.get_proxy_scores("h", "in1") == {}
    store.put_architecture("h", "plain", "{}")  # scores belong to a stored architecture
    store.put_proxy_scores("h", "in1", {"shape": [1, 8, 8]}, {"snip": 1.0, "synflow": 2.0})
    store.put_proxy_scores("h", "in1", {"shape": [1, 8, 8]}, {"snip": 5.0})
    store.put_proxy_scores("h", "in2", {"shape": [1, 28, 28]}, {"snip": 3.0})
    assert store.get_proxy_scores("h", "in1") == {"snip": 1.0, "synflow": 2.0}
    assert store.get_proxy_scores("h", "in2") == {"snip": 3.0}


def test_artifacts_round_trip_bytes_and_are_replaced(store: Store) -> None:
    assert store.get_artifact("k") is None
    blob = bytes(range(256)) * 64
    store.put_artifact("k", blob)
    assert store.get_artifact("k") == blob
    store.put_artifact("k", b"")
    assert store.get_artifact("k") == b""


def test_refinement_steps_are_stored_once_per_run_and_step(store: Store) -> None:
    store.put_architecture("p", "plain", "{}")
    kw = dict(study="s", parent_trial=3, parent_spec_hash="p", settings_hash="run1", parent_step=None,
              method="prune", spec_hash="p", settings={"a": 1}, detail={}, test_accuracy=None, cost={"flops": 1.0},
              artifact_key="r/1", seconds=1.0)
    a = store.put_refinement(step=1, val_accuracy=0.8, **kw)
    b = store.put_refinement(step=1, val_accuracy=0.1, **kw)  # the same run's step again: the stored one
    assert b.id == a.id and b.val_accuracy == 0.8
    store.put_refinement(step=2, val_accuracy=0.7, **kw)
    assert [r.step for r in store.get_refinements("s", parent_trial=3)] == [1, 2]
    assert store.get_refinement(a.id).method == "prune"  # type: ignore[union-attr]
    assert store.get_refinements("other") == []


def test_a_job_is_queued_once_claimed_by_one_worker_and_finished_by_it_only(store: Store) -> None:
    job, created = store.add_job(kind="refine", study="s", trial=1, key="k1", settings={"x": 1})
    again, created_again = store.add_job(kind="refine", study="s", trial=1, key="k1", settings={"x": 1})
    assert created and not created_again and again.id == job.id, "the same job is queued once"
    other, _ = store.add_job(kind="refine", study="t", trial=2, key="k2", settings={})
    assert store.claim_job("w1", ["nobody"]) is None
    claimed = store.claim_job("w1", ["s"])
    assert claimed is not None and claimed.id == job.id and claimed.state == "running" and claimed.attempts == 1
    assert store.claim_job("w2", ["s"]) is None, "a running job is nobody else's"
    assert store.job_heartbeat(job.id, "w2") is False and store.finish_job(job.id, "w2", "done") is False
    assert store.job_heartbeat(job.id, "w1", {"step": 2}) is True
    assert store.finish_job(job.id, "w1", "done", result={"ok": True}) is True
    assert store.get_job(job.id).state == "done"  # type: ignore[union-attr]
    assert [j.id for j in store.list_jobs(state="queued")] == [other.id]
    assert {j.state for j in store.list_jobs()} <= set(JOB_STATES)
    with pytest.raises(ValueError, match="done, failed or queued"):
        store.finish_job(other.id, "w1", "running")
