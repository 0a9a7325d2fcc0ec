"""Datasets: real on-disk formats (IDX, CIFAR-10 pickles, npz) written small, and sklearn digits."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from objectives import DataError, Dataset, load_dataset
from objectives.train import DATA_SOURCES, describe_sources


# ----------------------------------------------------------------------------- writers
def _images(n: int, h: int, w: int, c: int | None = None, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (n, h, w) if c is None else (n, h, w, c)
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def _labels(n: int, k: int) -> np.ndarray:
    return (np.arange(n) % k).astype(np.uint8)


def _idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file: magic 0x0000_08_<ndim>, big-endian uint32 dims, then uint8 data."""
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_idx(root: Path, parts: dict[str, bytes], gz: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, payload in parts.items():
        if gz:
            with gzip.open(root / f"{name}.gz", "wb") as f:
                f.write(payload)
        else:
            (root / name).write_bytes(payload)
    return root


def _mnist_like(root: Path, n_train: int = 60, n_test: int = 15, h: int = 6, w: int = 5, k: int = 3,
                gz: bool = True) -> tuple[Path, np.ndarray, np.ndarray]:
    x, y = _images(n_train, h, w), _labels(n_train, k)
    parts = {
        "train-images-idx3-ubyte": _idx_bytes(x),
        "train-labels-idx1-ubyte": _idx_bytes(y),
        "t10k-images-idx3-ubyte": _idx_bytes(_images(n_test, h, w, seed=1)),
        "t10k-labels-idx1-ubyte": _idx_bytes(_labels(n_test, k)),
    }
    return _write_idx(root, parts, gz), x, y


def _cifar_batch(n: int, seed: int) -> dict[bytes, object]:
    """A batch exactly as in cifar-10-python.tar.gz: N x 3072 uint8, R then G then B planes."""
    rng = np.random.default_rng(seed)
    planes = [rng.integers(lo, lo + 40, size=(n, 1024), dtype=np.uint8) for lo in (200, 100, 0)]
    return {
        b"batch_label": f"batch {seed}".encode(),
        b"labels": [int(v) for v in np.arange(n) % 10],
        b"data": np.concatenate(planes, axis=1),
        b"filenames": [f"img_{seed}_{i}.png".encode() for i in range(n)],
    }


def _write_cifar(root: Path, n: int = 20, skip: str | None = None) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for seed, name in enumerate(names):
        if name != skip:
            with (folder / name).open("wb") as f:
                pickle.dump(_cifar_batch(n, seed), f, protocol=2)
    return root


def _one_line_error(source: str, **kwargs: object) -> str:
    with pytest.raises(DataError) as info:
        load_dataset(source, **kwargs)
    message = str(info.value)
    assert "\n" not in message and message
    return message


def _denormalise(data: Dataset, x: torch.Tensor) -> np.ndarray:
    mean = torch.tensor(data.mean).view(1, -1, 1, 1)
    std = torch.tensor(data.std).view(1, -1, 1, 1)
    return (x * std + mean).numpy()


# ----------------------------------------------------------------------------- digits
def test_digits_splits_partition_all_1797_images_stratified() -> None:
    data = load_dataset("digits", seed=0)
    assert data.input_shape == (1, 8, 8) and data.num_classes == 10
    assert sum(data.sizes.values()) == 1797
    assert data.sizes["test"] == round(0.2 * 1797)
    assert data.sizes["val"] == round(0.15 * (1797 - data.sizes["test"]))
    assert data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.int64
    assert tuple(data.x_val.shape[1:]) == (1, 8, 8)
    # Stratified: each class's share of the validation set is within one example of its share overall.
    y_all = torch.cat([data.y_train, data.y_val, data.y_test])
    expected = torch.bincount(y_all, minlength=10).double() * data.sizes["val"] / 1797
    assert (torch.bincount(data.y_val, minlength=10).double() - expected).abs().max() <= 1.0


def test_digits_normalised_with_training_statistics() -> None:
    data = load_dataset("digits", seed=0)
    assert abs(float(data.x_train.mean())) < 1e-4
    assert abs(float(data.x_train.std()) - 1.0) < 1e-2
    assert len(data.mean) == len(data.std) == 1 and 0 < data.mean[0] < 1 and data.std[0] > 0
    # Validation data use the training statistics, so they are close to but not exactly standardised.
    assert abs(float(data.x_val.mean())) < 0.2


def test_digits_same_seed_same_splits_other_seed_other_splits() -> None:
    a, b, c = load_dataset("digits", seed=3), load_dataset("digits", seed=3), load_dataset("digits", seed=4)
    for name in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert not torch.equal(a.y_val, c.y_val)
    assert not torch.equal(a.x_test, c.x_test)


def test_train_fraction_shrinks_training_only_and_keeps_every_class() -> None:
    full = load_dataset("digits", seed=1)
    small = load_dataset("digits", seed=1, train_fraction=0.1)
    assert small.sizes["train"] == pytest.approx(0.1 * full.sizes["train"], abs=10)
    assert torch.equal(small.x_val, full.x_val) and torch.equal(small.y_test, full.y_test)
    assert set(small.y_train.tolist()) == set(range(10))
    assert small.mean == full.mean  # the same input scale at every fidelity
    tiny = load_dataset("digits", seed=1, train_fraction=0.001)
    assert set(tiny.y_train.tolist()) == set(range(10))


def test_dataset_to_and_repr() -> None:
    data = load_dataset("digits")
    assert data.to("cpu") is data
    text = repr(data)
    assert "digits" in text and "num_classes=10" in text and len(text) < 200


# ----------------------------------------------------------------------------- IDX
@pytest.mark.parametrize("gz", [True, False])
def test_idx_loads_images_and_labels(tmp_path: Path, gz: bool) -> None:
    root, x, y = _mnist_like(tmp_path / "mnist", gz=gz)
    data = load_dataset(f"idx:{root}", seed=0)
    assert data.input_shape == (1, 6, 5) and data.num_classes == 3
    assert data.sizes == {"train": 51, "val": 9, "test": 15}
    # Every training image round-trips to one of the file's images, with its label.
    label_of = {img.tobytes(): int(lab) for img, lab in zip(x, y, strict=True)}
    raw = np.rint(_denormalise(data, data.x_train) * 255).astype(np.uint8)
    assert [label_of[img[0].tobytes()] for img in raw] == data.y_train.tolist()


def test_idx_truncated_file(tmp_path: Path) -> None:
    root, _, _ = _mnist_like(tmp_path)
    path = root / "train-images-idx3-ubyte.gz"
    payload = gzip.decompress(path.read_bytes())
    with gzip.open(path, "wb") as f:
        f.write(payload[:-7])
    message = _one_line_error(f"idx:{root}")
    assert "train-images-idx3-ubyte.gz" in message and "truncated" in message


def test_idx_wrong_magic(tmp_path: Path) -> None:
    root, _, _ = _mnist_like(tmp_path)
    # A labels file where the images should be.
    _write_idx(root, {"train-images-idx3-ubyte": _idx_bytes(_labels(60, 3))})
    message = _one_line_error(f"idx:{root}")
    assert "magic" in message and "0x00000801" in message and "0x00000803" in message


def test_idx_image_label_count_mismatch(tmp_path: Path) -> None:
    root, _, _ = _mnist_like(tmp_path)
    _write_idx(root, {"train-labels-idx1-ubyte": _idx_bytes(_labels(59, 3))})
    message = _one_line_error(f"idx:{root}")
    assert "60 images but 59 labels" in message


def test_idx_missing_file_lists_expected_names(tmp_path: Path) -> None:
    root, _, _ = _mnist_like(tmp_path)
    (root / "t10k-labels-idx1-ubyte.gz").unlink()
    message = _one_line_error(f"idx:{root}")
    assert "missing t10k-labels-idx1-ubyte" in message and "train-images-idx3-ubyte" in message


def test_idx_not_gzip(tmp_path: Path) -> None:
    root, _, _ = _mnist_like(tmp_path)
    (root / "t10k-images-idx3-ubyte.gz").write_bytes(b"this is not gzip data")
    assert "t10k-images-idx3-ubyte.gz" in _one_line_error(f"idx:{root}")


# ----------------------------------------------------------------------------- CIFAR-10
def test_cifar10_batches_in_dir_or_parent(tmp_path: Path) -> None:
    root = _write_cifar(tmp_path)
    data = load_dataset(f"cifar10:{root}", seed=0)
    assert data.input_shape == (3, 32, 32) and data.num_classes == 10
    assert data.sizes == {"train": 85, "val": 15, "test": 20}
    # Planes are R, G, B in that order: the fixture's red plane is brightest, blue darkest.
    assert data.mean[0] > data.mean[1] > data.mean[2]
    assert 200 / 255 < data.mean[0] < 240 / 255
    inner = load_dataset(f"cifar10:{root / 'cifar-10-batches-py'}", seed=0)
    assert torch.equal(inner.x_train, data.x_train)


def test_cifar10_missing_batch(tmp_path: Path) -> None:
    root = _write_cifar(tmp_path, skip="data_batch_3")
    message = _one_line_error(f"cifar10:{root}")
    assert "missing data_batch_3" in message and "test_batch" in message and "data_batch_1" in message


def test_cifar10_pickle_cannot_run_code(tmp_path: Path) -> None:
    root = _write_cifar(tmp_path)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str, str]]:
            return (Path.write_text, (marker, "x"))  # type: ignore[return-value]

    with (root / "cifar-10-batches-py" / "test_batch").open("wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f, protocol=2)
    message = _one_line_error(f"cifar10:{root}")
    assert "test_batch" in message
    assert not marker.exists()


# ----------------------------------------------------------------------------- npz
def test_npz_three_layouts_give_the_same_tensors(tmp_path: Path) -> None:
    gray = _images(40, 7, 7)
    y = _labels(40, 4)
    layouts = {"nhw": gray, "nhwc": gray[..., None], "nchw_float": gray[:, None].astype(np.float64) / 255.0}
    loaded = {}
    for name, x in layouts.items():
        path = tmp_path / f"{name}.npz"
        np.savez(path, x_train=x, y_train=y)
        loaded[name] = load_dataset(f"npz:{path}", seed=5)
    for data in loaded.values():
        assert data.input_shape == (1, 7, 7) and data.num_classes == 4
        assert torch.allclose(data.x_train, loaded["nhw"].x_train, atol=1e-5)
        assert torch.equal(data.y_val, loaded["nhw"].y_val)


def test_npz_channels_last_rgb_and_given_test_split(tmp_path: Path) -> None:
    x = _images(30, 9, 11, c=3)
    x[..., 0] = 250  # red channel saturated
    path = tmp_path / "rgb.npz"
    np.savez_compressed(path, x_train=x, y_train=_labels(30, 3), x_test=x[:6], y_test=_labels(6, 3))
    data = load_dataset(f"npz:{path}")
    assert data.input_shape == (3, 9, 11)
    assert data.sizes["test"] == 6 and data.sizes["train"] + data.sizes["val"] == 30
    assert data.mean[0] == pytest.approx(250 / 255, abs=1e-6)


def test_npz_channels_first_and_no_test_split(tmp_path: Path) -> None:
    path = tmp_path / "chw.npz"
    np.savez(path, x_train=np.random.default_rng(0).normal(size=(50, 3, 8, 8)).astype(np.float32),
             y_train=np.arange(50) % 5)
    data = load_dataset(f"npz:{path}", test_fraction=0.2)
    assert data.input_shape == (3, 8, 8) and data.num_classes == 5
    assert data.sizes["test"] == 10 and sum(data.sizes.values()) == 50


def test_npz_missing_key_and_mismatched_lengths(tmp_path: Path) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, x_train=_images(10, 4, 4))
    message = _one_line_error(f"npz:{path}")
    assert "y_train" in message and "x_train" in message
    np.savez(path, x_train=_images(10, 4, 4), y_train=_labels(9, 2))
    assert "10 images but 9 labels" in _one_line_error(f"npz:{path}")
    np.savez(path, x_train=_images(10, 4, 4), y_train=_labels(10, 2), x_test=_images(3, 4, 4))
    assert "x_test" in _one_line_error(f"npz:{path}")


def test_npz_reloaded_after_the_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, x_train=_images(20, 4, 4), y_train=_labels(20, 2))
    first = load_dataset(f"npz:{path}")
    assert torch.equal(load_dataset(f"npz:{path}").x_train, first.x_train)
    np.savez(path, x_train=_images(30, 4, 4), y_train=_labels(30, 3))
    second = load_dataset(f"npz:{path}")
    assert second.num_classes == 3 and second.sizes["train"] + second.sizes["val"] + second.sizes["test"] == 30


# ----------------------------------------------------------------------------- bad requests
def test_unknown_source_lists_accepted_forms() -> None:
    message = _one_line_error("mnist")
    assert message == "unknown data source 'mnist'; accepted: digits, idx:DIR, cifar10:DIR, npz:FILE"
    assert "accepted" in _one_line_error("idx:")
    assert set(DATA_SOURCES) == {"digits", "idx:DIR", "cifar10:DIR", "npz:FILE"}
    assert all(form.split(":")[0] in describe_sources() for form in DATA_SOURCES)


def test_missing_paths_and_bad_fractions() -> None:
    assert "no such file" in _one_line_error("npz:/nonexistent/data.npz")
    assert "not a directory" in _one_line_error("idx:/nonexistent/mnist")
    assert "missing data_batch_1" in _one_line_error("cifar10:/nonexistent/cifar")
    assert "val_fraction" in _one_line_error("digits", val_fraction=1.5)
    assert "train_fraction" in _one_line_error("digits", train_fraction=0)
