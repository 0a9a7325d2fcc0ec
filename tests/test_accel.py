"""The trainer on each device: the CPU path unchanged, the CUDA plan chosen right and carried from
the study to the loop, augmentation on tensors, workers placed on GPUs. CUDA runs skip without one."""

from __future__ import annotations

import pytest
import torch
from conftest import nas_cli
from torch.nn import functional as F

from nas.search import create_study, load_context, make_spec
from objectives import TrainConfig, load_dataset, train_spec, worker_devices
from objectives.train import augment_batch, device_plan
from search_spaces import get_space, sample_spec
from storage import Store

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
TINY = {"max_depth": 1, "widths": (8,), "kernels": (3,), "hidden": (0,), "rank_ratios": (1.0,)}


# ------------------------------------------------------------------------------------ device plan
def test_the_cpu_trains_in_fp32_whatever_the_amp_setting():
    for amp in ("auto", "off", "bf16", "fp16"):
        plan = device_plan("cpu", amp)
        assert (plan.precision, plan.grad_scaler, plan.channels_last, plan.pin_memory, plan.cudnn_benchmark) == \
               ("fp32", False, False, False, False)


@pytest.mark.parametrize("amp, bf16, precision, scaler", [
    ("auto", True, "bf16", False),   # Ampere and later: bf16 needs no loss scaling
    ("auto", False, "fp16", True),   # older GPUs: fp16 with a grad scaler
    ("fp16", True, "fp16", True),
    ("bf16", True, "bf16", False),
    ("off", True, "fp32", False),
])
def test_cuda_gets_mixed_precision_channels_last_pinned_memory_and_autotuning(amp, bf16, precision, scaler):
    plan = device_plan(torch.device("cuda:1"), amp, bf16_supported=bf16)
    assert (plan.precision, plan.grad_scaler) == (precision, scaler)
    assert plan.channels_last and plan.pin_memory and plan.cudnn_benchmark
    assert plan.device == torch.device("cuda:1")


def test_impossible_precisions_are_refused_in_one_line():
    with pytest.raises(ValueError, match="bf16 is not supported on cuda.*accepted here: auto, off, fp16"):
        device_plan("cuda", "bf16", bf16_supported=False)
    with pytest.raises(ValueError, match="accepted: auto, off, bf16, fp16"):
        device_plan("cpu", "fp8")
    with pytest.raises(ValueError, match="amp must be one of"):
        TrainConfig(amp="half")
    with pytest.raises(ValueError, match="augment must be one of"):
        TrainConfig(augment="mixup")


def test_on_the_cpu_the_amp_setting_changes_nothing_in_training():
    data = load_dataset("digits", seed=0)
    arch = sample_spec(get_space("plain", input_shape=data.input_shape, **TINY), seed=1)
    runs = [train_spec(arch, data, TrainConfig(epochs=2, device="cpu", threads=1, amp=amp)) for amp in ("off", "fp16")]
    assert runs[0].curve == runs[1].curve
    assert all(torch.equal(runs[0].state_dict[k], runs[1].state_dict[k]) for k in runs[0].state_dict)


# ------------------------------------------------------------------------------------ augmentation
def test_crop_flip_shifts_and_flips_each_image_within_the_padding():
    x = torch.arange(2 * 3 * 16 * 16, dtype=torch.float32).reshape(2, 3, 16, 16) + 1  # no zero pixel
    out = augment_batch(x, torch.Generator().manual_seed(0), "crop-flip")
    assert out.shape == x.shape
    pad = 2  # 16 // 8
    padded = F.pad(x, (pad, pad, pad, pad))
    for i in range(len(x)):  # each output is one of the (2 pad + 1)^2 crops of its own image, maybe flipped
        crops = [padded[i, :, dy:dy + 16, dx:dx + 16] for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)]
        assert any(torch.equal(out[i], c) or torch.equal(out[i], c.flip(-1)) for c in crops)
    many = augment_batch(x.repeat(32, 1, 1, 1), torch.Generator().manual_seed(1), "crop-flip")
    assert len({tuple(m.flatten()[:40].tolist()) for m in many}) > 8  # examples get different shifts


def test_augmentation_is_seeded_and_none_is_the_identity():
    x = torch.randn(8, 1, 28, 28)
    a = augment_batch(x, torch.Generator().manual_seed(3), "crop-flip")
    b = augment_batch(x, torch.Generator().manual_seed(3), "crop-flip")
    c = augment_batch(x, torch.Generator().manual_seed(4), "crop-flip")
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert augment_batch(x, torch.Generator(), "none") is x


def test_training_with_augmentation_differs_and_is_reproducible():
    data = load_dataset("digits", seed=0)
    arch = sample_spec(get_space("plain", input_shape=data.input_shape, **TINY), seed=1)
    plain = train_spec(arch, data, TrainConfig(epochs=1, device="cpu", threads=1))
    aug = [train_spec(arch, data, TrainConfig(epochs=1, device="cpu", threads=1, augment="crop-flip"))
           for _ in range(2)]
    assert aug[0].curve == aug[1].curve
    assert not all(torch.equal(plain.state_dict[k], aug[0].state_dict[k]) for k in plain.state_dict)


# ------------------------------------------------------------------------------------ the study carries it
def test_the_study_decides_augmentation_by_its_data_and_carries_amp_to_the_loop(tmp_path):
    digits = make_spec(name="d", space="plain", data="digits", budget="params<=6k", amp="fp16")
    cifar = make_spec(name="c", space="plain", data=f"cifar10:{tmp_path}", budget="params<=6k")
    assert (digits.augmentation, cifar.augmentation) == ("none", "crop-flip")
    assert (digits.train_config().amp, digits.train_config().augment) == ("fp16", "none")
    assert cifar.train_config().augment == "crop-flip"
    off = make_spec(name="c", space="plain", data=f"cifar10:{tmp_path}", budget="params<=6k",
                    fidelity={"augment": "none"})
    assert off.train_config().augment == "none"
    # Studies without augmentation keep the evaluation key they had before the setting existed,
    # so stored evaluations are still reused; with it, the key differs.
    assert "augment" not in digits.fidelity_dict() and cifar.fidelity_dict()["augment"] == "crop-flip"
    assert off.fidelity_key != cifar.fidelity_key


def test_a_worker_placed_on_a_device_trains_there_with_the_studys_settings(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'a.db'}")
    try:
        create_study(make_spec(name="a", space="plain", data="digits", budget="params<=12k", amp="bf16",
                               device="auto", space_options=TINY, fidelity={"augment": "crop-flip"}), store)
        ctx = load_context("a", store, threads=1, device="cpu")
        assert (ctx.train_config.device, ctx.train_config.amp, ctx.train_config.augment) == ("cpu", "bf16", "crop-flip")
        assert ctx.data.x_train.device == torch.device("cpu")
    finally:
        store.close()


# ------------------------------------------------------------------------------------ workers on GPUs
def test_workers_are_spread_over_gpus_at_most_n_per_device():
    assert worker_devices(3, cuda_count=0) == [None, None, None]  # CPU: the study's device, as before
    assert worker_devices(4, per_device=2, cuda_count=2) == ["cuda:0", "cuda:0", "cuda:1", "cuda:1"]
    assert worker_devices(2, cuda_count=2) == ["cuda:0", "cuda:1"]
    assert worker_devices(2, device="cpu", cuda_count=2) == [None, None]
    with pytest.raises(ValueError, match="at most 4, or raise --workers-per-device") as many:
        worker_devices(5, per_device=2, cuda_count=2)
    assert many.value.field == "workers"
    with pytest.raises(ValueError, match="at least 1"):
        worker_devices(1, per_device=0, cuda_count=1)


def test_device_options_are_checked_before_anything_runs(tmp_path):
    url = f"sqlite:///{tmp_path / 'c.db'}"
    code, _, err = nas_cli("study", "create", "c", "--space", "plain", "--budget", "params<=6k", "--amp", "fp8",
                    "--storage", url)
    assert code == 2 and "amp" in err and "fp16" in err and len(err.strip().splitlines()) == 1
    assert nas_cli("study", "create", "c", "--space", "plain", "--budget", "params<=12k", "--augment", "crop-flip",
               "--option", "widths=(8,)", "--option", "max_depth=1", "--epochs", "1", "--storage", url)[0] == 0
    code, _, err = nas_cli("study", "run", "c", "--workers-per-device", "0", "--storage", url)
    assert code == 2 and "--workers-per-device" in err and len(err.strip().splitlines()) == 1
    if not torch.cuda.is_available():
        code, _, err = nas_cli("worker", "c", "--device", "cuda:3", "--until-done", "--storage", url)
        assert code == 2 and "not on this host" in err and "accepted: auto, cpu" in err
    store = Store(url, mode="existing")
    try:
        assert store.get_study("c").target_trials == make_spec(name="x", space="plain", budget="params<=6k").trials
        assert not store.optuna.get_all_trials(store.optuna.get_study_id_from_name("c"))
    finally:
        store.close()


# ------------------------------------------------------------------------------------ on a GPU
@CUDA
def test_on_cuda_training_runs_in_mixed_precision_and_keeps_fp32_weights():
    data = load_dataset("digits", seed=0)
    arch = sample_spec(get_space("plain", input_shape=data.input_shape, **TINY), seed=1)
    res = train_spec(arch, data, TrainConfig(epochs=2, device="cuda", amp="auto"))
    assert res.val_accuracy > 0.3
    assert all(v.dtype in (torch.float32, torch.int64) for v in res.state_dict.values())
    assert all(v.is_contiguous() for v in res.state_dict.values())  # exported weights in the usual layout
