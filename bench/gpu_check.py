"""Training throughput on a GPU: fp32 vs mixed precision, and 1 vs 2 vs 4 workers sharing it.

Run on a machine with a CUDA device::

    python bench/gpu_check.py [--seconds 8] [--device cuda:0]

For three networks of the spaces (the smallest and the largest plain/resnet/mobilenetv2 members a
CIFAR-size study would train), it trains on random 3x32x32 data with lightnas's own loop
(:func:`objectives.train_model`, so the device plan, autocast, channels_last and the grad scaler
are the product's) and prints one markdown table of images per second:

- ``fp32`` vs ``amp`` (bf16 where the GPU supports it, else fp16), one worker;
- ``amp`` with 1, 2 and 4 worker processes on the same GPU (the sum of their images/s): what
  ``nas study run --workers-per-device N`` gains when one small network leaves the GPU idle.

Each measurement trains for ``--seconds`` of wall time after a warm-up epoch; 3 networks x (2 + 2)
runs of 8 s plus start-up is about 3 minutes. Without a CUDA device it says so and exits 2
(``--device cpu --images 512 --seconds 1`` runs the same code on the CPU, to check the script).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time

import torch
from _util import machine_header, table

from objectives import Dataset, TrainConfig, train_model
from objectives.train import device_plan
from search_spaces import ArchSpec, Block, Stage, Stem, build_model

SHAPE = (3, 32, 32)
N_IMAGES = 8192
BATCH = 256

def _basic(c: int, stride: int = 1) -> Block:
    return Block("basic", c, mid_channels=c, stride=stride)


def _inverted(c: int, cin: int, stride: int = 1) -> Block:
    return Block("inverted", c, mid_channels=6 * cin, stride=stride)


NETWORKS: dict[str, ArchSpec] = {
    "plain 16-32 (tiny)": ArchSpec(stem=Stem(16), stages=(
        Stage(blocks=(Block("conv", 16),)), Stage(blocks=(Block("conv", 32, stride=2),)))),
    "resnet 16-32-64 x3 (ResNet-20-like)": ArchSpec(stem=Stem(16), stages=(
        Stage(blocks=tuple(_basic(16) for _ in range(3))),
        Stage(blocks=(_basic(32, 2), _basic(32), _basic(32))),
        Stage(blocks=(_basic(64, 2), _basic(64), _basic(64))))),
    "mobilenetv2 24-48-96 e6": ArchSpec(stem=Stem(24), stages=(
        Stage(blocks=(_inverted(24, 24),)),
        Stage(blocks=(_inverted(48, 24, 2), _inverted(48, 48))),
        Stage(blocks=(_inverted(96, 48, 2),)))),
}


def _data(n: int) -> Dataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, *SHAPE, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return Dataset(name="random", x_train=x, y_train=y, x_val=x[:512], y_val=y[:512], x_test=x[:0], y_test=y[:0],
                   input_shape=SHAPE, num_classes=10)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        _sync(device)


def images_per_second(name: str, amp: str, device: str, seconds: float, images: int = N_IMAGES) -> float:
    """Images/s of training network ``name`` for ``seconds`` (after one warm-up epoch)."""
    data = _data(images)
    model = build_model(NETWORKS[name], SHAPE, 10)
    warm = TrainConfig(epochs=1, batch_size=BATCH, device=device, amp=amp, threads=1)
    train_model(model, data, warm, keep_state=False)
    _sync(device)
    cfg = TrainConfig(epochs=10_000, batch_size=BATCH, device=device, amp=amp, threads=1, max_seconds=seconds)
    t0 = time.perf_counter()
    res = train_model(model, data, cfg, keep_state=False)
    _sync(device)
    return res.steps * BATCH / (time.perf_counter() - t0)


def _worker(name: str, amp: str, device: str, seconds: float, images: int, out: mp.SimpleQueue,
            start: mp.Barrier) -> None:
    start.wait()
    out.put(images_per_second(name, amp, device, seconds, images))


def shared(name: str, workers: int, device: str, seconds: float, images: int = N_IMAGES) -> float:
    """Summed images/s of ``workers`` processes training ``name`` on one GPU at once."""
    ctx = mp.get_context("spawn")
    out, start = ctx.SimpleQueue(), ctx.Barrier(workers)
    procs = [ctx.Process(target=_worker, args=(name, "auto", device, seconds, images, out, start))
             for _ in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    return sum(out.get() for _ in range(workers))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=8.0, help="timed training per measurement")
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--images", type=int, default=N_IMAGES, help="random training images per run")
    args = ap.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: no CUDA device on this machine; nothing to measure (run it where there is one)",
              file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    plan = device_plan(args.device, "auto")
    rows = []
    for name in NETWORKS:
        fp32 = images_per_second(name, "off", args.device, args.seconds, args.images)
        amp = images_per_second(name, "auto", args.device, args.seconds, args.images)
        w2 = shared(name, 2, args.device, args.seconds, args.images)
        w4 = shared(name, 4, args.device, args.seconds, args.images)
        rows.append([name, round(fp32), round(amp), f"{amp / fp32:.2f}x", round(w2), round(w4),
                     f"{w4 / amp:.2f}x"])
    print(machine_header("GPU training throughput (bench/gpu_check.py)", sys.argv))
    gpu = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "none (CPU check run)"
    print(f"- GPU: {gpu}; amp = {plan.precision}; batch {BATCH}, "
          f"{args.seconds:g} s per measurement; total {time.perf_counter() - t0:.0f} s\n")
    print(table(["network", "fp32 img/s", "amp img/s", "amp/fp32", "2 workers img/s", "4 workers img/s",
                 "4 workers / 1"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
