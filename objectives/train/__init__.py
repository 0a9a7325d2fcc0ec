"""How well a network does: data sets, the training loop and its device plan, distillation,
zero-cost proxies and the weight-sharing supernet's training. The face of the training room;
``objectives`` re-exports it."""

from __future__ import annotations

from ._accel import (
    AMP_MODES,
    AUGMENTATIONS,
    DevicePlan,
    ThreadGovernor,
    augment_batch,
    device_plan,
    usable_cpus,
    worker_devices,
)
from ._data import (
    DATA_SOURCES,
    DataError,
    Dataset,
    check_source,
    describe_sources,
    load_dataset,
)
from ._distill import (
    Distillation,
    kd_loss,
    teacher_logits,
)
from ._proxies import (
    PROXIES,
    VOTE,
    VOTE_MEMBERS,
    ProxyBatch,
    ProxyError,
    check_proxy,
    proxy_batch,
    score_arch,
    score_model,
    vote_scores,
)
from ._supernet import (
    SupernetEpoch,
    SupernetResult,
    evaluate_subnet,
    recalibrate_bn,
    train_supernet,
)
from ._train import (
    TrainConfig,
    TrainingError,
    TrainResult,
    evaluate,
    frozen_except,
    num_threads,
    threads_per_worker,
    train_model,
    train_spec,
)

__all__ = [
    "AMP_MODES",
    "AUGMENTATIONS",
    "DATA_SOURCES",
    "PROXIES",
    "VOTE",
    "VOTE_MEMBERS",
    "DataError",
    "Dataset",
    "DevicePlan",
    "Distillation",
    "ProxyBatch",
    "ProxyError",
    "SupernetEpoch",
    "SupernetResult",
    "ThreadGovernor",
    "TrainConfig",
    "TrainResult",
    "TrainingError",
    "augment_batch",
    "check_proxy",
    "check_source",
    "describe_sources",
    "device_plan",
    "evaluate",
    "evaluate_subnet",
    "frozen_except",
    "kd_loss",
    "load_dataset",
    "num_threads",
    "proxy_batch",
    "recalibrate_bn",
    "score_arch",
    "score_model",
    "teacher_logits",
    "threads_per_worker",
    "train_model",
    "train_spec",
    "train_supernet",
    "usable_cpus",
    "vote_scores",
    "worker_devices",
]
