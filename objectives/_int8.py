"""int8 networks as the device runs them: post-training quantization, the artifacts, their runtimes.

A trained network becomes a full-integer int8 network in one way, used by the search and the
export alike, so that the accuracy the search ranks is the accuracy of what ships:

1. The network is wrapped to take images channels-last (``N, H, W, C``: what a camera or a
   microcontroller's frame buffer holds) and exported with ``torch.export``.
2. PT2E static quantization with LiteRT-Torch's quantizer (``litert_torch.quantize``): int8
   weights, symmetric per output channel; int8 activations, asymmetric per tensor, calibrated
   with a histogram observer on ``N`` training images; BatchNorm folded into the convolution
   before, ReLU fused after; biases in int32. The converted graph computes in PyTorch what the
   device computes (quantize/dequantize around each integer op): :func:`simulated_logits` is
   the **simulated** int8 network the search scores.
3. The same quantized graph lowered by LiteRT-Torch to a ``.tflite`` flatbuffer whose input and
   output tensors are int8 (no float tensor left in the graph): :func:`to_tflite`. The input is
   the study's *normalised* image quantized with the input tensor's ``(scale, zero_point)``;
   the normalisation is folded into them: a device maps a raw pixel ``p`` (in [0, 1]) of channel
   ``c`` to ``q = round(p * a_c + b_c)``, clamped to [-128, 127], with ``a_c = 1 / (std_c *
   scale)`` and ``b_c = zero_point - mean_c / (std_c * scale)`` (:func:`input_recipe`; one
   multiply-add per pixel, the pre-processing every TFLM example does).
4. An ONNX QDQ model by ONNX Runtime's static quantization (``quantize_static``, QDQ format,
   int8 per-channel weights, int8 activations, the same calibration images): :func:`to_onnx_int8`.

Runtimes (:func:`run_litert`, :func:`run_tflm`, :func:`run_onnx`) and the TFLM arena a model
needs (:func:`tflm_arena`: the smallest arena ``tflite_micro``'s interpreter allocates in,
found by bisection; its recording allocator's breakdown beside it). The converter and the
runtimes are the optional extra ``lightnas[deploy]``; :func:`require_deploy` says so in one line.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import re
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from search_spaces import InputError

__all__ = ["ArenaReport", "DeployError", "Int8Model", "deploy_available", "describe_tflite", "fold_batchnorm",
           "input_recipe", "int8_accuracy", "io_quantization", "load_int8", "quantize_input", "quantize_ptq",
           "quantize_qat", "require_deploy", "run_litert", "run_onnx", "run_tflm", "save_int8", "simulated_logits",
           "tflm_arena", "to_onnx_int8", "to_tflite"]

#: The modules ``lightnas[deploy]`` brings (import name -> what it is for).
DEPLOY_MODULES = {
    "litert_torch": "the PyTorch -> TFLite converter (LiteRT-Torch) and its PT2E quantizer",
    "torchao": "PT2E quantization (prepare/convert)",
    "ai_edge_litert": "the LiteRT interpreter",
    "tflite_micro": "the TensorFlow Lite Micro interpreter",
}
EXTRA_HINT = "pip install 'lightnas[deploy]'"
# TensorFlow-family C++ logging of the converter and interpreters: errors only.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("GLOG_minloglevel", "2")


class DeployError(InputError):
    """An int8 artifact cannot be made or run: the extra is missing, or the request is bad."""


def _missing() -> list[str]:
    out = []
    for m in DEPLOY_MODULES:
        try:
            found = importlib.util.find_spec(m) is not None
        except (ImportError, ValueError):  # a broken install, or an import hook refusing it
            found = False
        if not found:
            out.append(m)
    return out


def deploy_available() -> bool:
    """Whether every module of the ``deploy`` extra can be imported (without importing them)."""
    return not _missing()


def require_deploy(what: str) -> None:
    """Raise :class:`DeployError` (one line naming the extra) when the ``deploy`` extra is missing."""
    missing = _missing()
    if missing:
        raise DeployError(f"{what} needs the deploy extra (missing: {', '.join(missing)}); install it with "
                          f"{EXTRA_HINT}")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence what the converter and the interpreters print (C and Python, stdout and stderr)."""
    sys_out, sys_err = os.dup(1), os.dup(2)
    with open(os.devnull, "w") as null:
        try:
            os.dup2(null.fileno(), 1)
            os.dup2(null.fileno(), 2)
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
                    warnings.catch_warnings():
                warnings.simplefilter("ignore")
                yield
        finally:
            os.dup2(sys_out, 1)
            os.dup2(sys_err, 2)
            os.close(sys_out)
            os.close(sys_err)


class _ChannelsLast(nn.Module):
    """``model`` taking ``N, H, W, C`` images (the device's layout)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.permute(0, 3, 1, 2))


def _nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1).contiguous()


@dataclass
class Int8Model:
    """A network after PT2E post-training quantization: ``graph`` computes the int8 network in
    PyTorch (simulated: quantize/dequantize around every integer op) on ``N, H, W, C`` input."""

    graph: Any
    quantizer: Any
    input_shape: tuple[int, int, int]
    calibration: int
    extra: dict[str, Any] = field(default_factory=dict)


def quantize_ptq(model: nn.Module, calibration: torch.Tensor, *, batch_size: int = 64) -> Int8Model:
    """Post-training static int8 quantization (PT2E, LiteRT-Torch's quantizer; see the module doc).

    Args:
        model: the trained float network (``N, C, H, W`` input), left unchanged.
        calibration: normalised training images, ``N, C, H, W``.

    Raises:
        DeployError: the deploy extra is missing, or there are no calibration images.
    """
    require_deploy("int8 quantization")
    if calibration.ndim != 4 or len(calibration) == 0:
        raise DeployError("calibration: need at least one image (N, C, H, W)")
    import copy

    with _quiet():  # its import prints deprecation warnings
        from torchao.quantization.pt2e import quantize_pt2e

    float_model = copy.deepcopy(model).cpu().eval()
    wrapped = _ChannelsLast(float_model).eval()
    calib = _nhwc(calibration.detach().float().cpu())
    sample = calib[: min(2, len(calib))]
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    with _quiet(), torch.no_grad():
        quantizer = _quantizer()
        graph = torch.export.export(wrapped, (sample,), dynamic_shapes=({0: batch},)).module()
        graph = quantize_pt2e.prepare_pt2e(graph, quantizer)
        for i in range(0, len(calib), batch_size):
            graph(calib[i:i + batch_size])
        graph = quantize_pt2e.convert_pt2e(graph, fold_quantize=False)
    return Int8Model(graph, quantizer, tuple(int(v) for v in calibration.shape[1:]), len(calibration))  # type: ignore[arg-type]


def _quantizer() -> Any:
    """LiteRT-Torch's PT2E quantizer (int8, per-channel weights), annotating every residual addition.

    Its ``add`` annotator takes one output node per source partition, and ``torch.fx`` merges the
    chained additions of consecutive residual blocks written by one line of code (MobileNetV2's
    ``x + y``) into one partition: all but the first stayed float, and the converter put
    DEQUANTIZE / float ADD / QUANTIZE into the graph. The rest are annotated here the same way."""
    from litert_torch.quantize import pt2e_quantizer as pq
    from litert_torch.quantize import pt2e_quantizer_utils as pu
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation

    class Quantizer(pq.PT2EQuantizer):  # type: ignore[misc]
        def annotate(self, model: Any) -> Any:
            model = self._annotate_for_static_quantization_config(model)
            config = self.global_config
            for node in model.graph.nodes:
                if node.op == "call_function" and node.target == torch.ops.aten.add.Tensor \
                        and "quantization_annotation" not in node.meta:
                    act = pu.get_input_act_qspec(config)
                    node.meta["quantization_annotation"] = QuantizationAnnotation(
                        input_qspec_map={a: act for a in node.args[:2] if isinstance(a, torch.fx.Node)},
                        output_qspec=pu.get_output_act_qspec(config), _annotated=True)
            pu.propagate_annotation(model)
            return model

    return Quantizer().set_global(pq.get_symmetric_quantization_config(is_per_channel=True))


def int8_accuracy(model: nn.Module, x_cal: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> tuple[float, Int8Model]:
    """Accuracy on ``(x, y)`` of the simulated int8 network of ``model`` calibrated on ``x_cal``
    (post-training quantization, as the artifact is made), and that network."""
    q = quantize_ptq(model, x_cal)
    pred = simulated_logits(q, x).argmax(1)
    return float((pred == y.cpu()).double().mean()) if len(y) else float("nan"), q


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (in eval mode) with every BatchNorm folded into the convolution before it (the
    last one of a LightConv2d pair): the same function, as the converter folds it; what QAT trains."""
    import copy

    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model = copy.deepcopy(model).cpu().eval()
    for mod in model.modules():
        bn = getattr(mod, "bn", None)
        conv = getattr(mod, "conv", None)
        if not isinstance(bn, nn.BatchNorm2d) or conv is None:
            continue
        last = conv if isinstance(conv, nn.Conv2d) else (conv.expand if isinstance(conv.expand, nn.Conv2d)
                                                         else conv.reduce)
        fused = fuse_conv_bn_eval(last, bn)
        last.weight, last.bias = fused.weight, fused.bias
        mod.bn = nn.Identity()
    return model


class _QATNet(nn.Module):
    """A PT2E graph prepared for QAT as a module the training loop drives (``N, C, H, W`` in; ``train()``
    and ``eval()`` switch the exported graph's fake-quantization and observers)."""

    def __init__(self, graph: Any) -> None:
        super().__init__()
        self.graph = graph

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.graph(x.permute(0, 2, 3, 1))

    def train(self, mode: bool = True) -> _QATNet:
        from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train

        (move_exported_model_to_train if mode else move_exported_model_to_eval)(self.graph)
        self.training = mode
        return self


def quantize_qat(model: nn.Module, data: Any, config: Any) -> Int8Model:
    """Quantization-aware fine-tuning: the BatchNorm-folded network with int8 fake quantization of weights
    (per channel) and activations (PT2E ``prepare_qat_pt2e``, LiteRT-Torch's QAT quantizer) trained by the
    one training loop of lightnas (``config``: a ``TrainConfig``, its epochs and learning rate), then
    converted: the int8 network to score and to lower. BatchNorm is folded first because torchao's
    conv-bn QAT patterns do not trace with this torch (and a folded network is what the device runs)."""
    require_deploy("quantization-aware training")
    from .train._train import train_model

    with _quiet():
        from litert_torch.quantize import pt2e_quantizer as pq
        from torchao.quantization.pt2e import move_exported_model_to_eval, quantize_pt2e

        class Quantizer(type(_quantizer())):  # type: ignore[misc]
            STATIC_QAT_ONLY_OPS: list[str] = []  # no conv-bn patterns: BatchNorm is folded

        quantizer = Quantizer().set_global(pq.get_symmetric_quantization_config(is_per_channel=True, is_qat=True))
        folded = fold_batchnorm(model)
        sample = _nhwc(data.x_train[:2].float().cpu())
        batch = torch.export.Dim("batch", min=1, max=1 << 16)
        graph = torch.export.export(_ChannelsLast(folded), (sample,), dynamic_shapes=({0: batch},)).module()
        graph = quantize_pt2e.prepare_qat_pt2e(graph, quantizer)
    train_model(_QATNet(graph), data.to("cpu"), config, keep_state=False)
    with _quiet():
        move_exported_model_to_eval(graph)
        graph = quantize_pt2e.convert_pt2e(graph, fold_quantize=False)
    c, h, w = (int(v) for v in data.input_shape)
    return Int8Model(graph, _quantizer(), (c, h, w), 0, {"qat_epochs": config.epochs})


def save_int8(q: Int8Model) -> bytes:
    """A quantized network as bytes (``torch.export.save`` of its graph), for :func:`load_int8`."""
    c, h, w = q.input_shape
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    buf = io.BytesIO()
    with _quiet():
        torch.export.save(torch.export.export(q.graph, (torch.zeros(2, h, w, c),), dynamic_shapes=({0: batch},)),
                          buf)
    return buf.getvalue()


def load_int8(blob: bytes, input_shape: tuple[int, int, int]) -> Int8Model:
    """The quantized network :func:`save_int8` stored."""
    require_deploy("int8 networks")
    with _quiet():
        quantizer = _quantizer()  # imports torchao's PT2E, which registers the quantize/dequantize ops the graph calls
        graph = torch.export.load(io.BytesIO(blob)).module()
    return Int8Model(graph, quantizer, input_shape, 0)


def simulated_logits(q: Int8Model, x: torch.Tensor, *, batch_size: int = 256) -> torch.Tensor:
    """Logits of the simulated int8 network for normalised images ``x`` (``N, C, H, W``)."""
    outs = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            outs.append(q.graph(_nhwc(x[i:i + batch_size].float().cpu())))
    return torch.cat(outs) if outs else torch.empty(0)


def to_tflite(q: Int8Model) -> bytes:
    """The full-integer int8 ``.tflite`` flatbuffer of a quantized network (int8 input and output)."""
    require_deploy("TFLite export")
    c, h, w = q.input_shape
    sample = torch.zeros(1, h, w, c)
    with _quiet(), tempfile.TemporaryDirectory() as tmp:
        import litert_torch
        from litert_torch.quantize.quant_config import QuantConfig

        edge = litert_torch.convert(q.graph, (sample,), quant_config=QuantConfig(pt2e_quantizer=q.quantizer))
        path = os.path.join(tmp, "model.tflite")
        edge.export(path)
        with open(path, "rb") as f:
            data = f.read()
    return _finish(data)


def _finish(data: bytes) -> bytes:
    """Strip the strings a device never reads (tensor names, which the converter makes from PyTorch
    module paths of up to 400 bytes each: 1.1-5x the weights of a small network; the model's
    description and signatures) with LiteRT's own ``flatbuffer_utils.strip_strings``, and check that
    the graph is integer only (no float tensor: every op runs on int8 kernels)."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils as fb

    model = fb.read_model_from_bytearray(bytearray(data))
    floats = [t for g in model.subgraphs for t in g.tensors if t.type in (schema.TensorType.FLOAT32,
                                                                             schema.TensorType.FLOAT16)]
    if floats:
        raise DeployError(f"the converted graph keeps {len(floats)} float tensors; lightnas exports full-integer "
                          "models only (report this network's spec as a bug)")
    fb.strip_strings(model)
    return bytes(fb.convert_object_to_bytearray(model))


def io_quantization(tflite: bytes) -> dict[str, Any]:
    """The int8 input and output tensors' ``(scale, zero_point)`` and shapes of a ``.tflite`` model."""
    it = _litert_interpreter(tflite)
    i, o = it.get_input_details()[0], it.get_output_details()[0]
    return {"input": {"shape": [int(v) for v in i["shape"]], "dtype": np.dtype(i["dtype"]).name,
                      "scale": float(i["quantization"][0]), "zero_point": int(i["quantization"][1])},
            "output": {"shape": [int(v) for v in o["shape"]], "dtype": np.dtype(o["dtype"]).name,
                       "scale": float(o["quantization"][0]), "zero_point": int(o["quantization"][1])}}


def describe_tflite(tflite: bytes) -> dict[str, Any]:
    """The graph of a ``.tflite`` model as LiteRT's interpreter loads it: ``ops`` (name, input and output tensor
    indices, in execution order) and ``tensors`` (index, shape, dtype, quantized channels)."""
    require_deploy("reading a .tflite model")
    it = _litert_interpreter(tflite)
    tensors = [{"i": int(t["index"]), "shape": [int(v) for v in t["shape"]], "dtype": np.dtype(t["dtype"]).name,
                "nq": int(len(t.get("quantization_parameters", {}).get("scales", [])))}
               for t in it.get_tensor_details()]
    ops = [{"op": o["op_name"], "in": [int(v) for v in o["inputs"]], "out": [int(v) for v in o["outputs"]]}
           for o in it._get_ops_details()]
    return {"ops": ops, "tensors": tensors}


def input_recipe(scale: float, zero_point: int, mean: Sequence[float], std: Sequence[float]) -> dict[str, Any]:
    """How a device turns raw pixels (in [0, 1]) into the int8 input: ``q = round(p * a_c + b_c)``."""
    a = [1.0 / (s * scale) for s in std]
    b = [zero_point - m / (s * scale) for m, s in zip(mean, std, strict=True)]
    return {"formula": "q = clamp(round(p * a[c] + b[c]), -128, 127), p = raw pixel in [0, 1] of channel c",
            "a": a, "b": b, "scale": scale, "zero_point": zero_point, "mean": list(mean), "std": list(std)}


def quantize_input(x: torch.Tensor, scale: float, zero_point: int) -> np.ndarray:
    """Normalised images ``N, C, H, W`` -> the int8 ``N, H, W, C`` a device feeds."""
    q = torch.round(_nhwc(x.float().cpu()) / scale) + zero_point
    return q.clamp(-128, 127).to(torch.int8).numpy()


def _litert_interpreter(tflite: bytes) -> Any:
    with _quiet():
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        it = Interpreter(model_content=tflite, num_threads=1,
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        it.allocate_tensors()
    return it


def run_litert(tflite: bytes, x: torch.Tensor) -> np.ndarray:
    """int8 outputs of the LiteRT interpreter (builtin kernels, 1 thread) for normalised images ``x``."""
    require_deploy("the LiteRT interpreter")
    it = _litert_interpreter(tflite)
    i, o = it.get_input_details()[0], it.get_output_details()[0]
    xq = quantize_input(x, float(i["quantization"][0]), int(i["quantization"][1]))
    out = np.empty((len(xq), int(o["shape"][-1])), np.int8)
    for n in range(len(xq)):
        it.set_tensor(i["index"], xq[n:n + 1])
        it.invoke()
        out[n] = it.get_tensor(o["index"])[0]
    return out


def _tflm(tflite: bytes, arena: int) -> Any:
    with _quiet():
        from tflite_micro.python.tflite_micro import runtime

        try:
            return runtime.Interpreter.from_bytes(tflite, arena_size=int(arena))
        except Exception:  # the interpreter raises RuntimeError (or ValueError) when the arena is too small
            return None


@dataclass(frozen=True)
class ArenaReport:
    """The smallest TFLM arena that allocates, and its recording allocator's breakdown (bytes)."""

    arena: int
    head: int
    tail: int
    parts: dict[str, int]


_ALLOC = re.compile(r"\[RecordingMicroAllocator\] '([^']+)' used (\d+) bytes")
_TOTAL = re.compile(r"\[RecordingMicroAllocator\] Arena allocation (total|head|tail) (\d+) bytes")

#: The arena search, run in a child process: tflite-micro's interpreter can crash the process (a null
#: dereference in ``_runtime.so``, seen at some arena sizes just too small for a model) instead of failing
#: the allocation. The child reports every size before and after trying it, so a crash marks that size as
#: too small and the search goes on in a new child.
_ARENA_CHILD = r"""
import ctypes, os, sys
from tflite_micro.python.tflite_micro import runtime
path, lo, hi, step = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
data = open(path, "rb").read()
out = os.fdopen(os.dup(1), "w")
null = os.open(os.devnull, os.O_WRONLY)
os.dup2(null, 1)
os.dup2(null, 2)
def fits(n):
    out.write(f"try {n}\n"); out.flush()
    try:
        runtime.Interpreter.from_bytes(data, arena_size=n)
        ok = True
    except Exception:
        ok = False
    out.write(f"{'ok' if ok else 'fail'} {n}\n"); out.flush()
    return ok
while hi <= (1 << 31) and not fits(hi):
    lo, hi = hi, hi * 2
if hi > (1 << 31):
    out.write("none\n"); out.flush(); sys.exit(0)
while hi - lo > step:
    mid = (lo + hi) // 2
    if fits(mid):
        hi = mid
    else:
        lo = mid
it = runtime.Interpreter.from_bytes(data, arena_size=hi)
log = os.open(path + ".alloc", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
os.dup2(log, 1)
os.dup2(log, 2)
it.print_allocations()
ctypes.CDLL(None).fflush(None)
out.write(f"arena {hi}\n"); out.flush()
"""


def tflm_arena(tflite: bytes, *, granularity: int = 16) -> ArenaReport:
    """The smallest arena (to ``granularity`` bytes) in which TFLM's interpreter allocates the model, and the
    recording allocator's breakdown of it (the search runs in a child process, see ``_ARENA_CHILD``)."""
    import subprocess
    import sys

    require_deploy("the TFLM arena measurement")
    lo, hi = 0, max(4096, 4 * len(tflite))
    with tempfile.TemporaryDirectory(prefix="lightnas-tflm-") as tmp:
        path = os.path.join(tmp, "model.tflite")
        with open(path, "wb") as f:
            f.write(tflite)
        for _ in range(64):  # each round ends in an answer or a crash at one size, which narrows the search
            proc = subprocess.run([sys.executable, "-c", _ARENA_CHILD, path, str(lo), str(hi), str(granularity)],
                                  capture_output=True, text=True, timeout=600)
            tried = None
            for line in proc.stdout.splitlines():
                word, _, n = line.partition(" ")
                if word == "none":
                    raise DeployError("the model does not allocate in TFLM with an arena of 2 GiB")
                if word == "arena":
                    with open(path + ".alloc") as f:
                        text = f.read()
                    totals = {k: int(v) for k, v in _TOTAL.findall(text)}
                    parts = {k: int(v) for k, v in _ALLOC.findall(text)}
                    return ArenaReport(int(n), totals.get("head", 0), totals.get("tail", 0), parts)
                if word == "try":
                    tried = int(n)
                elif word == "ok":
                    hi, tried = int(n), None
                elif word == "fail":
                    lo, tried = int(n), None
            if tried is None:
                raise DeployError(f"the TFLM arena search ended without an answer (exit {proc.returncode}): "
                                  f"{(proc.stderr or '').strip()[-300:]}")
            if tried >= hi:  # crashed at the upper bound itself: look above it
                lo, hi = tried, tried * 2
            else:
                lo = tried  # crashed: that size does not hold the model
    raise DeployError("the TFLM arena search crashed too often")


def run_tflm(tflite: bytes, x: torch.Tensor, *, arena: int | None = None) -> np.ndarray:
    """int8 outputs of the TFLM interpreter (the ``tflite_micro`` package's kernels) for images ``x``."""
    require_deploy("the TFLM interpreter")
    size = arena if arena is not None else tflm_arena(tflite).arena
    it = _tflm(tflite, size)
    if it is None:
        raise DeployError(f"the model does not allocate in a TFLM arena of {size} bytes")
    i = it.get_input_details(0)
    scale, zp = float(i["quantization_parameters"]["scales"][0]), int(i["quantization_parameters"]["zero_points"][0])
    xq = quantize_input(x, scale, zp)
    outs = []
    for n in range(len(xq)):
        it.set_input(xq[n:n + 1], 0)
        it.invoke()
        outs.append(np.array(it.get_output(0)).reshape(-1))
    return np.stack(outs).astype(np.int8) if outs else np.empty((0, 0), np.int8)


def to_onnx_int8(model: nn.Module, calibration: torch.Tensor, path: str | os.PathLike[str]) -> None:
    """ONNX QDQ int8 model by ONNX Runtime's static quantization (see the module doc); NCHW float
    input and output, as ONNX Runtime's QDQ models are."""
    import copy

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from ._onnx import write_onnx

    model = copy.deepcopy(model).cpu().eval()
    calib = calibration.detach().float().cpu().numpy()

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.i = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self.i >= len(calib):
                return None
            self.i += 1
            return {"input": calib[self.i - 1:self.i]}

    with tempfile.TemporaryDirectory() as tmp:
        fp32 = os.path.join(tmp, "fp32.onnx")
        write_onnx(model, tuple(calibration.shape[1:]), fp32)
        with _quiet():
            quantize_static(fp32, str(path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)


def run_onnx(path: str | os.PathLike[str], x: torch.Tensor, *, batch_size: int = 256) -> np.ndarray:
    """Logits of an ONNX model in ONNX Runtime (CPU, 1 thread) for normalised images ``x``."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    xs = x.float().cpu().numpy()
    outs = [session.run(None, {"input": xs[i:i + batch_size]})[0] for i in range(0, len(xs), batch_size)]
    return np.concatenate(outs) if outs else np.empty((0, 0), np.float32)
