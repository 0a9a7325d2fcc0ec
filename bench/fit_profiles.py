"""Fit the shipped device profiles to published measurements and validate them on measurements
not used in the fit. ``report(write=True)`` also writes ``objectives/cost/devices/*.toml``.

    python bench/bench_latency.py profiles [--write]

Data, networks and their provenance: ``bench/published.py`` and ``bench/data/published/README.md``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import published as P  # noqa: E402
from _util import table  # noqa: E402

from objectives import DeviceProfile, get_device, shipped_profile_path
from objectives.cost import (
    OP_CLASSES,
    Layer,
    OpModel,
    Validation,
    board_power,
    fit_opmodel,
    kendall_tau,
    median_abs_ln_error,
    predict_many,
)

#: Where --write puts the refitted shipped profiles.
_SHIPPED = Path(__file__).resolve().parents[1] / "objectives" / "cost" / "devices"

SEED = 0
#: Classes that share their numbers when a device has few measurements.
MAC_GROUPS = {c: "mac" for c in OP_CLASSES if c not in ("pool", "add")} | {"pool": "elem", "add": "elem"}
#: Few measurements, dense convolutions apart: the MCU profile.
CONV_MAC_GROUPS = MAC_GROUPS | {"conv": "conv"}
HWNAS = ("HW-NAS-Bench (Li et al., ICLR 2021; GATECH-EIC/HW-NAS-Bench 393bb8a, MIT) values as shipped by "
         "HELP (Lee et al., NeurIPS 2021; HayeonLee/HELP 45f70eb, MIT), bit-exact with HW-NAS-Bench's printed examples")


def roofline_net_ms(prof: DeviceProfile, layers: list[Layer]) -> float:
    """The per-layer roofline of a profile (its peak, bandwidth, overhead) over layers."""
    bpe = prof.bytes_per_element
    total = 0.0
    for la in layers:
        traffic = (la.params + la.in_elems + la.out_elems) * bpe
        total += max(la.macs / prof.peak_macs_per_s, traffic / prof.mem_bandwidth_bytes_per_s) * 1e3
        total += prof.layer_overhead_us * 1e-3
    return total


def _val(data: str, source: str, n_fit: int, pred: np.ndarray, meas: np.ndarray, macs: list[int],
         note: str = "") -> Validation:
    return Validation(data=data, source=source, n_fit=n_fit, n_test=len(meas), tau=round(kendall_tau(pred, meas), 4),
                      median_abs_ln_error=round(median_abs_ln_error(pred, meas), 4),
                      tau_flops=round(kendall_tau(macs, meas), 4), note=note)


def _row(label: str, pred: np.ndarray, meas: np.ndarray) -> list[str]:
    return [label, f"{kendall_tau(pred, meas):.3f}", f"{median_abs_ln_error(pred, meas):.3f}",
            f"{float(np.median(pred / meas)):.3g}"]


def _loo(data: list[P.Measured], **kw: object) -> np.ndarray:
    bpe = int(kw.get("bytes_per_element", 4))  # type: ignore[call-overload]
    out = []
    for i in range(len(data)):
        train = [d for j, d in enumerate(data) if j != i]
        res = fit_opmodel([d.layers for d in train], [d.latency_ms for d in train], **kw)  # type: ignore[arg-type]
        out.append(res.model.network_ms(data[i].layers, bpe))
    return np.array(out)


# ------------------------------------------------------------------------------------------ rpi4
def fit_rpi4(n_nb201: int = 2000, n_fbnet: int = 1000) -> tuple[DeviceProfile, list[str]]:
    # The roofline numbers of the shipped rpi4 stay as they were (datasheet, cited): without its
    # operator-level model the profile is the one before this issue.
    base = get_device(str(shipped_profile_path("rpi4")))
    old = base.model_copy(update={"opmodel": None, "lut": {}})
    t0 = time.time()
    nb, fb = P.nb201_raspi4(), P.fbnet_raspi4()
    rng = np.random.default_rng(SEED)
    nb_i, fb_i = rng.permutation(len(nb)), rng.permutation(len(fb))
    train = [nb[i] for i in nb_i[:n_nb201]] + [fb[i] for i in fb_i[:n_fbnet]]
    res = fit_opmodel([d.layers for d in train], [d.latency_ms for d in train])
    model = res.model
    lines = ["#### rpi4: Raspberry Pi 4 (HW-NAS-Bench, NAS-Bench-201 and FBNet spaces)", ""]
    rows, vals = [], []
    for label, data, idx, n_fit in (("NAS-Bench-201 networks, CIFAR-10, end-to-end timings", nb, nb_i[n_nb201:],
                                      n_nb201),
                                     ("FBNet-space networks, CIFAR-100, sums of per-block LUT timings", fb,
                                      fb_i[n_fbnet:], n_fbnet)):
        held = [data[i] for i in idx]
        meas = np.array([d.latency_ms for d in held])
        pred = predict_many(model, [d.layers for d in held])
        macs = [d.macs for d in held]
        vals.append(_val(f"held-out {label}", HWNAS, n_fit, pred, meas, macs,
                         note=f"random split, seed {SEED}; fitted jointly on {n_nb201} NAS-Bench-201 + {n_fbnet} FBNet "
                              "networks"))
        rows.append(_row(f"{label} (n={len(held)}): operator-level model", pred, meas))
        rows.append(_row("  same, old shipped rpi4 roofline", np.array([roofline_net_ms(old, d.layers) for d in held]),
                         meas))
        rows.append(["  same, FLOPs", f"{kendall_tau(macs, meas):.3f}", "-", "-"])
    lines += [table(["held-out measurements", "tau", "median abs ln(pred/meas)", "median pred/meas"], rows), ""]
    # As a user would: FBNet networks written as ArchSpecs, costed by estimate_cost.
    lines += _as_a_user(model, old, fb)
    lines.append(f"Fit: {n_nb201} NAS-Bench-201 + {n_fbnet} FBNet networks (random, seed {SEED}); median |ln error| "
                 f"on them {res.median_abs_ln_error:.3f}; {time.time() - t0:.0f} s (info).")
    how = (f"Fitted by bench/fit_profiles.py (robust regression in log space) to {HWNAS}: the Raspberry Pi 4 latency "
           f"of {n_nb201} NAS-Bench-201 networks (CIFAR-10, end-to-end) and {n_fbnet} FBNet-space networks "
           f"(CIFAR-100, sums of per-block lookup-table timings), random split seed {SEED}")
    prof = base.model_copy(update={
        "description": "Raspberry Pi 4 Model B (BCM2711, 4x Cortex-A72 @ 1.5 GHz) as HW-NAS-Bench timed it",
        "runtime": "not stated by HW-NAS-Bench (its repository has no Raspberry Pi measurement code; the NAS-Bench-201 "
                   "timings show a graph optimiser folded x*0 and removed dead nodes, as TFLite's converter does); "
                   "batch 1; precision and threads not stated (FP32 assumed)",
        "opmodel": model, "board_power_w": 6.4, "validation": vals,
        "sources": {**base.sources, "opmodel": how,
                    "board_power_w": "Raspberry Pi 4B at 400% CPU load: 1280 mA at 5 V = 6.4 W (RasPi.TV power "
                                     "measurements, 2019, as tabulated at https://linuxhint.com/power-consumption-"
                                     "raspberry-pi; idle 575 mA); assumes all 4 cores busy, not validated (no energy "
                                     "measurement is published for these timings)"}})
    return prof, lines


def _as_a_user(model: OpModel, old: DeviceProfile, fb: list[P.Measured]) -> list[str]:
    from objectives import estimate_cost

    sub = fb[:1000]
    meas = np.array([d.latency_ms for d in sub])
    specs = [P.fbnet_archspec(_op_idx(d)) for d in sub]
    new = old.model_copy(update={"opmodel": model})
    rows = [_row("old shipped rpi4 (roofline)", np.array([estimate_cost(s, (3, 32, 32), 100, device=old)
                                                          ["latency_ms"] for s in specs]), meas)]
    rows.append(_row("new rpi4 (operator-level model)", np.array([estimate_cost(s, (3, 32, 32), 100, device=new)
                                                                  ["latency_ms"] for s in specs]), meas))
    flops = [estimate_cost(s, (3, 32, 32), 100, device=new)["flops"] for s in specs]
    rows.append(["FLOPs of the ArchSpec", f"{kendall_tau(flops, meas):.3f}", "-", "-"])
    return ["As a user would (the issue's check): FBNet networks 0..999 written as `ArchSpec`s (grouped blocks "
            "as their "
            "dense twins, expansion-1 blocks without the 1x1 expansion) and costed by `estimate_cost(spec, (3, "
            "32, 32), "
            "100, device=...)`; these networks are mostly in the fit set of the new profile (the held-out rows above "
            "are the validation):", "",
            table(["profile", "tau", "median abs ln(pred/meas)", "median pred/meas"], rows), ""]


_FBNET_IDX: dict[str, str] = {}


def _op_idx(d: P.Measured) -> str:
    if not _FBNET_IDX:
        import csv

        with open(P.DATA / "fbnet_cifar100_raspi4.csv") as f:
            _FBNET_IDX.update({f"fbnet-{r['arch_id']}": r["op_idx"] for r in csv.DictReader(f)})
    return _FBNET_IDX[d.key]


def _dynamic_uj(d: P.Measured, pj_mac: float, pj_byte: float, bpe: int) -> float:
    moved = sum((la.params + la.in_elems + la.out_elems) * bpe for la in d.layers)
    return (d.macs * pj_mac + moved * pj_byte) * 1e-6


def _energy(data: list[P.Measured], latency_ms: np.ndarray, power: float | np.ndarray, pj_mac: float,
            pj_byte: float, bpe: int) -> np.ndarray:
    """Energy (uJ) of the networks: board power x latency + dynamic."""
    return np.asarray(power) * latency_ms * 1e3 + np.array([_dynamic_uj(d, pj_mac, pj_byte, bpe) for d in data])


def _power(data: list[P.Measured], meas: np.ndarray, energy: np.ndarray, pj_mac: float, pj_byte: float,
           bpe: int) -> float:
    return board_power([d.layers for d in data], list(meas), list(energy), pj_per_mac=pj_mac, pj_per_byte=pj_byte,
                       bytes_per_element=bpe)


def _loo_power(data: list[P.Measured], meas: np.ndarray, energy: np.ndarray, pj_mac: float, pj_byte: float,
               bpe: int) -> np.ndarray:
    """Board power fitted without each network in turn."""
    idx = np.arange(len(data))
    return np.array([_power([data[j] for j in idx if j != i], meas[idx != i], energy[idx != i], pj_mac, pj_byte, bpe)
                     for i in idx])


# ------------------------------------------------------------------------------------ jetson-tx2
def fit_tx2() -> tuple[DeviceProfile, list[str], Validation]:
    """The jetson-tx2 profile, its report, and the validation record of the jetson-nano profile
    on the same (TX2) values."""
    data = P.tx2_examples()
    kw = {"groups": MAC_GROUPS, "saturation": False}
    res = fit_opmodel([d.layers for d in data], [d.latency_ms for d in data], **kw)  # type: ignore[arg-type]
    meas = np.array([d.latency_ms for d in data])
    loo = _loo(data, **kw)
    macs = [d.macs for d in data]
    nano = get_device(str(shipped_profile_path("jetson-nano")))
    nano_pred = np.array([roofline_net_ms(nano, d.layers) for d in data])
    pj_mac, pj_byte = 4.6, 160.0  # FP32, DRAM: Horowitz, ISSCC 2014 (as the other FP32 profiles)
    e_meas = np.array([d.energy_uj for d in data], dtype=float)
    power = _power(data, meas, e_meas, pj_mac, pj_byte, 4)
    e_pred = _energy(data, loo, _loo_power(data, meas, e_meas, pj_mac, pj_byte, 4), pj_mac, pj_byte, 4)
    src = ("HW-NAS-Bench's example notebook (GATECH-EIC/HW-NAS-Bench 393bb8a example.ipynb, MIT): the 15 "
           "printed Jetson "
           "TX2 ('edgegpu') values, NAS-Bench-201 indices 0-2 on CIFAR-10/100 and ImageNet16-120, FBNet [0]*22, "
           "[0]*21+[1], [0]*20+[1,1] on CIFAR-100 and ImageNet")
    val = _val("leave-one-out over HW-NAS-Bench's 15 printed Jetson TX2 values", src, 14, loo, meas, macs,
               note="only 15 values, 6 distinct NAS-Bench-201 networks and 6 FBNet ones, and the FBNet values are "
                    "sums of per-block LUT timings; the rest of HW-NAS-Bench's Jetson data is not available offline")
    rows = [_row("operator-level model, leave-one-out", loo, meas), _row("operator-level model, in-fit", np.array(
        res.predicted_ms), meas), _row("jetson-nano datasheet roofline (a different Jetson)", nano_pred, meas),
        ["FLOPs", f"{kendall_tau(macs, meas):.3f}", "-", "-"]]
    lines = ["#### jetson-tx2: NVIDIA Jetson TX2, TensorRT (HW-NAS-Bench 'edgegpu', 15 published values)", "",
             table(["predictor", "tau", "median abs ln(pred/meas)", "median pred/meas"], rows), "",
             f"Energy: board power {power:.2f} W (median over the 15 of (energy - dynamic) / latency; dynamic "
             f"{pj_mac} pJ/MAC, {pj_byte} pJ/byte, Horowitz ISSCC 2014); each energy predicted with a board "
             f"power and a "
             f"latency fitted without it: median |ln(pred/meas)| {median_abs_ln_error(e_pred, e_meas):.3f}; the old "
             f"profiles' dynamic-only energy would be "
             f"{float(np.median(_energy(data, meas, 0.0, pj_mac, pj_byte, 4) / e_meas)):.2g}x "
             f"the measured; measured energy / latency = "
             f"{np.min(e_meas / meas / 1e3):.2f}-{np.max(e_meas / meas / 1e3):.2f} W.",
             ""]
    how = f"Fitted by bench/fit_profiles.py (robust regression in log space, classes sharing numbers) to {src}"
    rf = res.model.roofline_numbers()
    prof = DeviceProfile(
        name="jetson-tx2", runtime="TensorRT via torch2trt with default settings (FP32), batch 1 (HW-NAS-Bench "
                                   "dev/proj_edgegpu/EdgeGPU_Benchmark.py)",
        description="NVIDIA Jetson TX2 (256-core Pascal GPU), as HW-NAS-Bench timed it; validated on 15 values only",
        dtype="float32", energy_pj_per_mac=pj_mac, energy_pj_per_byte=pj_byte,
        memory_bytes=8 * 1024**3, board_power_w=round(power, 4),
        opmodel=res.model, validation=[val], **rf,
        sources={**res.model.roofline_sources(how),
                 "memory_bytes": "NVIDIA Jetson TX2 module: 8 GB LPDDR4 (NVIDIA Jetson TX2 data sheet)",
                 "board_power_w": f"Median over the 15 energies of {src} of (energy - dynamic energy) / latency; "
                                  "HW-NAS-Bench measures whole-board VDD_IN power x time "
                                  "(dev/proj_edgegpu/jetsonTX2Power.py)",
                 "energy_pj_per_mac": "Not measured: Horowitz, ISSCC 2014, 45 nm FP32 multiply 3.7 pJ + add 0.9 pJ",
                 "energy_pj_per_byte": "Not measured: Horowitz, ISSCC 2014, 32-bit DRAM access 640 pJ = 160 pJ/byte"})
    nano_val = _val("HW-NAS-Bench's 15 Jetson TX2 values: a DIFFERENT, faster Jetson, shown as a warning", src, 0,
                    nano_pred, meas, macs, note=f"this profile predicts {float(np.median(nano_pred / meas)):.2g}x the "
                                                "TX2's measured time: datasheet peaks are far from what small networks "
                                                "attain; prefer jetson-tx2, or fit your own with nas hardware "
                                                "probe/fit")
    return prof, lines + [f"jetson-nano (unchanged datasheet roofline, no Jetson Nano measurements available "
                          f"offline) on "
                          f"these TX2 values: tau {nano_val.tau:.3f}, median pred/meas "
                          f"{float(np.median(nano_pred / meas)):.3g}.", ""], nano_val


# ------------------------------------------------------------------------------------- cortex-m7
MLPERF = "MLPerf Tiny closed results (mlcommons/tiny_results_v1.0 c7761cf and v1.1 c32ef94, Apache-2.0)"


def fit_cortex_m7() -> tuple[DeviceProfile, list[str]]:
    st = P.mlperf_results("MLPerf Tiny v1.0", "STMicroelectronics", "NUCLEO-H7A3ZI-Q")
    krai = P.mlperf_results("MLPerf Tiny v1.1", "Krai", "NUCLEO-H7A3ZI-Q_X-CUBE-AI-7.3")
    kw = {"groups": CONV_MAC_GROUPS, "saturation": False, "memory": False, "shared_overhead": True,
          "bytes_per_element": 1}
    res = fit_opmodel([d.layers for d in st], [d.latency_ms for d in st], **kw)  # type: ignore[arg-type]
    meas, kmeas = np.array([d.latency_ms for d in st]), np.array([d.latency_ms for d in krai])
    kpred = np.array([res.model.network_ms(d.layers, 1) for d in krai])
    loo = _loo(st, **kw)
    with_e = [d for d in st if d.energy_uj]
    pj_mac, pj_byte = 0.23, 1.25  # the profile's cited int8 MAC and SRAM access energies (Horowitz, ISSCC 2014)
    power = _power(with_e, np.array([d.latency_ms for d in with_e]), np.array([d.energy_uj for d in with_e]),
                   pj_mac, pj_byte, 1)
    ke = [d for d in krai if d.energy_uj]
    ke_pred = _energy(ke, np.array([res.model.network_ms(d.layers, 1) for d in ke]), power, pj_mac, pj_byte, 1)
    ke_meas = np.array([d.energy_uj for d in ke], dtype=float)
    names = [d.group for d in st]
    vals = [_val("the 4 fitted networks re-measured by another submitter (Krai, MLPerf Tiny v1.1, same board and "
                 "X-CUBE-AI 7.3.0)", MLPERF, 4, kpred, kmeas, [d.macs for d in krai],
                 note="tells that the runtime's timings repeat, not that the model generalises to other networks"),
            _val("leave-one-out over the 4 fitted networks", MLPERF, 3, loo, meas, [d.macs for d in st],
                 note="; ".join(f"{n}: {p:.3g} ms predicted, {m:.3g} measured" for n, p, m in zip(names, loo, meas,
                                                                                                  strict=True)))]
    rows = [[d.group, f"{d.macs / 1e6:.2f}", f"{m:.3g}", f"{p:.3g}", f"{lp:.3g}", f"{km:.3g}", f"{kp:.3g}"]
            for d, m, p, lp, km, kp in zip(st, meas, res.predicted_ms, loo, kmeas, kpred, strict=True)]
    ke_lat = np.array([d.latency_ms for d in ke])
    dynamic_share = float(np.median(_energy(ke, ke_lat, 0.0, pj_mac, pj_byte, 1) / ke_meas))
    lines = ["#### cortex-m7: STM32H7A3 (Cortex-M7 @ 280 MHz), X-CUBE-AI 7.3.0, int8 (MLPerf Tiny)", "",
             table(["network", "MMACs", "ST v1.0 measured ms (fit)", "in-fit ms", "leave-one-out ms",
                    "Krai v1.1 measured ms", "predicted ms"], rows), "",
             f"Energy: board power {power * 1e3:.1f} mW (median over ST's {len(with_e)} energy results of (energy - "
             f"dynamic) / latency; dynamic {pj_mac} pJ/MAC, {pj_byte} pJ/byte); Krai's {len(ke)} energy results "
             f"predicted with it: median |ln(pred/meas)| {median_abs_ln_error(ke_pred, ke_meas):.3f}; dynamic-only "
             f"energy (the old profile) would be {dynamic_share:.2g}x "
             "the measured.", ""]
    how = (f"Fitted by bench/fit_profiles.py (robust regression in log space; dense convolutions apart, every "
           f"other MAC "
           f"class sharing one throughput, one per-call overhead, no memory term) to the 4 MLPerf Tiny v1.0 closed "
           f"results of STMicroelectronics on NUCLEO-H7A3ZI-Q with X-CUBE-AI 7.3.0 ({MLPERF}): ResNet-8, DS-CNN, "
           "MobileNetV1-0.25, FC autoencoder, architectures from mlcommons/tiny benchmark/training")
    base = get_device(str(shipped_profile_path("cortex-m7")))
    rf = res.model.roofline_numbers()
    prof = base.model_copy(update={
        "description": "STM32H7A3ZI (Cortex-M7 @ 280 MHz, 1.19 MB SRAM) on NUCLEO-H7A3ZI-Q; validated on 4 networks "
                       "only",
        "runtime": "X-CUBE-AI 7.3.0, int8 (TensorFlow int8 quantization), batch 1 (MLPerf Tiny v1.0 system "
                   "description)",
        "opmodel": res.model, "memory_bytes": 1.19e6, "board_power_w": round(power, 6), "validation": vals, **rf,
        "sources": {**base.sources, **res.model.roofline_sources(how),
                    "memory_bytes": "MLPerf Tiny v1.0 system description of NUCLEO-H7A3ZI-Q: SoC memory 1.19 MB RAM",
                    "board_power_w": "Median over the energy-mode results of the same submission (KWS, VWW, AD; "
                                     f"{MLPERF}, EEMBC EnergyRunner) of (energy - dynamic energy) / latency"}})
    return prof, lines


# ------------------------------------------------------------------------------------------ all
def report(write: bool = False) -> str:
    lines = ["### c. Shipped profiles: validation against published measurements", ""]
    rpi4, l1 = fit_rpi4()
    tx2, l2, nano_val = fit_tx2()
    m7, l3 = fit_cortex_m7()
    nano = get_device(str(shipped_profile_path("jetson-nano")))
    nano = nano.model_copy(update={
        "runtime": "TensorRT FP16 assumed by its datasheet numbers; not measured",
        "board_power_w": 10.0, "validation": [nano_val],
        "sources": {**nano.sources, "board_power_w": "Upper bound, not measured: the Jetson Nano module's 10 W power "
                                                     "mode (NVIDIA Jetson Nano module data sheet DA_09366)"}})
    lines += l1 + l2 + l3
    summary = []
    for p in (rpi4, tx2, m7, nano):
        for v in p.validation:
            summary.append([p.name, v.data, v.n_fit, v.n_test,
                            "-" if v.tau is None else f"{v.tau:.3f}", f"{v.median_abs_ln_error:.3f}",
                            "-" if v.tau_flops is None else f"{v.tau_flops:.3f}"])
    lines += ["#### Validation records written into the profiles (shown by `nas hardware profiles`)", "",
              table(["profile", "measurements", "n fit", "n test", "tau", "median abs ln(pred/meas)", "tau(FLOPs)"],
                    summary), ""]
    if write:
        for p in (rpi4, tx2, m7, nano):
            assert not p.uncited(), (p.name, p.uncited())
            (_SHIPPED / f"{p.name}.toml").write_text(p.to_toml())
        lines.append(f"Wrote {', '.join(p.name for p in (rpi4, tx2, m7, nano))} to {_SHIPPED}.")
    return "\n".join(lines)


if __name__ == "__main__":
    print(report(write="--write" in sys.argv))
