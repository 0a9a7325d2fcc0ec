"""Torch threads on a shared machine: per-step training time at 1 and 2 threads, quiet and with
one competing busy process (issue 28, section 1).

torch's CPU build parallelises inside an operator with OpenMP (``torch.__config__.parallel_info()``:
"ATen parallel backend: OpenMP"). At the end of a parallel region libgomp's threads spin-wait
(``GOMP_SPINCOUNT``, ~300,000 iterations by default) before sleeping, and a region cannot finish
until its slowest thread does: when another process holds one of the two cores, every small
convolution waits for a thread the kernel has descheduled. This script measures it: each
configuration runs in a fresh child process (the OpenMP environment is read once, at start),
and the competitor is a one-thread Python busy loop started before the child.

    python bench/bench_threads.py steps            # per-step table (markdown on stdout)
    python bench/bench_threads.py study            # the demo study's wall, quiet vs competed, per policy

Networks: ``small`` = the largest network of the demo's space (plain, 8x8 digits, <= 20k
parameters), ``mnist`` = a plain network at 28x28 near LeNet-5's cost, ``large`` = a
MobileNetV2 of the default space at 3x32x32; batch 64, SGD, one forward+backward+step.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _util import machine_header, median, table  # noqa: E402

NETS = {"small": ("plain", (1, 8, 8), {"max_depth": 2, "widths": (8, 16, 24, 32), "hidden": (0, 32, 64)}, 20_000),
        "mnist": ("plain", (1, 28, 28), {}, 60_000),
        "large": ("mobilenetv2", (3, 32, 32), {}, 400_000)}


def _net(kind: str):
    from search_spaces import build_model, get_space, sample_spec

    space_name, shape, options, max_params = NETS[kind]
    space = get_space(space_name, **options)
    best = None
    for seed in range(40):
        spec = sample_spec(space, seed)
        model = build_model(spec, shape, 10)
        n = sum(p.numel() for p in model.parameters())
        if n <= max_params and (best is None or n > best[0]):
            best = (n, model)
    assert best is not None
    return best[1], shape, best[0]


def child(kind: str, threads: int, steps: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model, shape, params = _net(kind)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(64, *shape)
    y = torch.randint(0, 10, (64,))
    times = []
    for i in range(steps + 3):
        t0 = time.perf_counter()
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        if i >= 3:
            times.append(time.perf_counter() - t0)
    return {"ms": 1000 * median(times), "params": params}


def _busy(kind: str = "python") -> subprocess.Popen:
    """One competing process: a one-thread Python loop, or another torch training at 2 threads
    (a second study, or a CI job, started with torch's defaults)."""
    if kind == "python":
        return subprocess.Popen([sys.executable, "-c", "while True: pass"])
    return subprocess.Popen([sys.executable, __file__, "_child", "small", "2", "1000000000"],
                            stdout=subprocess.DEVNULL)


def _run_child(kind: str, threads: int, env_extra: dict[str, str], steps: int) -> dict:
    env = {**os.environ, **env_extra}
    out = subprocess.run([sys.executable, __file__, "_child", kind, str(threads), str(steps)], env=env,
                         capture_output=True, text=True, check=True, timeout=1800)
    return json.loads(out.stdout.strip().splitlines()[-1])


POLICIES = {"default": {}, "passive": {"OMP_WAIT_POLICY": "PASSIVE"}}


def part_steps(args: argparse.Namespace) -> str:
    rows = []
    for kind in args.nets:
        for threads in (1, 2):
            for policy in args.policies:
                cell = {}
                for competed in (False, True):
                    busy = _busy(args.competitor) if competed else None
                    try:
                        time.sleep(3 if busy else 0)  # the torch competitor imports torch first
                        # Fewer steps when a step may take a second: the median is still over >= 5.
                        r = _run_child(kind, threads, POLICIES[policy], args.steps if not competed else
                                       max(5, args.steps // 4))
                    finally:
                        if busy:
                            busy.kill()
                            busy.wait()
                    cell[competed] = r
                quiet, comp = cell[False]["ms"], cell[True]["ms"]
                rows.append([kind, cell[False]["params"], threads, policy, quiet, comp, comp / quiet])
                print(rows[-1], file=sys.stderr, flush=True)
    return table(["network", "params", "threads", "OMP wait", "quiet ms/step", "competed ms/step",
                  "competed / quiet"], rows)


STUDY_POLICIES = {"fixed-2": (2, False), "fixed-1": (1, False), "adaptive-2": (2, True)}


def study_child(policy: str, trials: int) -> dict:
    """The demo study (its space, data, budget and fidelity) run to ``trials`` in this process,
    with the threads of ``policy``: ``fixed-2`` is lightnas before issue 28 (threads = cores),
    ``adaptive-2`` today's default (at most 2, the governor choosing)."""
    import nas.workers._local as local_mod
    import objectives.train._train as train_mod
    from nas.search import create_study, demo_spec
    from nas.workers import run_study
    from objectives import ThreadGovernor
    from storage import Store

    threads, adapt = STUDY_POLICIES[policy]

    class Fixed(ThreadGovernor):
        def _probe_plan(self):  # never probes: stays at ``most``
            return []

    if not adapt:
        train_mod.ThreadGovernor = Fixed
    local_mod.threads_per_worker = lambda workers: threads
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(f"sqlite:///{tmp}/nas.db")
        create_study(demo_spec("demo", trials), store, anchors=True)
        t0 = time.perf_counter()
        run_study("demo", store, trials=trials)
        wall = time.perf_counter() - t0
        store.close()
    return {"wall": wall}


def part_study(args: argparse.Namespace) -> str:
    """The demo study quiet, then with one competing busy process, per thread policy."""
    rows = []
    for policy in args.policies:
        walls = {}
        for competed in (False, True):
            busy = _busy(args.competitor) if competed else None
            try:
                time.sleep(3 if busy else 0)
                out = subprocess.run([sys.executable, __file__, "_study", policy, str(args.trials)],
                                     capture_output=True, text=True, check=True, timeout=7200)
            finally:
                if busy:
                    busy.kill()
                    busy.wait()
            walls[competed] = json.loads(out.stdout.strip().splitlines()[-1])["wall"]
        rows.append([policy, walls[False], walls[True], walls[True] / walls[False]])
        print(rows[-1], file=sys.stderr, flush=True)
    return table(["threads", f"quiet wall s ({args.trials} trials)", "one busy process wall s",
                  "competed / quiet"], rows)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_child":
        print(json.dumps(child(argv[1], int(argv[2]), int(argv[3]))))
        return
    if argv and argv[0] == "_study":
        print(json.dumps(study_child(argv[1], int(argv[2]))))
        return
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="part", required=True)
    s = sub.add_parser("steps")
    s.add_argument("--nets", nargs="+", default=list(NETS), choices=list(NETS))
    s.add_argument("--policies", nargs="+", default=list(POLICIES), choices=list(POLICIES))
    s.add_argument("--steps", type=int, default=40)
    s.add_argument("--competitor", choices=["python", "torch"], default="python")
    st = sub.add_parser("study")
    st.add_argument("--trials", type=int, default=8)
    st.add_argument("--policies", nargs="+", default=list(STUDY_POLICIES), choices=list(STUDY_POLICIES))
    st.add_argument("--competitor", choices=["python", "torch"], default="python")
    args = p.parse_args(argv)
    body = part_steps(args) if args.part == "steps" else part_study(args)
    print(machine_header(f"Threads on a shared machine: {args.part}", ["bench/bench_threads.py", *argv]))
    print(body)


if __name__ == "__main__":
    main()
