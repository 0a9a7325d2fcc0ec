"""The trainer on real data (sklearn digits): accuracy, determinism, divergence, limits, threads."""

from __future__ import annotations

import pytest
import torch

from objectives import (
    Dataset,
    ThreadGovernor,
    TrainConfig,
    TrainingError,
    evaluate,
    load_dataset,
    threads_per_worker,
    train_model,
    train_spec,
)
from objectives.train import usable_cpus
from search_spaces import ArchSpec, Block, Stage, Stem, build_model, get_space, sample_spec

PLAIN = ArchSpec(
    stem=Stem(16),
    stages=(Stage((Block("conv", 16),)), Stage((Block("conv", 32, stride=2),)), Stage((Block("conv", 64, stride=2),))),
    family="plain",
)
RESNET = ArchSpec(
    stem=Stem(16),
    stages=(Stage((Block("basic", 16, 16),)), Stage((Block("basic", 32, 32, stride=2),))),
    family="resnet",
)


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("digits", seed=0)


def _same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("spec", [PLAIN, RESNET], ids=["plain", "resnet"])
def test_small_cnn_learns_digits(digits: Dataset, spec: ArchSpec) -> None:
    result = train_spec(spec, digits, TrainConfig(epochs=6, device="cpu"), evaluate_test=True)
    assert result.val_accuracy > 0.85
    assert result.test_accuracy is not None and result.test_accuracy > 0.85
    assert result.epochs_run == 6 and len(result.curve) == 6 and not result.timed_out
    assert result.curve[-1] == result.val_accuracy and result.curve[-1] > result.curve[0]
    assert result.steps == 6 * -(-digits.sizes["train"] // 128)
    assert 0 < result.train_loss < 1.0 and result.seconds > 0


def test_sampled_space_spec_trains(digits: Dataset) -> None:
    spec = sample_spec(get_space("plain", input_shape=digits.input_shape), seed=1)
    result = train_spec(spec, digits, TrainConfig(epochs=5, device="cpu"))
    assert result.val_accuracy > 0.85


def test_same_seed_same_result_other_seed_other_weights(digits: Dataset) -> None:
    config = TrainConfig(epochs=2, seed=7, device="cpu")
    a = train_spec(PLAIN, digits, config)
    b = train_spec(PLAIN, digits, config)
    assert a.val_accuracy == b.val_accuracy and a.curve == b.curve and a.train_loss == b.train_loss
    assert a.state_dict is not None and b.state_dict is not None
    assert _same_weights(a.state_dict, b.state_dict)
    c = train_spec(PLAIN, digits, TrainConfig(epochs=2, seed=8, device="cpu"))
    assert c.state_dict is not None and not _same_weights(a.state_dict, c.state_dict)


def test_training_leaves_the_callers_random_state_alone(digits: Dataset) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train_spec(PLAIN, digits, TrainConfig(epochs=1, device="cpu"))
    assert torch.equal(torch.rand(3), expected)


def test_returned_weights_reproduce_the_accuracy(digits: Dataset) -> None:
    result = train_spec(RESNET, digits, TrainConfig(epochs=2, device="cpu"))
    assert result.state_dict is not None
    assert all(t.device.type == "cpu" for t in result.state_dict.values())
    model = build_model(RESNET, digits.input_shape, digits.num_classes)
    model.load_state_dict(result.state_dict)
    assert evaluate(model, digits.x_val, digits.y_val) == result.val_accuracy
    assert model.training  # evaluate() restores the mode it found


def test_divergence_raises_training_error(digits: Dataset) -> None:
    with pytest.raises(TrainingError) as info:
        train_spec(PLAIN, digits, TrainConfig(epochs=3, lr=1e6, device="cpu"))
    assert "non-finite loss at epoch" in info.value.reason and "step" in info.value.reason
    assert "\n" not in str(info.value)


def test_max_seconds_stops_early_and_is_recorded(digits: Dataset) -> None:
    result = train_spec(PLAIN, digits, TrainConfig(epochs=200, max_seconds=1e-3, device="cpu"))
    assert result.timed_out
    assert result.epochs_run == 1 and len(result.curve) == 1
    assert result.steps < -(-digits.sizes["train"] // 128)  # stopped inside the first epoch
    assert 0.0 <= result.val_accuracy <= 1.0


def test_on_epoch_sees_every_epoch_and_its_exception_propagates(digits: Dataset) -> None:
    seen: list[tuple[int, float]] = []

    class Stop(Exception):
        pass

    def on_epoch(epoch: int, acc: float) -> None:
        seen.append((epoch, acc))
        if epoch == 2:
            raise Stop

    before = torch.get_num_threads()
    with pytest.raises(Stop):
        train_spec(PLAIN, digits, TrainConfig(epochs=5, threads=1, device="cpu"), on_epoch=on_epoch)
    assert [e for e, _ in seen] == [1, 2] and all(0 <= a <= 1 for _, a in seen)
    assert torch.get_num_threads() == before


def test_threads_apply_during_training_and_are_restored(digits: Dataset) -> None:
    before = torch.get_num_threads()
    during: list[int] = []
    model = build_model(PLAIN, digits.input_shape, digits.num_classes)
    train_model(model, digits, TrainConfig(epochs=1, threads=1, device="cpu"),
                on_epoch=lambda epoch, acc: during.append(torch.get_num_threads()))
    assert during == [1]
    assert torch.get_num_threads() == before


class _Machine:
    """A fake clock whose steps cost ``cost[threads]`` seconds at the thread count in use."""

    def __init__(self, cost: dict[int, float], start: int) -> None:
        self.cost, self.now, self.threads, self.switches = dict(cost), 0.0, start, 0

    def clock(self) -> float:
        return self.now

    def set_threads(self, n: int) -> None:
        self.threads, self.switches = n, self.switches + 1

    def run(self, governor: ThreadGovernor, steps: int) -> list[int]:
        used = []
        for _ in range(steps):
            with governor.step():
                used.append(self.threads)
                self.now += self.cost[self.threads]
        return used


def _governor(machine: _Machine, most: int = 2) -> ThreadGovernor:
    return ThreadGovernor(most, clock=machine.clock, set_threads=machine.set_threads, recheck_seconds=10.0,
                          recheck_steps=5)


def test_a_contended_or_small_network_trains_at_one_thread_after_the_probe() -> None:
    machine = _Machine({1: 0.01, 2: 0.3}, start=2)  # a second thread waits for a core another process holds
    governor = _governor(machine)
    used = machine.run(governor, 40)
    assert governor.choices[0] == 1
    probe = 2 + 6  # warm-up at 2 threads, then 3 steps at each count, interleaved
    assert used[:probe] == [2, 2, 1, 2, 1, 2, 1, 2]
    assert set(used[probe:]) == {1}, "after the probe every step runs at 1 thread"
    assert governor.steps_at == {1: used.count(1), 2: used.count(2)} and sum(governor.steps_at.values()) == 40


def test_a_network_that_gains_from_threads_keeps_them() -> None:
    machine = _Machine({1: 0.2, 2: 0.11}, start=2)
    governor = _governor(machine)
    used = machine.run(governor, 30)
    assert governor.choices[0] == 2 and set(used[8:]) == {2}
    # A gain below the threshold (1.15x) is not worth a second thread.
    machine = _Machine({1: 0.2, 2: 0.19}, start=2)
    governor = _governor(machine)
    assert set(machine.run(governor, 30)[8:]) == {1}


def test_the_choice_follows_the_load_as_it_changes() -> None:
    machine = _Machine({1: 0.2, 2: 0.1}, start=2)  # quiet: 2 threads pay
    governor = _governor(machine)
    machine.run(governor, 20)
    assert governor.choices == [2]
    machine.cost = {1: 0.2, 2: 3.0}  # another process starts
    used = machine.run(governor, 200)
    assert governor.choices[:2] == [2, 1], "the next probe (after 10 s) sees the competitor"
    assert used[-20:] == [1] * 20 or used[-20:].count(2) <= 3  # only probes run at 2 threads
    machine.cost = {1: 0.2, 2: 0.1}  # the competitor ends
    machine.run(governor, 300)
    assert governor.choices[-1] == 2
    # Probes are rare: each costs 3 steps at the slower count and comes after >= 10 s of steps.
    assert len(governor.choices) <= 1 + machine.now / 10


def test_one_thread_is_never_switched() -> None:
    machine = _Machine({1: 0.01}, start=1)
    governor = _governor(machine, most=1)
    assert machine.run(governor, 20) == [1] * 20
    assert machine.switches == 0 and governor.choices == [] and governor.steps_at == {1: 20}


def test_training_reports_its_steps_per_thread_count_and_restores_threads(digits: Dataset) -> None:
    before = torch.get_num_threads()
    model = build_model(PLAIN, digits.input_shape, digits.num_classes)
    adaptive = train_model(model, digits, TrainConfig(epochs=1, threads=2, device="cpu"))
    assert sum(adaptive.thread_steps.values()) == adaptive.steps and set(adaptive.thread_steps) <= {1, 2}
    assert adaptive.thread_steps.get(1, 0) >= 3  # the probe ran
    fixed = train_model(build_model(PLAIN, digits.input_shape, digits.num_classes), digits,
                        TrainConfig(epochs=1, threads=2, device="cpu", adapt_threads=False))
    assert fixed.thread_steps == {2: fixed.steps}
    assert torch.get_num_threads() == before


def test_threads_per_worker_never_oversubscribes() -> None:
    cores = usable_cpus()  # affinity and cgroup quota: tests/test_reliability.py
    assert threads_per_worker(1) == cores
    assert threads_per_worker(cores * 4) == 1
    for workers in range(1, 9):
        assert workers * threads_per_worker(workers) <= max(cores, workers)
    with pytest.raises(ValueError, match="workers"):
        threads_per_worker(0)


@pytest.mark.parametrize("bad", [{"epochs": 0}, {"lr": -1.0}, {"batch_size": 1.5}, {"label_smoothing": 1.0},
                                 {"threads": 0}, {"max_seconds": 0}])
def test_bad_config_is_one_line_value_error(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError) as info:
        TrainConfig(**bad)  # type: ignore[arg-type]
    assert next(iter(bad)) in str(info.value) and "\n" not in str(info.value)


def test_validating_only_where_it_decides_gives_the_same_network_and_accuracy(digits):
    """Issue 18 item 4: skipping the validation passes of epochs nobody looks at changes nothing
    a search compares (final accuracy, weights); only the curve shows which epochs were validated."""
    cfg = TrainConfig(epochs=4, batch_size=64, lr=0.05, seed=2, device="cpu")
    every = train_spec(RESNET, digits, cfg)
    seen: list[tuple[int, float]] = []
    some = train_spec(RESNET, digits, cfg, validate_epochs={2}, on_epoch=lambda e, a: seen.append((e, a)))
    assert some.val_accuracy == every.val_accuracy
    assert _same_weights(some.state_dict, every.state_dict)
    assert some.curve == [None, every.curve[1], None, every.curve[3]]  # the rung and the last epoch
    assert [e for e, _ in seen] == [1, 2, 3, 4] and seen[1][1] == every.curve[1]
    assert seen[0][1] != seen[0][1]  # nan: epoch 1 was not validated
