"""Repositories of refinement candidates and of the job queue."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from ._repository import Repository
from ._schema import (
    JobRow,
    RefinementRow,
    _aware,
    _utcnow,
)


class JobsRepo(Repository):
    """Refinement lineage (``lightnas_refinements``) and queued jobs (``lightnas_jobs``)."""

    def put_refinement(self, *, study: str, parent_trial: int, parent_spec_hash: str, settings_hash: str, step: int,
                       parent_step: int | None, method: str, spec_hash: str, settings: dict[str, Any],
                       detail: dict[str, Any], val_accuracy: float, test_accuracy: float | None,
                       cost: dict[str, Any], artifact_key: str, seconds: float) -> RefinementRow:
        """Record one candidate (its architecture must be stored). If the same run already
        stored this step (a concurrent duplicate), the stored row is returned instead."""
        row = RefinementRow(study=study, parent_trial=parent_trial, parent_spec_hash=parent_spec_hash,
                            settings_hash=settings_hash, step=step, parent_step=parent_step, method=method,
                            spec_hash=spec_hash, settings_json=json.dumps(settings, sort_keys=True),
                            detail_json=json.dumps(detail, sort_keys=True), val_accuracy=val_accuracy,
                            test_accuracy=test_accuracy, cost_json=json.dumps(cost), artifact_key=artifact_key,
                            seconds=seconds)
        try:
            with self.session() as s:
                s.add(row)
            return row
        except IntegrityError:
            existing = self.get_refinements(study, parent_trial=parent_trial, settings_hash=settings_hash)
            same = [r for r in existing if r.step == step]
            if not same:
                raise
            return same[0]

    def get_refinements(self, study: str, *, parent_trial: int | None = None,
                        settings_hash: str | None = None) -> list[RefinementRow]:
        """Candidates of ``study``, optionally of one parent trial and one run, ordered by
        parent trial, run (first created first) and step."""
        q = select(RefinementRow).where(RefinementRow.study == study)
        if parent_trial is not None:
            q = q.where(RefinementRow.parent_trial == parent_trial)
        if settings_hash is not None:
            q = q.where(RefinementRow.settings_hash == settings_hash)
        with self.session() as s:
            rows = list(s.scalars(q.order_by(RefinementRow.parent_trial, RefinementRow.id)))
        first: dict[tuple[int, str], int] = {}
        for r in rows:
            first.setdefault((r.parent_trial, r.settings_hash), r.id)
        return sorted(rows, key=lambda r: (r.parent_trial, first[(r.parent_trial, r.settings_hash)], r.step))

    def get_refinement(self, refinement_id: int) -> RefinementRow | None:
        with self.session() as s:
            return s.get(RefinementRow, refinement_id)

    # ================================================================== jobs
    # Work other than trials that workers claim (refinement requests of the HTTP API); see
    # ``storage._schema.JobRow``. Added in schema version 3. Claims and re-queues happen under
    # the database-wide lock ``jobs``, so two workers never claim one job.

    def add_job(self, *, kind: str, study: str, trial: int, key: str, settings: dict[str, Any]) -> tuple[JobRow, bool]:
        """Queue a job, unless one with the same ``kind``, ``study`` and ``key`` is queued,
        running or done: then return that one. Returns ``(job, created)``."""
        with self.lock("jobs"), self.session() as s:
            existing = s.scalars(select(JobRow).where(JobRow.kind == kind, JobRow.study == study, JobRow.key == key,
                                                      JobRow.state.in_(("queued", "running", "done")))
                                 .order_by(JobRow.id)).first()
            if existing is not None:
                return existing, False
            row = JobRow(kind=kind, study=study, trial=trial, key=key,
                         settings_json=json.dumps(settings, sort_keys=True), state="queued", attempts=0,
                         progress_json="{}", result_json="{}")
            s.add(row)
            s.flush()
            return row, True

    def get_job(self, job_id: int) -> JobRow | None:
        with self.session() as s:
            return s.get(JobRow, job_id)

    def list_jobs(self, study: str | None = None, *, state: str | None = None) -> list[JobRow]:
        """Jobs (of ``study``, in ``state``), oldest first."""
        q = select(JobRow)
        if study is not None:
            q = q.where(JobRow.study == study)
        if state is not None:
            q = q.where(JobRow.state == state)
        with self.session() as s:
            return list(s.scalars(q.order_by(JobRow.id)))

    def claim_job(self, worker: str, studies: list[str] | None = None, *, heartbeat: float = 10.0,
                  max_attempts: int = 3, sweep: bool = True) -> JobRow | None:
        """The oldest queued job (of ``studies``; None: any), now ``running`` for ``worker``, which
        promises a heartbeat every ``heartbeat`` seconds (stored on the job).

        First (``sweep``), running jobs silent for 3x *their own worker's* heartbeat interval
        (their worker died) are queued again, or failed once they were claimed ``max_attempts``
        times. A worker that just met a database outage passes ``sweep=False``: then every
        worker missed beats, and their jobs are not dead."""
        now = _utcnow()
        with self.lock("jobs"), self.session() as s:
            for job in s.scalars(select(JobRow).where(JobRow.state == "running")) if sweep else ():
                beat = _aware(job.heartbeat_at or job.started_at)
                if beat is not None and (now - beat).total_seconds() <= 3 * (job.heartbeat_s or heartbeat):
                    continue
                if job.attempts >= max_attempts:
                    job.state, job.finished_at = "failed", now
                    job.error = f"its worker stopped answering {job.attempts} times (last: {job.worker})"
                else:
                    job.state, job.worker = "queued", None
            q = select(JobRow).where(JobRow.state == "queued")
            if studies is not None:
                if not studies:
                    return None
                q = q.where(JobRow.study.in_(studies))
            claimed = s.scalars(q.order_by(JobRow.id).limit(1)).first()
            if claimed is None:
                return None
            claimed.state, claimed.worker, claimed.attempts = "running", worker, claimed.attempts + 1
            claimed.started_at = claimed.heartbeat_at = now
            claimed.heartbeat_s = float(heartbeat)
            claimed.error = None
            return claimed

    def job_heartbeat(self, job_id: int, worker: str, progress: dict[str, Any] | None = None) -> bool:
        """Refresh a running job's heartbeat (and progress); False if it is no longer ``worker``'s."""
        values: dict[str, Any] = {"heartbeat_at": _utcnow()}
        if progress is not None:
            values["progress_json"] = json.dumps(progress)
        return self._update_own_job(job_id, worker, values)

    def finish_job(self, job_id: int, worker: str, state: str, *, result: dict[str, Any] | None = None,
                   error: str | None = None) -> bool:
        """End ``worker``'s running job: ``done`` (with ``result``), ``failed`` (with ``error``),
        or ``queued`` again (a worker stopping). False if the job was no longer its own."""
        if state not in ("done", "failed", "queued"):
            raise ValueError(f"state must be done, failed or queued, got {state!r}")
        values: dict[str, Any] = {"state": state, "error": error}
        if state == "queued":
            values.update(worker=None, attempts=JobRow.attempts - 1)  # an interruption is not a failed attempt
        else:
            values["finished_at"] = _utcnow()
        if result is not None:
            values["result_json"] = json.dumps(result)
        return self._update_own_job(job_id, worker, values)

    def _update_own_job(self, job_id: int, worker: str, values: dict[str, Any]) -> bool:
        """Set ``values`` on the job if it is still running for ``worker``; whether it was."""
        with self.session() as s:
            res = s.execute(update(JobRow).where(JobRow.id == job_id, JobRow.worker == worker,
                                                 JobRow.state == "running").values(**values))
            return bool(res.rowcount)  # type: ignore[attr-defined]
