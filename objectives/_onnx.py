"""The one ONNX exporter of lightnas (export, probes for a device, the int8 QDQ model)."""

from __future__ import annotations

import os
import warnings

import torch

__all__ = ["write_onnx"]


def write_onnx(model: torch.nn.Module, input_shape: tuple[int, ...], path: str | os.PathLike[str], *,
               dynamic_batch: bool = True) -> torch.Tensor:
    """Write ``model`` (put in eval mode, on the CPU) as ONNX opset 17 with input ``input`` and output
    ``logits``; the batch dimension dynamic unless ``dynamic_batch`` is false (fixed shapes, batch 1,
    what a device's timing tool wants). Returns the example input it was traced with."""
    model = model.eval().cpu()
    x = torch.randn(4 if dynamic_batch else 1, *input_shape)
    axes = {"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["input"], output_names=["logits"],
                          dynamic_axes=axes, opset_version=17)
    return x
