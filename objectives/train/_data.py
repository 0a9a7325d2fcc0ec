"""Datasets as tensors: ``load_dataset(source) -> Dataset`` with seeded, stratified splits.

A *source* is a short string, so a study spec can store it and every worker can load the
same data:

- ``digits``: scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes). It has
  no official test split, so train/val/test are all drawn from it.
- ``idx:DIR``: MNIST-family IDX files (MNIST, Fashion-MNIST, KMNIST, ...) in ``DIR``.
- ``cifar10:DIR``: the CIFAR-10 "python version" pickle batches in ``DIR`` (or in
  ``DIR/cifar-10-batches-py``).
- ``npz:FILE``: a NumPy archive with ``x_train``, ``y_train`` and optionally ``x_test``,
  ``y_test``.

Splits are stratified by class and fixed by ``seed``: the same seed gives the same splits in
every process, a different seed different ones. Each split draws from its own random stream,
so changing ``train_fraction`` (the low-fidelity knob) never changes the validation or test
sets. Pixels are normalised per channel with the mean and standard deviation of the training
split (before ``train_fraction`` subsampling, so all fidelities see the same input scale);
``Dataset.mean``/``Dataset.std`` record them for inference and export.

Raw arrays are cached per source in the process (keyed also on the files' size and mtime), so
repeated trials in one worker read the files once.
"""

from __future__ import annotations

import functools
import gzip
import os
import pickle
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from search_spaces import InputError

__all__ = ["DATA_SOURCES", "DataError", "Dataset", "check_source", "describe_sources", "load_dataset"]

DATA_SOURCES: tuple[str, ...] = ("digits", "idx:DIR", "cifar10:DIR", "npz:FILE")
"""The accepted forms of a data source string."""

_ACCEPTED = ", ".join(DATA_SOURCES)

_IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
_IDX_IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
_IDX_LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dimension

_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST = "test_batch"
_CIFAR_SUBDIR = "cifar-10-batches-py"


class DataError(InputError):
    """Missing, truncated, malformed or mismatched data, or an unknown source.

    The message is one line: which file or source, what is wrong, and what is accepted.
    """


def describe_sources() -> str:
    """Human-readable description of the accepted data sources, one per line."""
    return "\n".join([
        "digits        scikit-learn's bundled 8x8 digits (1797 images, 1x8x8, 10 classes); "
        "train/val/test split by seed",
        "idx:DIR       MNIST-family IDX files in DIR: train-images-idx3-ubyte[.gz], "
        "train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]",
        "cifar10:DIR   CIFAR-10 python pickles data_batch_1..5 and test_batch in DIR "
        f"or DIR/{_CIFAR_SUBDIR}",
        "npz:FILE      NumPy .npz with x_train, y_train (optional x_test, y_test); x as NxHxW, "
        "NxHxWxC or NxCxHxW, any numeric dtype (uint8 is scaled by 1/255)",
    ])


@dataclass(frozen=True, eq=False)
class Dataset:
    """A classification dataset held as tensors, split into train, validation and test.

    ``x_*`` are float32 ``N x C x H x W`` tensors normalised per channel with the training
    split's statistics (``mean``, ``std``, in the units of the raw data scaled to [0, 1] for
    uint8); ``y_*`` are int64 class indices.

    Example:
        >>> data = load_dataset("digits", seed=0)
        >>> data.input_shape, data.num_classes
        ((1, 8, 8), 10)
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    input_shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...] = field(default=())
    std: tuple[float, ...] = field(default=())

    @property
    def sizes(self) -> dict[str, int]:
        """Number of examples per split."""
        return {"train": len(self.y_train), "val": len(self.y_val), "test": len(self.y_test)}

    @property
    def device(self) -> torch.device:
        """Device the tensors live on."""
        return self.x_train.device

    def to(self, device: str | torch.device, *, pin_memory: bool = False, channels_last: bool = False) -> Dataset:
        """A copy with every tensor on ``device`` (``self`` when it is already there).

        ``pin_memory``: copy from page-locked host memory (a faster, asynchronous host-to-GPU
        copy); ``channels_last``: images in NHWC memory format."""
        device = torch.device(device)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        if self.x_train.device == device and self.x_train.is_contiguous(memory_format=fmt):
            return self

        def move(t: torch.Tensor) -> torch.Tensor:
            if pin_memory and t.device.type == "cpu" and device.type == "cuda":
                t = t.pin_memory()
            t = t.to(device, non_blocking=pin_memory)
            return t.contiguous(memory_format=fmt) if t.dim() == 4 else t

        moved: dict[str, Any] = {k: move(getattr(self, k))
                                 for k in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")}
        return replace(self, **moved)

    def resized(self, short_side: int) -> Dataset:
        """A copy with every image resized (bilinear, antialiased) so that its short side is
        ``short_side`` pixels, aspect kept; ``self`` when it is that size already. The
        normalisation statistics are those of the original training split."""
        _, h, w = self.input_shape
        size = (max(1, round(h * short_side / min(h, w))), max(1, round(w * short_side / min(h, w))))
        if size == (h, w):
            return self

        def resize(x: torch.Tensor) -> torch.Tensor:
            parts = [torch.nn.functional.interpolate(x[i:i + 4096], size=size, mode="bilinear", antialias=True,
                                                     align_corners=False) for i in range(0, len(x), 4096)]
            return torch.cat(parts) if parts else x.new_zeros((0, x.shape[1], *size))

        return replace(self, x_train=resize(self.x_train), x_val=resize(self.x_val), x_test=resize(self.x_test),
                       input_shape=(self.input_shape[0], *size))

    def __repr__(self) -> str:
        s = self.sizes
        return (f"Dataset({self.name!r}, input_shape={self.input_shape}, num_classes={self.num_classes}, "
                f"train={s['train']}, val={s['val']}, test={s['test']}, device={self.device})")


# ----------------------------------------------------------------------------- raw loaders
@dataclass(frozen=True, eq=False)
class _Raw:
    """Unsplit arrays as read: ``x`` is ``N x C x H x W`` (uint8 or float32), ``y`` int64."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray | None
    y_test: np.ndarray | None


def _readonly(*arrays: np.ndarray | None) -> None:
    for a in arrays:
        if a is not None:
            a.flags.writeable = False


def _signature(paths: list[Path]) -> tuple[tuple[str, int, int], ...]:
    """(path, size, mtime) of the files a source reads: part of the cache key."""
    out = []
    for p in paths:
        try:
            st = p.stat()
            out.append((str(p), st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((str(p), -1, -1))
    return tuple(out)


@functools.lru_cache(maxsize=8)
def _load_raw(kind: str, arg: str, signature: tuple[tuple[str, int, int], ...]) -> _Raw:
    """Read a source's arrays once per process (``signature`` invalidates on file changes)."""
    del signature  # only part of the cache key
    loader = {"digits": _load_digits, "idx": _load_idx, "cifar10": _load_cifar10, "npz": _load_npz}[kind]
    raw = loader(arg)
    _readonly(raw.x_train, raw.y_train, raw.x_test, raw.y_test)
    return raw


def _load_digits(_: str) -> _Raw:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None, :, :]
    return _Raw(x, d.target.astype(np.int64), None, None)


# IDX (http://yann.lecun.com/exdb/mnist/): magic = 0x00 0x00 <type> <ndim>, then ndim big-endian
# uint32 sizes, then the data in row-major order. Type 0x08 is unsigned byte.
def _idx_path(root: Path, name: str) -> Path | None:
    for candidate in (root / f"{name}.gz", root / name):
        if candidate.is_file():
            return candidate
    return None


def _read_idx(path: Path, magic: int) -> np.ndarray:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                buf = f.read()
        else:
            buf = path.read_bytes()
    except EOFError:
        raise DataError(f"{path}: gzip stream truncated; accepted: complete IDX files, optionally gzip-compressed"
                        ) from None
    except OSError as e:  # includes gzip.BadGzipFile
        raise DataError(f"{path}: cannot read ({e}); accepted: IDX files, optionally gzip-compressed") from None
    if len(buf) < 4:
        raise DataError(f"{path}: too short for an IDX header ({len(buf)} bytes); truncated file?")
    found = int.from_bytes(buf[:4], "big")
    if found != magic:
        raise DataError(f"{path}: IDX magic number 0x{found:08x}, expected 0x{magic:08x} "
                        f"({'images: uint8, 3 dims' if magic == _IDX_IMAGES_MAGIC else 'labels: uint8, 1 dim'})")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise DataError(f"{path}: IDX header truncated ({len(buf)} of {header} bytes)")
    dims = tuple(int.from_bytes(buf[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = 1
    for d in dims:  # Python integers: a header of huge dimensions cannot overflow the product
        expected *= d
    if dims[0] == 0:
        raise DataError(f"{path}: IDX file holds 0 {'images' if ndim == 3 else 'labels'}; accepted: at least one")
    body = len(buf) - header
    if body != expected:
        what = "truncated" if body < expected else "has trailing bytes"
        raise DataError(f"{path}: IDX file {what}: header says {'x'.join(map(str, dims))} = {expected} bytes "
                        f"of data, found {body}")
    return np.frombuffer(buf, dtype=np.uint8, offset=header).reshape(dims).copy()


def _idx_files(root: Path) -> dict[str, Path | None]:
    return {key: _idx_path(root, name) for key, name in _IDX_FILES.items()}


def _load_idx(arg: str) -> _Raw:
    root = Path(arg)
    if not root.is_dir():
        raise DataError(f"idx:{arg}: not a directory; accepted: idx:DIR with the four MNIST-style IDX files")
    files = _idx_files(root)
    missing = [_IDX_FILES[k] for k, p in files.items() if p is None]
    if missing:
        raise DataError(f"idx:{arg}: missing {', '.join(missing)}; expected "
                        f"{', '.join(_IDX_FILES.values())} (each optionally .gz)")
    arrays: dict[str, np.ndarray] = {}
    for key, path in files.items():
        assert path is not None
        arrays[key] = _read_idx(path, _IDX_IMAGES_MAGIC if key.startswith("x") else _IDX_LABELS_MAGIC)
    for split in ("train", "test"):
        nx, ny = len(arrays[f"x_{split}"]), len(arrays[f"y_{split}"])
        if nx != ny:
            raise DataError(f"idx:{arg}: {split} split has {nx} images but {ny} labels; counts must match")
    if arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
        raise DataError(f"idx:{arg}: train images are {arrays['x_train'].shape[1:]} but test images "
                        f"{arrays['x_test'].shape[1:]}; sizes must match")
    return _Raw(arrays["x_train"][:, None], arrays["y_train"].astype(np.int64),
                arrays["x_test"][:, None], arrays["y_test"].astype(np.int64))


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds NumPy arrays: a data file cannot run code."""

    _ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module.startswith("numpy.core."):  # pickles from NumPy 1.x name the old module
            module = "numpy._core." + module.removeprefix("numpy.core.")
        return super().find_class(module, name)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with path.open("rb") as f:
            batch = _ArrayUnpickler(f, encoding="bytes").load()
    except Exception as e:  # noqa: BLE001 - any unpickling failure is bad data
        raise DataError(f"{path}: not a CIFAR-10 python batch ({type(e).__name__}: {e}); "
                        "accepted: the pickles of cifar-10-python.tar.gz") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        keys = sorted(map(repr, batch)) if isinstance(batch, dict) else type(batch).__name__
        raise DataError(f"{path}: expected a dict with b'data' and b'labels', found {keys}")
    try:
        data, labels = np.asarray(batch[b"data"]), np.asarray(batch[b"labels"])
    except (ValueError, TypeError) as e:  # ragged lists
        raise DataError(f"{path}: b'data' or b'labels' is not a regular array ({e}); "
                        "accepted: uint8 N x 3072 data and N integer labels") from None
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: b'data' is {data.dtype} {data.shape}, expected uint8 N x 3072")
    if len(data) == 0:
        raise DataError(f"{path}: holds 0 images; accepted: at least one")
    if labels.ndim != 1 or len(labels) != len(data):
        raise DataError(f"{path}: {len(data)} images but {labels.size} labels; counts must match")
    if labels.dtype == np.bool_ or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: labels are {labels.dtype}, expected integer class indices 0..9")
    outside = labels[(labels < 0) | (labels > 9)]
    if outside.size:  # CIFAR-10 has ten classes: a label 99 is damage, not a hundredth class
        raise DataError(f"{path}: label {int(outside[0])} is outside CIFAR-10's classes ({outside.size:,} such "
                        "label(s)); accepted: class indices 0..9")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _cifar_root(arg: str) -> Path:
    root = Path(arg)
    if (root / _CIFAR_SUBDIR).is_dir():
        root = root / _CIFAR_SUBDIR
    return root


def _load_cifar10(arg: str) -> _Raw:
    root = _cifar_root(arg)
    names = (*_CIFAR_TRAIN, _CIFAR_TEST)
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        raise DataError(f"cifar10:{arg}: missing {', '.join(missing)}; expected {', '.join(names)} "
                        f"in DIR or DIR/{_CIFAR_SUBDIR}")
    train = [_read_cifar_batch(root / n) for n in _CIFAR_TRAIN]
    x_test, y_test = _read_cifar_batch(root / _CIFAR_TEST)
    return _Raw(np.concatenate([b[0] for b in train]), np.concatenate([b[1] for b in train]), x_test, y_test)


def _npz_images(x: np.ndarray, where: str) -> np.ndarray:
    """NxHxW, NxHxWxC or NxCxHxW -> NxCxHxW (uint8 kept, other numbers as float32)."""
    if x.dtype == np.bool_ or not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise DataError(f"{where}: dtype {x.dtype} is not a real number type; accepted: uint8, int, float")
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4:
        # Channels-last when the last axis looks like channels (1, 3 or 4) and is smaller than
        # axis 1 (a height); otherwise channels-first.
        if x.shape[-1] in (1, 3, 4) and x.shape[-1] < x.shape[1]:
            x = x.transpose(0, 3, 1, 2)
    else:
        raise DataError(f"{where}: shape {x.shape}, expected N x H x W, N x H x W x C or N x C x H x W")
    if 0 in x.shape:
        raise DataError(f"{where}: empty array of shape {x.shape}")
    if x.dtype != np.uint8:
        x = x.astype(np.float32)
        if not np.isfinite(x).all():
            raise DataError(f"{where}: contains NaN or infinite values")
    return np.ascontiguousarray(x)


def _npz_labels(y: np.ndarray, n: int, where: str) -> np.ndarray:
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(f"{where}: labels of shape {y.shape}, expected a vector of N class indices")
    if y.dtype == np.bool_ or not np.issubdtype(y.dtype, np.number) or np.issubdtype(y.dtype, np.complexfloating) \
            or (np.issubdtype(y.dtype, np.floating) and not (np.isfinite(y).all() and np.all(np.mod(y, 1) == 0))):
        raise DataError(f"{where}: labels must be integer class indices, got dtype {y.dtype}")
    if len(y) != n:
        raise DataError(f"{where}: {n} images but {len(y)} labels; counts must match")
    return y.astype(np.int64)


def _load_npz(arg: str) -> _Raw:
    path = Path(arg)
    if not path.is_file():
        what = "not a regular file" if path.exists() else "no such file"
        raise DataError(f"npz:{arg}: {what}; accepted: npz:FILE with x_train, y_train[, x_test, y_test]")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:  # noqa: BLE001 - zip/format errors of a user file
        raise DataError(f"npz:{arg}: cannot read as .npz ({type(e).__name__}: {e})") from None
    missing = [k for k in ("x_train", "y_train") if k not in arrays]
    if missing:
        raise DataError(f"npz:{arg}: missing key(s) {', '.join(missing)}; found {', '.join(sorted(arrays)) or 'none'}; "
                        "accepted keys: x_train, y_train, optional x_test and y_test")
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise DataError(f"npz:{arg}: has only one of x_test, y_test; give both or neither")
    x_train = _npz_images(arrays["x_train"], f"npz:{arg}: x_train")
    y_train = _npz_labels(arrays["y_train"], len(x_train), f"npz:{arg}: y_train")
    x_test = y_test = None
    if "x_test" in arrays:
        x_test = _npz_images(arrays["x_test"], f"npz:{arg}: x_test")
        y_test = _npz_labels(arrays["y_test"], len(x_test), f"npz:{arg}: y_test")
        if x_test.shape[1:] != x_train.shape[1:]:
            raise DataError(f"npz:{arg}: x_train images are {x_train.shape[1:]} (C,H,W) but x_test "
                            f"{x_test.shape[1:]}; shapes must match")
    return _Raw(x_train, y_train, x_test, y_test)


_NAME_MAX, _PATH_MAX = 255, 4096  # Linux's limits (limits.h); other systems' are no larger


def _shown(text: str, limit: int = 120) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def check_source(source: str) -> None:
    """Refuse a source string no file system takes (a NUL byte, a name or path over the length
    limits), before any file is touched. Raises :class:`DataError` with one line."""
    if isinstance(source, str):
        if "\x00" in source:
            raise DataError(f"data source contains a NUL byte; accepted: {_ACCEPTED}")
        longest = max((len(os.fsencode(part)) for part in Path(source.partition(":")[2].strip()).parts), default=0)
        if longest > _NAME_MAX or len(os.fsencode(source)) > _PATH_MAX:
            raise DataError(f"data source {_shown(source)} is longer than paths can be (a name over {_NAME_MAX} "
                            f"bytes or a path over {_PATH_MAX}); accepted: {_ACCEPTED}")


def _parse_checked(source: str) -> tuple[str, str, list[Path]]:
    """:func:`_parse_source`, with paths the operating system refuses reported as :class:`DataError`."""
    check_source(source)
    try:
        return _parse_source(source)
    except OSError as e:
        raise DataError(f"{_shown(source)}: unusable path ({e.strerror or e}); accepted: {_ACCEPTED}") from None
    except RuntimeError as e:  # Path.resolve before Python 3.13: "Symlink loop from '...'"
        if not str(e).startswith("Symlink loop"):
            raise
        raise DataError(f"{_shown(source)}: unusable path (a symbolic link loop: too many levels of symbolic links); "
                        f"accepted: {_ACCEPTED}") from None


def _parse_source(source: str) -> tuple[str, str, list[Path]]:
    """``source`` -> (kind, argument, files whose size/mtime key the cache)."""
    if not isinstance(source, str):
        raise DataError(f"data source must be a string, got {type(source).__name__}; accepted: {_ACCEPTED}")
    kind, sep, arg = source.partition(":")
    kind = kind.strip().lower()
    arg = os.path.expanduser(arg.strip())
    if kind == "digits" and not sep:
        return "digits", "", []
    if sep and arg and kind == "idx":
        root = Path(arg).resolve()
        return "idx", str(root), [p for p in _idx_files(root).values() if p is not None]
    if sep and arg and kind == "cifar10":
        root = _cifar_root(str(Path(arg).resolve()))
        return "cifar10", str(Path(arg).resolve()), [root / n for n in (*_CIFAR_TRAIN, _CIFAR_TEST)]
    if sep and arg and kind == "npz":
        path = Path(arg).resolve()
        return "npz", str(path), [path]
    raise DataError(f"unknown data source {source!r}; accepted: {_ACCEPTED}")


# ----------------------------------------------------------------------------- splitting
def _stratified_take(y: np.ndarray, n_take: int, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask choosing ``n_take`` examples with class proportions as in ``y``.

    Per-class counts are the largest-remainder rounding of the proportional share (ties broken
    at random), so the total is exact.
    """
    classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    share = counts * (n_take / len(y))
    take = np.floor(share).astype(np.int64)
    short = n_take - int(take.sum())
    if short > 0:
        remainder = share - take + rng.random(len(classes)) * 1e-9  # random tie-break
        take[np.argsort(-remainder, kind="stable")[:short]] += 1
    mask = np.zeros(len(y), dtype=bool)
    for c in range(len(classes)):
        idx = np.flatnonzero(inverse == c)
        mask[rng.permutation(idx)[: take[c]]] = True
    return mask


def _split_off(y: np.ndarray, fraction: float, rng: np.random.Generator, what: str, source: str) -> np.ndarray:
    """Mask of a stratified ``fraction`` of ``y``; at least one example, never all of them."""
    n_take = int(round(fraction * len(y)))
    n_take = min(max(n_take, 1), len(y) - 1)
    if n_take < 1:
        raise DataError(f"{source}: {len(y)} example(s) are too few to split off a {what} set; need at least 2")
    return _stratified_take(y, n_take, rng)


def _subsample(y: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Mask keeping a stratified ``fraction`` of ``y`` and at least one example per class."""
    n_keep = max(1, int(round(fraction * len(y))))
    mask = _stratified_take(y, n_keep, rng)
    for c in np.unique(y):  # every class keeps at least one example
        idx = np.flatnonzero(y == c)
        if not mask[idx].any():
            mask[rng.choice(idx)] = True
    return mask


def _to_float(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32, copy=False)


def _check_fraction(name: str, value: float, *, high_closed: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not (ok and value > 0.0 and (value <= 1.0 if high_closed else value < 1.0)):
        interval = "(0, 1]" if high_closed else "(0, 1)"
        raise DataError(f"{name} must be a number in {interval}, got {value!r}")
    return float(value)


def _class_count(source: str, y_train: np.ndarray, y_test: np.ndarray | None) -> int:
    """K, the number of classes: the training labels must be 0..K-1 with every class present (a
    class id no training image has is a damaged or mislabelled file, and would silently add an
    output the network can never learn), at least two classes, and test labels among them.

    Raises:
        DataError: one line naming the missing or unexpected class ids and what is accepted.
    """
    accepted = "accepted: class indices 0..K-1 (K >= 2), each with training images"
    shown = _shown(source, 100)
    present = np.unique(y_train)
    if len(present) < 2:
        raise DataError(f"{shown}: the training split holds one class only (label {int(present[0])}); {accepted}")
    k = int(present[-1]) + 1
    if len(present) < k:
        first: list[int] = []
        expected = 0
        for c in present.tolist():
            while expected < c and len(first) < 5:
                first.append(expected)
                expected += 1
            expected = c + 1
            if len(first) >= 5:
                break
        n_missing = k - len(present)
        ids = ", ".join(map(str, first)) + (", ..." if n_missing > len(first) else "")
        raise DataError(f"{shown}: labels run to {k - 1} but {n_missing:,} class id(s) below it have no training "
                        f"image ({ids}); {accepted}")
    if y_test is not None and len(y_test) and int(y_test.max()) >= k:
        raise DataError(f"{shown}: the test split has label {int(y_test.max())}, a class with no training image "
                        f"(training labels are 0..{k - 1}); {accepted}")
    return k


def load_dataset(source: str, *, seed: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.2,
                 train_fraction: float = 1.0) -> Dataset:
    """Load a dataset as normalised tensors with seeded, stratified train/val/test splits.

    Args:
        source: ``digits``, ``idx:DIR``, ``cifar10:DIR`` or ``npz:FILE`` (see
            :func:`describe_sources`).
        seed: fixes every split; the same seed gives identical splits.
        val_fraction: share of the training data held out for validation.
        test_fraction: share of all data held out for testing, only for sources without a
            test split (``digits``, an ``npz`` without ``x_test``).
        train_fraction: share of the remaining training split kept (stratified, at least one
            example per class), for low-fidelity training. Validation and test sets do not
            depend on it.

    Returns:
        A :class:`Dataset` on the CPU.

    Raises:
        DataError: unknown source, missing/truncated/malformed files, mismatched counts or
            shapes, or fractions out of range. The message is one line.

    Example:
        >>> data = load_dataset("digits", seed=1, train_fraction=0.5)
        >>> data.x_train.shape[1:], data.sizes["val"] > 0
        (torch.Size([1, 8, 8]), True)
    """
    kind, arg, files = _parse_checked(source)
    val_fraction = _check_fraction("val_fraction", val_fraction)
    test_fraction = _check_fraction("test_fraction", test_fraction)
    train_fraction = _check_fraction("train_fraction", train_fraction, high_closed=True)
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise DataError(f"seed must be a non-negative integer, got {seed!r}")

    try:
        raw = _load_raw(kind, arg, _signature(files))
    except DataError:
        raise
    except (OSError, ValueError, OverflowError, MemoryError, EOFError) as e:  # what a file can still throw at us
        raise DataError(f"{_shown(source)}: cannot read ({type(e).__name__}: {_first_line(e)}); "
                        f"accepted: {_ACCEPTED}") from None
    labels = [y for y in (raw.y_train, raw.y_test) if y is not None]
    if min(int(y.min()) for y in labels) < 0:
        raise DataError(f"{source}: negative class labels; accepted: class indices 0..K-1")
    num_classes = _class_count(source, raw.y_train, raw.y_test)
    # Separate streams per split, so train_fraction cannot move the val/test sets.
    rng_test, rng_val, rng_sub = (np.random.default_rng([int(seed), k]) for k in range(3))

    x_pool, y_pool = raw.x_train, raw.y_train
    if raw.x_test is None or raw.y_test is None:
        test_mask = _split_off(y_pool, test_fraction, rng_test, "test", source)
        x_test, y_test = x_pool[test_mask], y_pool[test_mask]
        x_pool, y_pool = x_pool[~test_mask], y_pool[~test_mask]
    else:
        x_test, y_test = raw.x_test, raw.y_test

    val_mask = _split_off(y_pool, val_fraction, rng_val, "validation", source)
    x_val, y_val = x_pool[val_mask], y_pool[val_mask]
    x_train, y_train = x_pool[~val_mask], y_pool[~val_mask]

    x_train_f = _to_float(x_train)
    mean = x_train_f.mean(axis=(0, 2, 3), dtype=np.float64)
    std = x_train_f.std(axis=(0, 2, 3), dtype=np.float64)
    std = np.where(std > 1e-12, std, 1.0)

    if train_fraction < 1.0:
        keep = _subsample(y_train, train_fraction, rng_sub)
        x_train_f, y_train = x_train_f[keep], y_train[keep]

    def norm(x: np.ndarray) -> torch.Tensor:
        x = (x - mean[None, :, None, None].astype(np.float32)) / std[None, :, None, None].astype(np.float32)
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))

    c, h, w = (int(s) for s in raw.x_train.shape[1:])
    return Dataset(
        name=source,
        x_train=norm(x_train_f), y_train=torch.from_numpy(y_train.astype(np.int64)),
        x_val=norm(_to_float(x_val)), y_val=torch.from_numpy(y_val.astype(np.int64)),
        x_test=norm(_to_float(x_test)), y_test=torch.from_numpy(y_test.astype(np.int64)),
        input_shape=(c, h, w), num_classes=num_classes,
        mean=tuple(float(m) for m in mean), std=tuple(float(s) for s in std),
    )
