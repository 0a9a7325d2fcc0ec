"""Running studies: the worker loop (``nas worker``, ``nas study run``), local worker processes,
queued refinement jobs, liveness (heartbeats, database outages) and the Ray Tune backend
(:mod:`nas.workers.ray`)."""

from __future__ import annotations

from ._jobs import candidate_info, iso_utc, job_info, queue_refinement, run_job
from ._liveness import Heartbeat, database_down, outage_within, trial_fail_reason, wait_for_database
from ._local import MAX_TARGET, Progress, check_run, check_run_args, progress, run_study, work
from ._worker import REJECTION_STREAK, StudyWorker, WorkerStats, fail_and_requeue, finished, run_worker, slots_left

__all__ = ["MAX_TARGET", "REJECTION_STREAK", "Heartbeat", "Progress", "StudyWorker", "WorkerStats", "candidate_info",
           "check_run", "check_run_args", "database_down", "fail_and_requeue", "finished", "iso_utc", "job_info",
           "outage_within", "progress", "queue_refinement", "run_job", "run_study", "run_worker", "slots_left",
           "trial_fail_reason", "wait_for_database", "work"]
