"""The Ray Tune backend (``nas study run NAME --backend ray``): the study as Tune's searcher, the
trial objective as its trainable, the driver that runs the experiment; and a supernet trained as
one Ray task (``nas supernet train NAME ... --backend ray``). Ray is imported only when
a run starts."""

from __future__ import annotations

from ._experiment import (
    BACKENDS,
    RAY_SEED_OFFSET,
    RayInterrupted,
    RayOptions,
    absolute_url,
    check_backend_options,
    experiment_dir,
    run_ray,
)
from ._supernet import run_supernet_ray
from ._trainable import ray_trial

__all__ = ["BACKENDS", "RAY_SEED_OFFSET", "RayInterrupted", "RayOptions", "absolute_url", "check_backend_options",
           "experiment_dir", "ray_trial", "run_ray", "run_supernet_ray"]
