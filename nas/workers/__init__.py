"""Running studies: the worker loop (``nas worker``, ``nas study run``), local worker processes,
queued refinement and supernet-training jobs, liveness (heartbeats, database outages) and the Ray Tune backend
(:mod:`nas.workers.ray`)."""

from __future__ import annotations

from ._jobs import candidate_info, iso_utc, job_info, queue_refinement, run_job
from ._liveness import Heartbeat, Outages, wait_for_database
from ._local import Progress, check_run, check_run_args, progress, run_study, work
from ._supernet import (
    active_supernet_job,
    check_lease,
    lease_holder,
    queue_supernet,
    queued_supernet_doc,
    supernet_job,
    supernet_rows,
    supernet_scope,
    supernet_state_line,
    training_lease,
)
from ._worker import StudyWorker, finished, run_worker

__all__ = ["Heartbeat", "Outages", "Progress", "StudyWorker", "active_supernet_job", "candidate_info", "check_lease",
           "check_run", "check_run_args", "finished", "iso_utc", "job_info", "lease_holder",
           "progress", "queue_refinement", "queue_supernet", "queued_supernet_doc", "run_job", "run_study",
           "run_worker", "supernet_job", "supernet_rows", "supernet_scope", "supernet_state_line", "training_lease",
           "wait_for_database", "work"]
