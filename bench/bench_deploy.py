"""int8 artifacts on the device runtimes: what lightnas predicts against what TFLM measures.

``collect``: sample specs of every space at several input shapes, quantize each (PT2E, random
calibration images: sizes and arenas do not depend on the values), convert to ``.tflite``, and
record the file size, the smallest TFLM arena with its breakdown, and the graph (ops, tensors)
as JSON lines. ``fit`` / ``report``: the RAM/flash model of ``objectives`` against those records.

    python bench/bench_deploy.py collect --out bench/data/tflm_specs_28-96.jsonl --n 420 --seed 1
    python bench/bench_deploy.py collect --out bench/data/tflm_specs_8-28.jsonl --n 150 --seed 2 --small
    python bench/bench_deploy.py collect --out bench/data/tflm_specs_tests.jsonl --tests
    python bench/bench_deploy.py fit [--write]        # the RAM/flash model: fitted on 8 %, the rest held out
    python bench/bench_deploy.py tiny                 # the planner's temporary records of the smallest networks
    python bench/bench_deploy.py study --data idx:DIR --space resnet ...   # an int8 study, its front exported
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from search_spaces import build_model, get_space, list_spaces, sample_spec  # noqa: E402

SHAPES = [(1, 28, 28), (3, 32, 32), (1, 32, 32), (3, 48, 48), (1, 64, 64), (3, 64, 64), (1, 96, 96), (3, 96, 96)]
#: The digits' 8x8 and other small inputs (a second collection, so the fit covers the smallest networks).
SMALL_SHAPES = [(1, 8, 8), (1, 12, 12), (3, 16, 16), (1, 16, 16), (3, 24, 24), (1, 28, 28)]


def graph_of(tflite: bytes) -> dict:
    from objectives.deploy import describe_tflite

    return describe_tflite(tflite)


def collect(args: argparse.Namespace) -> None:
    from objectives.deploy import quantize_ptq, tflm_arena, to_tflite

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if out.exists():
        for line in out.read_text().splitlines():
            done.add(json.loads(line)["key"])
    rng = random.Random(args.seed)
    spaces = args.spaces.split(",") if args.spaces else list_spaces()
    jobs = []
    for i in range(args.n):
        space = spaces[i % len(spaces)]
        shapes = SMALL_SHAPES if args.small else SHAPES
        shape = shapes[rng.randrange(len(shapes))]
        opts = {}
        if shape[1] >= 64 and rng.random() < 0.6:
            opts["width_mult"] = rng.choice([0.5, 0.75])
        jobs.append((f"{space}-{shape[0]}x{shape[1]}-{'s' if args.small else ''}{i}", space, shape, opts,
                     rng.randrange(1 << 30)))
    if args.tests:  # the tests' small networks (one per block type) and tinier ones, at small inputs
        from search_spaces import ArchSpec
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        import test_deploy as td

        nets = {**td.NETWORKS, **_tiny_nets()}
        specs = {}
        jobs = []
        for name, spec in nets.items():
            for shape in [(1, 4, 4), (1, 8, 8), (3, 8, 8), (1, 12, 12), (3, 16, 16)]:
                key = f"tests-{name}-{shape[0]}x{shape[1]}"
                specs[key] = spec
                jobs.append((key, spec.family or "tests", shape, {}, 0))
        assert all(isinstance(v, ArchSpec) for v in specs.values())
    with out.open("a") as f:
        for key, space_name, shape, opts, seed in jobs:
            if key in done:
                continue
            if args.tests:
                spec = specs[key]
            else:
                space = get_space(space_name, input_shape=shape, **opts)
                spec = sample_spec(space, seed)
            torch.manual_seed(seed)
            model = build_model(spec, shape, 10).eval()
            with torch.no_grad():  # BatchNorm statistics of real activations, as a trained network has
                for m in model.modules():
                    if isinstance(m, torch.nn.BatchNorm2d):
                        m.momentum = None
                model.train()
                for _ in range(4):
                    model(torch.randn(16, *shape))
                model.eval()
            t0 = time.perf_counter()
            try:
                q = quantize_ptq(model, torch.randn(16, *shape))
                data = to_tflite(q)
            except Exception as e:  # noqa: BLE001 - recorded, the run goes on
                rec = {"key": key, "error": f"{type(e).__name__}: {e}"[:500]}
                f.write(json.dumps(rec) + "\n")
                f.flush()
                print(key, "FAILED", rec["error"][:200], flush=True)
                continue
            t1 = time.perf_counter()
            arena = tflm_arena(data)
            t2 = time.perf_counter()
            rec = {"key": key, "space": space_name, "options": opts, "input_shape": list(shape), "num_classes": 10,
                   "spec": json.loads(spec.to_json()), "flash": len(data), "arena": arena.arena, "head": arena.head,
                   "tail": arena.tail, "parts": arena.parts, "convert_s": t1 - t0, "arena_s": t2 - t1,
                   "graph": graph_of(data)}
            f.write(json.dumps(rec) + "\n")
            f.flush()
            print(key, "flash", len(data), "arena", arena.arena, f"{t1 - t0:.1f}s", flush=True)


def _tiny_nets() -> dict:
    from search_spaces import ArchSpec, Block, Stage, Stem

    return {"tiny1": ArchSpec(Stem(4, stride=2), (Stage((Block("conv", 4, stride=2),)),)),
            "tiny2": ArchSpec(Stem(4, stride=2), (Stage((Block("conv", 4, stride=2), *[Block("conv", 4)] * 3)),)),
            "tiny3": ArchSpec(Stem(4, stride=2), (Stage(tuple(Block("basic", 4, 4) for _ in range(6))),))}


KINDS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "MEAN", "PAD")
#: The persistent arena: 24 B per tensor (TfLiteEvalTensor), 64 B per node (NodeAndRegistration), each
#: kernel's OpData and builtin options per op kind, the per-channel multiplier/shift arrays, and a constant
#: (input/output TfLiteTensors, the subgraph): what tflite-micro's recording allocator reports, in counts.
TAIL_FEATURES = ("one", "tensors", "ops", *(f"n_{k}" for k in KINDS if k != "MEAN"), "ch_arrays")
#: The file: constant bytes, quantization parameters per channel, tables per tensor and op.
FLASH_FEATURES = ("one", "tensors", "ops", "weight_bytes", "bias_bytes", "quant_channels",
                  *(f"n_{k}" for k in KINDS if k != "MEAN"))


def load_records(path: str) -> list[dict]:
    from search_spaces import ArchSpec

    out = []
    for line in Path(path).read_text().splitlines():
        r = json.loads(line)
        if "error" in r:
            continue
        r["arch"] = ArchSpec.from_json(json.dumps(r["spec"]))
        out.append(r)
    return out


def split(records: list[dict], seed: int = 0, share: float = 0.25) -> tuple[list[dict], list[dict]]:
    """``share`` of the records for fitting, the rest held out (seeded)."""
    idx = list(range(len(records)))
    random.Random(seed).shuffle(idx)
    cut = int(len(idx) * share)
    return [records[i] for i in idx[:cut]], [records[i] for i in idx[cut:]]


def fit(args: argparse.Namespace) -> None:
    from objectives.cost import planned_bytes, tflite_graph

    records = [r for path in args.data.split(",") for r in load_records(path)]
    train, test = split(records, args.seed, args.fit_share)
    if args.fit_also:  # always fitted to (the smallest networks, at the edge of what the model must cover)
        extra = [r for path in args.fit_also.split(",") for r in load_records(path)]
        train = train + extra
        records = records + extra
    feats = {}
    for r in records:
        g = tflite_graph(r["arch"], tuple(r["input_shape"]), r["num_classes"])
        feats[r["key"]] = (g.counts(), planned_bytes(g))
    coeffs = {}
    for target, names in (("tail", TAIL_FEATURES), ("flash", FLASH_FEATURES)):
        x = np.array([[feats[r["key"]][0].get(n, 0.0) for n in names] for r in train])
        y = np.array([r[target] for r in train], float)
        scale = np.maximum(np.abs(x).max(axis=0), 1.0)
        sol, *_ = np.linalg.lstsq(x / scale, y, rcond=None)
        coeffs[target] = {n: float(c / s) for n, c, s in zip(names, sol, scale, strict=True) if abs(c) > 1e-9}
    print("TAIL_COEFFS =", json.dumps({k: round(v, 4) for k, v in coeffs["tail"].items()}))
    print("FLASH_COEFFS =", json.dumps({k: round(v, 4) for k, v in coeffs["flash"].items()}))
    print(f"fitted on {len(train)}, held out {len(test)}")
    if args.write:
        import objectives

        coeffs_file = Path(objectives.__file__).parent / "cost" / "tflm_model.json"

        coeffs_file.write_text(json.dumps({
            "source": f"bench/bench_deploy.py fit --data {args.data} --seed {args.seed}: least squares on {len(train)} "
                      f"of {len(records)} networks converted by litert-torch and measured by tflite-micro "
                      f"(the rest held out)",
            "tail": coeffs["tail"], "flash": coeffs["flash"]}, indent=1) + "\n")
        print("wrote", coeffs_file)
    for name, rows in (("fit", train), ("held-out", test)):
        head_exact = sum(feats[r["key"]][1] == r["head"] for r in rows)
        print(f"{name}: planned == measured head on {head_exact}/{len(rows)}")
    report(test, coeffs)


def report(rows: list[dict], coeffs: dict[str, dict[str, float]]) -> None:
    """Held-out table (markdown): per space, median and max |ln(pred/meas)| of ram and flash, the share
    under-predicted by more than 5 %, and today's peak_mem / weight_bytes (cortex-m7, int8) against them."""
    from objectives import estimate_cost
    from objectives.cost import planned_bytes, temporary_bytes, tflite_graph

    def linear(which: str, counts: dict[str, float]) -> float:
        return sum(v * counts.get(k, 0.0) for k, v in coeffs[which].items())

    by: dict[str, list[dict]] = {}
    for r in rows:
        shape = tuple(r["input_shape"])
        c = estimate_cost(r["arch"], shape, r["num_classes"], device="cortex-m7")
        g = tflite_graph(r["arch"], shape, r["num_classes"])
        counts = g.counts()
        pred_ram = max(planned_bytes(g), temporary_bytes(g)) + -(-round(linear("tail", counts)) // 16) * 16
        pred_flash = round(linear("flash", counts))
        e = {"key": r["key"], "ram": math.log(pred_ram / r["arena"]), "flash": math.log(pred_flash / r["flash"]),
             "peak": c["peak_activation_bytes"] / r["arena"], "weights": c["weight_bytes"] / r["flash"],
             "arena": r["arena"], "file": r["flash"], "pred_ram": pred_ram, "pred_flash": pred_flash}
        by.setdefault(r["space"], []).append(e)
        by.setdefault("all", []).append(e)
    print("| space | networks | ram median abs ln | ram max | flash median abs ln | flash max | under-predicted > 5 % "
          "| peak_mem / arena (median, min-max) | weight_bytes / file (median, min-max) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for space in sorted(by):
        es = by[space]
        ram, fl = np.abs([e["ram"] for e in es]), np.abs([e["flash"] for e in es])
        under = sum(e["ram"] < math.log(0.95) or e["flash"] < math.log(0.95) for e in es)
        pk, wb = [e["peak"] for e in es], [e["weights"] for e in es]
        print(f"| {space} | {len(es)} | {np.median(ram):.4f} | {ram.max():.4f} | {np.median(fl):.4f} | {fl.max():.4f} "
              f"| {under} | {np.median(pk):.2f} ({min(pk):.2f}-{max(pk):.2f}) "
              f"| {np.median(wb):.2f} ({min(wb):.2f}-{max(wb):.2f}) |")
    print()
    print("Worst 5 (largest |ln error| of ram or flash):")
    print()
    print("| network | arena measured | ram predicted | ln | file measured | flash predicted | ln |")
    print("|---|---|---|---|---|---|---|")
    worst = sorted(by["all"], key=lambda e: -max(abs(e["ram"]), abs(e["flash"])))[:5]
    for e in worst:
        print(f"| {e['key']} | {e['arena']:,} | {e['pred_ram']:,} | {e['ram']:+.4f} | {e['file']:,} | "
              f"{e['pred_flash']:,} | {e['flash']:+.4f} |")


def tiny(args: argparse.Namespace) -> None:
    """The smallest networks, where the interpreter's temporary planning records, not the activations, set
    the arena's head: measured arena - persistent part against ``objectives.cost._tflm.temporary_bytes``."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import test_deploy as td

    from objectives.cost import planned_bytes, temporary_bytes, tflite_graph
    from objectives.deploy import quantize_ptq, tflm_arena, to_tflite
    nets = {**td.NETWORKS, **_tiny_nets()}
    print("| network | input | tensors | ops | planned | arena - persistent (measured) | temporary (model) |")
    print("|---|---|---|---|---|---|---|")
    for name, spec in nets.items():
        for shape in [(1, 8, 8), (1, 4, 4)]:
            torch.manual_seed(0)
            model = build_model(spec, shape, 10)
            td._bn_statistics(model, shape)
            a = tflm_arena(to_tflite(quantize_ptq(model, torch.randn(16, *shape))))
            g = tflite_graph(spec, shape, 10)
            c = g.counts()
            print(f"| {name} | {shape[1]}x{shape[2]} | {c['tensors']:.0f} | {c['ops']:.0f} | {planned_bytes(g)} | "
                  f"{a.arena - a.tail} | {temporary_bytes(g)} |", flush=True)


def study(args: argparse.Namespace) -> None:
    """An int8 study under microcontroller limits, as a user runs it (the ``nas`` command), then every front
    member exported as ``.tflite`` and measured: int8 vs fp32 accuracy in LiteRT and TFLM, the simulated
    network's agreement with LiteRT, the arena and the file against the limits."""
    import shutil
    import subprocess
    import tempfile

    nas = shutil.which("nas", path=str(Path(sys.executable).parent)) or "nas"
    work = Path(args.workdir or tempfile.mkdtemp(prefix="lightnas-deploy-"))
    work.mkdir(parents=True, exist_ok=True)
    db = f"sqlite:///{work / 'nas.db'}"
    t0 = time.perf_counter()

    def run(*a: str) -> str:
        r = subprocess.run([nas, *a, "--storage", db], capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"nas {' '.join(a)} failed ({r.returncode}): {r.stdout}{r.stderr}")
        return r.stdout

    run("study", "create", "dep", "--space", args.space, "--data", args.data, "--cost-device", "cortex-m7",
        "--budget", args.budget, "--precision", "int8", "--epochs", str(args.epochs), "--train-fraction",
        str(args.train_fraction), "--trials", str(args.trials), "--seed", str(args.seed), "--qat-epochs",
        str(args.qat_epochs))
    run("study", "run", "dep", "--workers", "1", "--quiet")
    t_search = time.perf_counter() - t0
    rows = json.loads(run("pareto", "dep", "--deploy", "--format", "json"))
    import optuna

    attrs = {t.number: t.user_attrs for t in optuna.load_study(study_name="dep", storage=db).get_trials()}
    print(f"### {args.data}: {args.trials} networks, budget {args.budget}, --precision int8 ({t_search:.0f} s search)")
    print()
    print("| trial | int8 val | fp32 val | int8 by | PTQ val | fp32 test (PyTorch) | int8 test LiteRT | "
          "int8 test TFLM (1,000) | sim vs LiteRT | RAM measured / predicted | flash measured / predicted | "
          "within limits |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        out = work / f"t{r['trial']}"
        run("export", "dep", "--trial", str(r["trial"]), "--to", str(out), "--formats", "json,tflite")
        d = json.loads((out / "model.json").read_text())["deploy"]
        t = d["tflite"]
        a = attrs[r["trial"]]
        ptq = a.get("ptq_accuracy", a.get("val_accuracy"))
        print(f"| {r['trial']} | {r['int8_accuracy']:.4f} | {r['fp32_accuracy']:.4f} | {a.get('int8_method')} | "
              f"{ptq:.4f} | {d['fp32']['accuracy']:.4f} | "
              f"{t['litert']['accuracy']:.4f} | {t['tflm']['accuracy']:.4f} | {t['simulated_vs_litert']:.4f} | "
              f"{t['ram_bytes']:,} / {t['ram_predicted']:,} | {t['flash_bytes']:,} / {t['flash_predicted']:,} | "
              f"{'yes' if t['within_budget'] else 'NO'} |", flush=True)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("collect")
    c.add_argument("--out", default="bench/data/tflm_specs_28-96.jsonl")
    c.add_argument("--n", type=int, default=400)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--threads", type=int, default=1)
    c.add_argument("--spaces", default="")
    c.add_argument("--small", action="store_true", help="small inputs (8x8 to 28x28) instead of 28x28 to 96x96")
    c.add_argument("--tests", action="store_true", help="the tests' networks and tinier ones at 4x4 to 16x16")
    f = sub.add_parser("fit")
    f.add_argument("--data", default="bench/data/tflm_specs_28-96.jsonl,bench/data/tflm_specs_8-28.jsonl")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--fit-share", type=float, default=0.08, help="share of the networks fitted to (rest held out)")
    f.add_argument("--fit-also", default="bench/data/tflm_specs_tests.jsonl",
                   help="records always in the fit set (comma list of files)")
    f.add_argument("--write", action="store_true", help="write the coefficients into objectives/cost/tflm_model.json")
    st = sub.add_parser("study")
    st.add_argument("--data", default="digits")
    st.add_argument("--space", default="plain")
    st.add_argument("--budget", default="ram<=32KiB flash<=64KiB")
    st.add_argument("--epochs", type=int, default=3)
    st.add_argument("--train-fraction", type=float, default=1.0)
    st.add_argument("--trials", type=int, default=12)
    st.add_argument("--seed", type=int, default=0)
    st.add_argument("--workdir", default="")
    st.add_argument("--qat-epochs", type=int, default=2)
    sub.add_parser("tiny")
    args = p.parse_args()
    if args.cmd == "tiny":
        tiny(args)
    elif args.cmd == "study":
        study(args)
    elif args.cmd == "collect":
        collect(args)
    elif args.cmd == "fit":
        fit(args)


if __name__ == "__main__":
    main()
