"""int8 deployment, its face: post-training and quantization-aware int8 networks (one PT2E graph
for the search's accuracy and the shipped artifact), the .tflite and int8 ONNX writers, and the
runtimes that run them (TensorFlow Lite Micro, LiteRT, ONNX Runtime). ``objectives`` re-exports
what ``nas`` calls; the rest is here."""

from __future__ import annotations

from ._int8 import (
    ArenaReport,
    DeployError,
    Int8Model,
    deploy_available,
    describe_tflite,
    fold_batchnorm,
    input_recipe,
    int8_accuracy,
    io_quantization,
    load_int8,
    quantize_input,
    quantize_ptq,
    quantize_qat,
    require_deploy,
    run_litert,
    run_onnx,
    run_tflm,
    save_int8,
    simulated_logits,
    tflm_arena,
    to_onnx_int8,
    to_tflite,
)

__all__ = ["ArenaReport", "DeployError", "Int8Model", "deploy_available", "describe_tflite", "fold_batchnorm",
           "input_recipe", "int8_accuracy", "io_quantization", "load_int8", "quantize_input", "quantize_ptq",
           "quantize_qat", "require_deploy", "run_litert", "run_onnx", "run_tflm", "save_int8", "simulated_logits",
           "tflm_arena", "to_onnx_int8", "to_tflite"]
