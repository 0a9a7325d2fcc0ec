"""The demo study: digits (bundled), SQLite, a budget that leaves a real trade-off."""

from __future__ import annotations

from ._spec import StudySpec, make_spec

DEMO_BUDGET = "params<=20k flops<=1.5M"


def demo_spec(name: str = "demo", trials: int | None = None) -> StudySpec:
    return make_spec(name=name, space="plain", data="digits", budget=DEMO_BUDGET, objectives=["accuracy", "hw_cost"],
                     sampler="tpe", seed=0, trials=trials or 60,
                     space_options={"max_depth": 2, "widths": (8, 16, 24, 32), "hidden": (0, 32, 64)},
                     fidelity={"epochs": 20, "batch_size": 64, "lr": 0.1})
