"""Published device measurements as operator lists: the data the shipped profiles are fitted to.

Each function turns a published network into the :class:`objectives.cost._opmodel.Layer` list the
operator-level model costs, following the code that built the measured network (cited per
function). The measurements themselves are in ``bench/data/published/`` (see its README for
where every file comes from, and the licences).

* NAS-Bench-201 on a Raspberry Pi 4 (HW-NAS-Bench, via HELP): 15,625 whole networks, each timed
  end to end.
* FBNet space on a Raspberry Pi 4 (HW-NAS-Bench, via HELP): 5,000 networks whose "latency" is a
  SUM of per-block lookup-table entries (each block timed alone), not an end-to-end timing.
* HW-NAS-Bench's Jetson TX2 ("edgegpu", TensorRT via torch2trt) values: the 15 printed in its
  example notebook, latency and whole-board energy.
* MLPerf Tiny closed results on Cortex-M7 boards: the four reference networks, whose exact
  architectures are in the MLPerf Tiny repository.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from objectives.cost import Layer, add_layer, analytic_layers, conv_layer, layers_from_ops, linear_layer, pool_layer
from search_spaces import ArchSpec, Block, Head, Stage, Stem

DATA = Path(__file__).resolve().parent / "data" / "published"

# ------------------------------------------------------------------------------------ NAS-Bench-201
NB201_OPS = ["none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3"]


def eltwise_layer(c: int, h: int, w: int) -> Layer:
    """An element-wise operator on ``c x h x w`` elements (a ReLU that cannot be fused into the
    convolution before it, a multiplication by zero): class ``pool`` (pooling and element-wise)."""
    return Layer("pool", c, c, h, w, h, w, 1, 1, 1, 0, 0, c * h * w, c * h * w)


#: Edges of a NAS-Bench-201 cell in the order of its architecture string: (source node, target node).
NB201_EDGES = ((0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3))


def nb201_live_edges(ops: list[str]) -> list[tuple[int, int, str]]:
    """The edges a deployed NAS-Bench-201 cell computes. In PyTorch every edge runs (``none`` is
    ``x.mul(0.)``, ``cells.py`` / ``cell_operations.py``), but HW-NAS-Bench's Raspberry Pi timings
    show that the deployed graph did not: networks with the same operations in a different order
    differ up to 4x. What fits them (chosen among three variants by how well each fits a training
    split; see BENCHMARKS.md): a multiplication by zero is folded to a constant, so a ``none`` edge
    computes nothing and an addition of it disappears, and a node whose result reaches the cell
    output only through ``none`` edges is dead code and not computed; operations *on* a zero node
    are still computed. (Graph optimisers such as TensorFlow's Grappler simplify ``x * 0`` and
    remove dead nodes; HW-NAS-Bench does not say which runtime timed the Raspberry Pi.)"""
    edges = [(s, d, op) for (s, d), op in zip(NB201_EDGES, ops, strict=True)]
    alive = {3}
    for n in (2, 1):
        if any(s == n and d in alive and op != "none" for s, d, op in edges):
            alive.add(n)
    return [(s, d, op) for s, d, op in edges if op != "none" and d in alive]


def nb201_layers(code: str, *, hw: int = 32, num_classes: int = 10, channels: int = 16, cells: int = 5) -> list[Layer]:
    """NAS-Bench-201's TinyNetwork (Dong & Yang, ICLR 2020; HW-NAS-Bench's copy of xautodl,
    ``models/cell_infers/tiny_network.py``, ``cells.py``, ``cell_operations.py``): stem conv3x3 +
    BN; three stages of ``cells`` cells of width C, 2C, 4C, with a ResNet basic block of stride 2
    between them (ReLU-conv3x3/2-BN, ReLU-conv3x3-BN; shortcut avgpool2x2 + conv1x1); BN + ReLU;
    global average pooling; linear classifier.

    ``code``: six digits over :data:`NB201_OPS` for the edges of :data:`NB201_EDGES`; the cell
    computes :func:`nb201_live_edges`. ``nor_conv_kxk`` is ReLU -> conv -> BN (the ReLU acts on the
    conv's *input*, so a runtime cannot fuse it: one element-wise operator + one convolution);
    ``avg_pool_3x3`` one pooling operator; ``skip_connect`` nothing. A node sums its computed
    inputs: (inputs - 1) additions.
    """
    live = nb201_live_edges([NB201_OPS[int(d)] for d in code])
    layers = [conv_layer(3, channels, hw, hw, 3)]
    c, h = channels, hw
    for stage in range(3):
        if stage:
            cin, c = c, 2 * c
            h2 = (h - 1) // 2 + 1
            layers += [eltwise_layer(cin, h, h), conv_layer(cin, c, h, h, 3, 2), eltwise_layer(c, h2, h2),
                       conv_layer(c, c, h2, h2, 3), pool_layer(cin, h, h, h2, h2, kernel=2, stride=2),
                       conv_layer(cin, c, h2, h2, 1), add_layer(c, h2, h2)]
            h = h2
        for _ in range(cells):
            for _s, _d, op in live:
                if op in ("nor_conv_1x1", "nor_conv_3x3"):
                    layers += [eltwise_layer(c, h, h), conv_layer(c, c, h, h, 1 if op == "nor_conv_1x1" else 3)]
                elif op == "avg_pool_3x3":
                    layers.append(pool_layer(c, h, h, h, h, kernel=3))
            for node in (1, 2, 3):
                inputs = sum(1 for _s, d, _op in live if d == node)
                layers += [add_layer(c, h, h)] * max(0, inputs - 1)
    layers += [eltwise_layer(c, h, h), pool_layer(c, h, h), linear_layer(c, num_classes)]
    return layers


@dataclass(frozen=True)
class Measured:
    """One published measurement: the network's layers, its latency and, where published, energy."""

    key: str
    group: str
    layers: list[Layer]
    latency_ms: float
    energy_uj: float | None = None
    macs: int = 0


def _measured(key: str, group: str, layers: list[Layer], ms: float, uj: float | None = None) -> Measured:
    return Measured(key, group, layers, ms, uj, sum(la.macs for la in layers))


def nb201_raspi4() -> list[Measured]:
    with open(DATA / "nb201_cifar10_raspi4.csv") as f:
        return [_measured(f"nb201-{r['arch_index']}", "nb201", nb201_layers(r["arch_code"]), float(r["raspi4_ms"]))
                for r in csv.DictReader(f)]


# ------------------------------------------------------------------------------------ FBNet space
FBNET_OPS = ["k3_e1", "k3_e1_g2", "k3_e3", "k3_e6", "k5_e1", "k5_e1_g2", "k5_e3", "k5_e6", "skip"]
_FBNET_OP = [(1, 3, 1), (1, 3, 2), (3, 3, 1), (6, 3, 1), (1, 5, 1), (1, 5, 2), (3, 5, 1), (6, 5, 1), None]
FBNET_STAGES = [1, 4, 4, 4, 4, 4, 1]
FBNET_WIDTHS = [16, 24, 32, 64, 112, 184, 352]
FBNET_CIFAR = {"strides": [1, 1, 2, 2, 1, 2, 1], "head": 1504, "stem_stride": 1, "hw": 32, "classes": 100}
FBNET_IMAGENET = {"strides": [1, 2, 2, 2, 1, 2, 1], "head": 1984, "stem_stride": 2, "hw": 224, "classes": 1000}


def fbnet_positions(cfg: dict | None = None) -> list[tuple[int, int, int, int]]:
    """``(h_in, c_in, c_out, stride)`` of the 22 searchable positions (HW-NAS-Bench
    ``hw_nas_bench_api.py``, ``fbnet_get_metrics``)."""
    cfg = cfg or FBNET_CIFAR
    out = []
    h = cfg["hw"] // cfg["stem_stride"]
    for s, n in enumerate(FBNET_STAGES):
        for i in range(n):
            cin = (16 if s == 0 else FBNET_WIDTHS[s - 1]) if i == 0 else FBNET_WIDTHS[s]
            stride = cfg["strides"][s] if i == 0 else 1
            out.append((h, cin, FBNET_WIDTHS[s], stride))
            if i == 0:
                h //= stride
    return out


def fbnet_block_layers(op: int, h: int, cin: int, cout: int, stride: int) -> list[Layer]:
    """One FBNet block as HW-NAS-Bench defines it (``fbnet_models/model_infer.py``): ``ConvBlock`` =
    1x1 conv (groups g) + BN + ReLU, channel shuffle when g > 1, k x k depthwise (stride) + BN +
    ReLU, 1x1 conv (groups g) + BN, residual add when C_in == C_out and stride 1 (the 1x1 expansion
    conv is there even at expansion 1); ``Skip`` = identity, or 1x1 conv (stride) + BN + ReLU when
    the shape changes. Grouped 1x1 convolutions are class ``gconv``; the shuffle is an element-wise
    operator."""
    if FBNET_OPS[op] == "skip":
        return [] if stride == 1 and cin == cout else [conv_layer(cin, cout, h, h, 1, stride)]
    e, k, g = _FBNET_OP[op]  # type: ignore[misc]
    mid = cin * e
    ho = h // stride
    layers = [conv_layer(cin, mid, h, h, 1, 1, g)]
    if g > 1:
        layers.append(eltwise_layer(mid, h, h))
    layers.append(conv_layer(mid, mid, h, h, k, stride, mid, oh=ho, ow=ho))
    layers.append(conv_layer(mid, cout, ho, ho, 1, 1, g))
    if stride == 1 and cin == cout:
        layers.append(add_layer(cout, ho, ho))
    return layers


def fbnet_layers(op_idx: str | list[int], cfg: dict | None = None) -> list[Layer]:
    """The whole FBNet network: stem conv3x3 (16) + BN + ReLU, the 22 blocks, 1x1 conv to the head
    width + BN + ReLU, average pooling, linear classifier."""
    cfg = cfg or FBNET_CIFAR
    h = cfg["hw"]
    layers = [conv_layer(3, 16, h, h, 3, cfg["stem_stride"], oh=h // cfg["stem_stride"], ow=h // cfg["stem_stride"])]
    pos = fbnet_positions(cfg)
    for d, (hi, cin, cout, s) in zip(op_idx, pos, strict=True):
        layers += fbnet_block_layers(int(d), hi, cin, cout, s)
    h = pos[-1][0] // pos[-1][3]
    layers += [conv_layer(FBNET_WIDTHS[-1], cfg["head"], h, h, 1), pool_layer(cfg["head"], h, h),
               linear_layer(cfg["head"], cfg["classes"])]
    return layers


def fbnet_raspi4() -> list[Measured]:
    with open(DATA / "fbnet_cifar100_raspi4.csv") as f:
        return [_measured(f"fbnet-{r['arch_id']}", "fbnet", fbnet_layers(r["op_idx"]), float(r["raspi4_ms"]))
                for r in csv.DictReader(f)]


def fbnet_archspec(op_idx: str) -> ArchSpec:
    """The FBNet network as a user would write it as an ``ArchSpec`` (the issue's check): inverted
    blocks of groups 1. An ``ArchSpec`` has no grouped convolution, so a ``_g2`` block becomes its
    dense twin (twice the 1x1 MACs, no shuffle); an ``inverted`` block at expansion 1 has no 1x1
    expansion convolution (FBNet's has one); the head's 1x1 conv to 1504 channels is a ``conv``
    block."""
    blocks = []
    for d, (_, cin, cout, s) in zip(op_idx, fbnet_positions(), strict=True):
        op = int(d)
        if FBNET_OPS[op] == "skip":
            if s == 1 and cin == cout:
                continue
            blocks.append(Block("conv", cout, None, None, 1, s))
            continue
        e, k, _g = _FBNET_OP[op]  # type: ignore[misc]
        blocks.append(Block("inverted", cout, cin * e, None, k, s))
    blocks.append(Block("conv", FBNET_CIFAR["head"], None, None, 1, 1))
    return ArchSpec(Stem(16, 3, 1), (Stage(tuple(blocks)),), Head(), "relu", "fbnet")


# ------------------------------------------------------------------------------------ Jetson TX2
def tx2_examples() -> list[Measured]:
    """HW-NAS-Bench's 15 printed Jetson TX2 (``edgegpu``) values: NAS-Bench-201 indices 0-2 on
    CIFAR-10 (32x32, 10 classes), CIFAR-100 (100 classes) and ImageNet16-120 (16x16, 120 classes);
    FBNet ``[0]*22``, ``[0]*21+[1]``, ``[0]*20+[1,1]`` on CIFAR-100 and ImageNet (224x224). Energy in
    the notebook is mJ (``EdgeGPU_Benchmark.py``: whole-board VDD_IN power x time)."""
    codes = {}
    with open(DATA / "nb201_cifar10_raspi4.csv") as f:
        for r in csv.DictReader(f):
            if int(r["arch_index"]) < 3:
                codes[r["arch_index"]] = r["arch_code"]
    shapes = {"cifar10": (32, 10), "cifar100": (32, 100), "ImageNet16-120": (16, 120)}
    out = []
    with open(DATA / "hwnasbench_published_examples.csv") as f:
        for r in csv.DictReader(f):
            if not r["edgegpu_latency"]:
                continue
            if r["space"] == "nasbench201":
                hw, nc = shapes[r["dataset"]]
                layers = nb201_layers(codes[r["arch"]], hw=hw, num_classes=nc)
            else:
                arch = "".join(str(int(v)) for v in r["arch"].strip("[]").split(","))
                layers = fbnet_layers(arch, FBNET_CIFAR if r["dataset"] == "cifar100" else FBNET_IMAGENET)
            out.append(_measured(f"{r['space']}-{r['dataset']}-{r['arch']}", r["space"], layers,
                                 float(r["edgegpu_latency"]), float(r["edgegpu_energy"]) * 1e3))
    return out


# ------------------------------------------------------------------------------------ MLPerf Tiny
def resnet8_spec() -> ArchSpec:
    """MLPerf Tiny image classification reference (``resnet_v1_eembc``, keras_model.py): stem conv3x3
    16, three residual stacks of 16/32/64 filters with strides 1/2/2 (projection 1x1 shortcuts on
    the strided ones), average pooling, FC 10 -- exactly an ``ArchSpec`` of ``basic`` blocks."""
    return ArchSpec(Stem(16, 3, 1), (Stage((Block("basic", 16, 16, None, 3, 1),)),
                                     Stage((Block("basic", 32, 32, None, 3, 2),)),
                                     Stage((Block("basic", 64, 64, None, 3, 2),))), Head(), "relu", "resnet8")


def mlperf_layers(benchmark: str) -> list[Layer]:
    """Layers of the MLPerf Tiny reference networks (``mlcommons/tiny`` benchmark/training)."""
    if benchmark == "ic":
        return layers_from_ops(analytic_layers(resnet8_spec(), (3, 32, 32), 10))
    if benchmark == "kws":  # DS-CNN: conv 10x4/2 to 64 on 49x10x1, 4x (dw3x3 + pw 64), avgpool, FC 12
        layers = [conv_layer(1, 64, 49, 10, 4, 2, oh=25, ow=5)]
        for _ in range(4):
            layers += [conv_layer(64, 64, 25, 5, 3, 1, 64), conv_layer(64, 64, 25, 5, 1)]
        return layers + [pool_layer(64, 25, 5), linear_layer(64, 12)]
    if benchmark == "vww":  # MobileNetV1 alpha 0.25 on 96x96x3 (vww_model.py)
        plan = [(16, 1), (32, 2), (32, 1), (64, 2), (64, 1), (128, 2)] + [(128, 1)] * 5 + [(256, 2), (256, 1)]
        layers = [conv_layer(3, 8, 96, 96, 3, 2, oh=48, ow=48)]
        c, h = 8, 48
        for cout, s in plan:
            ho = (h + s - 1) // s
            layers += [conv_layer(c, c, h, h, 3, s, c, oh=ho, ow=ho), conv_layer(c, cout, ho, ho, 1)]
            c, h = cout, ho
        return layers + [pool_layer(c, h, h), linear_layer(c, 2)]
    if benchmark == "ad":  # FC autoencoder 640-128-128-128-128-8-128-128-128-128-640
        widths = [640, 128, 128, 128, 128, 8, 128, 128, 128, 128, 640]
        return [linear_layer(a, b) for a, b in zip(widths, widths[1:], strict=False)]
    raise ValueError(f"unknown MLPerf Tiny benchmark {benchmark!r}")


def mlperf_results(source: str, submitter: str, system: str) -> list[Measured]:
    """MLPerf Tiny closed results of one submission (``source`` like ``MLPerf Tiny v1.0``, the
    submitter, the system name): performance-mode latency, and energy from the energy-mode row
    of the same submission where there is one (MLPerf Tiny measures the two in separate runs)."""
    rows = []
    with open(DATA / "cortex_m7_published.csv") as f:
        for r in csv.DictReader(f):
            if r["source"].startswith(source) and r["submitter"] == submitter and r["system"] == system:
                rows.append(r)
    out = []
    for r in rows:
        if r["mode"] != "performance":
            continue
        energy = next((float(e["energy_uj"]) for e in rows if e["mode"] == "energy" and e["benchmark"] == r["benchmark"]
                       and e["source"] == r["source"] and e["system"] == r["system"] and e["energy_uj"]), None)
        out.append(_measured(f"{r['source']}:{r['system']}:{r['benchmark']}", r["benchmark"],
                             mlperf_layers(r["benchmark"]), float(r["latency_ms"]), energy))
    return out
