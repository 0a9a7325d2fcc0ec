"""Shared test data that is not a fixture (test modules never import each other)."""

from __future__ import annotations

from objectives.cost import OpClassParams, OpModel

#: A model with every number away from its fit's starting point: per class (P, overhead us,
#: half-saturation sizes m, n, k), bandwidth.
TRUE = OpModel(bandwidth_bytes_per_s=3e9, classes={
    "conv": OpClassParams(peak_per_s=4e10, overhead_us=20, half_out=12, half_positions=30, half_reduction=40),
    "conv1x1": OpClassParams(peak_per_s=3e10, overhead_us=12, half_out=24, half_positions=8, half_reduction=16),
    "dwconv": OpClassParams(peak_per_s=6e9, overhead_us=30, half_out=4, half_positions=64, half_reduction=2),
    "gconv": OpClassParams(peak_per_s=1e10, overhead_us=15, half_out=8, half_positions=16, half_reduction=8),
    "linear": OpClassParams(peak_per_s=8e9, overhead_us=9, half_out=32, half_positions=0, half_reduction=64),
    "lowrank": OpClassParams(peak_per_s=2e10, overhead_us=16, half_out=6, half_positions=20, half_reduction=10),
    "pool": OpClassParams(peak_per_s=5e9, overhead_us=7, half_out=2, half_positions=10, half_reduction=0),
    "add": OpClassParams(peak_per_s=4e9, overhead_us=5, half_out=3, half_positions=5, half_reduction=0),
})
