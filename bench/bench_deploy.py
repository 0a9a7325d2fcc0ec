"""int8 artifacts on the device runtimes: what lightnas predicts against what TFLM measures.

``collect``: sample specs of every space at several input shapes, quantize each (PT2E, random
calibration images: sizes and arenas do not depend on the values), convert to ``.tflite``, and
record the file size, the smallest TFLM arena with its breakdown, and the graph (ops, tensors)
as JSON lines. ``fit`` / ``report``: the RAM/flash model of ``objectives`` against those records.

    python bench/bench_deploy.py collect --out bench/data/tflm_specs.jsonl --n 400 --threads 1
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from search_spaces import build_model, get_space, list_spaces, sample_spec  # noqa: E402

SHAPES = [(1, 28, 28), (3, 32, 32), (1, 32, 32), (3, 48, 48), (1, 64, 64), (3, 64, 64), (1, 96, 96), (3, 96, 96)]


def graph_of(tflite: bytes) -> dict:
    from objectives._int8 import _litert_interpreter

    it = _litert_interpreter(tflite)
    tensors = []
    for t in it.get_tensor_details():
        qp = t.get("quantization_parameters", {})
        tensors.append({"i": int(t["index"]), "name": t["name"], "shape": [int(v) for v in t["shape"]],
                        "dtype": np.dtype(t["dtype"]).name, "nq": int(len(qp.get("scales", [])))})
    ops = [{"op": o["op_name"], "in": [int(v) for v in o["inputs"]], "out": [int(v) for v in o["outputs"]]}
           for o in it._get_ops_details()]
    return {"tensors": tensors, "ops": ops}


def collect(args: argparse.Namespace) -> None:
    from objectives._int8 import quantize_ptq, tflm_arena, to_tflite

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
        shape = SHAPES[rng.randrange(len(SHAPES))]
        opts = {}
        if shape[1] >= 64 and rng.random() < 0.6:
            opts["width_mult"] = rng.choice([0.5, 0.75])
        jobs.append((f"{space}-{shape[0]}x{shape[1]}-{i}", space, shape, opts, rng.randrange(1 << 30)))
    with out.open("a") as f:
        for key, space_name, shape, opts, seed in jobs:
            if key in done:
                continue
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


KINDS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "MEAN", "PAD")
TAIL_FEATURES = ("one", "tensors", *(f"n_{k}" for k in KINDS if k != "MEAN"),
                 "ch_CONV_2D", "ch_DEPTHWISE_CONV_2D", "ch_FULLY_CONNECTED")
FLASH_FEATURES = ("one", "tensors", "weight_bytes", "bias_bytes", "quant_channels",
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


def split(records: list[dict], seed: int = 0) -> tuple[list[dict], list[dict]]:
    """A third for fitting, two thirds held out (seeded)."""
    idx = list(range(len(records)))
    random.Random(seed).shuffle(idx)
    cut = len(idx) // 3
    return [records[i] for i in idx[:cut]], [records[i] for i in idx[cut:]]


def fit(args: argparse.Namespace) -> None:
    from objectives._tflm import planned_bytes, tflite_graph

    records = load_records(args.data)
    train, test = split(records, args.seed)
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
        from objectives._tflm import COEFFS_FILE

        COEFFS_FILE.write_text(json.dumps({
            "source": f"bench/bench_deploy.py fit --data {args.data} --seed {args.seed}: least squares on {len(train)} "
                      f"of {len(records)} networks converted by litert-torch and measured by tflite-micro "
                      f"(the rest held out)",
            "tail": coeffs["tail"], "flash": coeffs["flash"]}, indent=1) + "\n")
        print("wrote", COEFFS_FILE)
    for name, rows in (("fit", train), ("held-out", test)):
        head_exact = sum(feats[r["key"]][1] == r["head"] for r in rows)
        print(f"{name}: planned == measured head on {head_exact}/{len(rows)}")
        for target, names in (("tail", TAIL_FEATURES), ("flash", FLASH_FEATURES)):
            pred = np.array([sum(coeffs[target].get(n, 0.0) * feats[r["key"]][0].get(n, 0.0) for n in names)
                             for r in rows])
            meas = np.array([r[target] for r in rows], float)
            err = np.log(pred / meas)
            print(f"  {target}: median |ln| {np.median(np.abs(err)):.5f} max {np.abs(err).max():.5f} "
                  f"min ln {err.min():.5f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("collect")
    c.add_argument("--out", default="bench/data/tflm_specs.jsonl")
    c.add_argument("--n", type=int, default=400)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--threads", type=int, default=1)
    c.add_argument("--spaces", default="")
    f = sub.add_parser("fit")
    f.add_argument("--data", default="bench/data/tflm_specs.jsonl")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--write", action="store_true", help="write the coefficients into objectives/tflm_model.json")
    args = p.parse_args()
    if args.cmd == "collect":
        collect(args)
    elif args.cmd == "fit":
        fit(args)


if __name__ == "__main__":
    main()
