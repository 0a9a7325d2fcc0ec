"""What a network costs and how well it does: hardware-cost model, device profiles, budgets."""

from __future__ import annotations

from ._budget import (
    ALIASES,
    Budget,
    BudgetError,
    Condition,
    format_amount,
    parse_budget,
    parse_conditions,
    resolve_resource,
)
from ._cost import RESOURCES, CostReport, LayerCost, estimate_cost, trace_layers
from ._data import DATA_SOURCES, DataError, Dataset, check_source, describe_sources, load_dataset
from ._devices import DeviceError, DeviceProfile, get_device, list_devices, nas_home, save_device
from ._latency import CalibrationResult, calibrate_host, measure_latency, resolve_device
from ._train import (
    TrainConfig,
    TrainingError,
    TrainResult,
    evaluate,
    num_threads,
    threads_per_worker,
    train_model,
    train_spec,
)

__all__ = [
    "ALIASES",
    "RESOURCES",
    "Budget",
    "BudgetError",
    "CalibrationResult",
    "Condition",
    "CostReport",
    "DeviceError",
    "DeviceProfile",
    "LayerCost",
    "calibrate_host",
    "estimate_cost",
    "format_amount",
    "get_device",
    "list_devices",
    "measure_latency",
    "nas_home",
    "parse_budget",
    "parse_conditions",
    "resolve_device",
    "resolve_resource",
    "save_device",
    "trace_layers",
    "DATA_SOURCES",
    "DataError",
    "Dataset",
    "check_source",
    "describe_sources",
    "load_dataset",
    "TrainConfig",
    "TrainResult",
    "TrainingError",
    "evaluate",
    "num_threads",
    "threads_per_worker",
    "train_model",
    "train_spec",
]
