"""One conversion per boundary: stored architectures and weights in, ``ArchSpec``s and networks out.

The store keeps an architecture as its canonical JSON (by spec hash) and weights as
``torch.save`` bytes (by key). Every reader goes through these functions, so a missing row is
one clear error instead of a misleading "not valid JSON", and the bytes-to-network step is
written once. (They live in ``nas``, not in ``storage``: the storage package builds no models.)
"""

from __future__ import annotations

import io
from typing import Any

import torch

from search_spaces import ArchSpec, LightNet, build_model
from storage import Store

from ._errors import NasError
from ._lru import LRUCache

__all__ = ["int8_key", "load_arch", "load_network", "load_state", "save_arch", "save_state", "serialize_state",
           "weights_key"]

#: Stored architectures by spec hash (a hash names one architecture in every database), the least
#: recently read dropped past 4096.
_ARCHS: LRUCache[str, ArchSpec] = LRUCache(limit=4096)


def weights_key(spec_hash: str, fidelity_key: str) -> str:
    """Where the weights an architecture was trained to at a fidelity are stored."""
    return f"weights/{spec_hash}/{fidelity_key}.pt"


def int8_key(spec_hash: str, study_spec: Any) -> str:
    """Where the quantization-aware fine-tuned int8 network of an architecture is stored (per fidelity and
    QAT epochs: what it depends on)."""
    return f"int8/{spec_hash}/{study_spec.fidelity_key}/qat{study_spec.qat_epochs}.pt2"


def save_arch(store: Store, arch: ArchSpec) -> None:
    """Store ``arch`` by its hash (once; concurrent writers are harmless)."""
    store.put_architecture(arch.hash, arch.family, arch.to_json())


def load_arch(store: Store, spec_hash: str) -> ArchSpec:
    """The stored architecture of ``spec_hash`` (immutable, so kept once read).

    Raises:
        NasError: no architecture of that hash is stored.
    """
    arch = _ARCHS.get(spec_hash)
    if arch is None:
        text = store.get_architecture(spec_hash)
        if text is None:
            raise NasError(f"architecture {spec_hash[:12]} is not stored in this database")
        arch = _ARCHS.put(spec_hash, ArchSpec.from_json(text))
    return arch


def serialize_state(state: dict[str, torch.Tensor]) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def save_state(store: Store, key: str, state: dict[str, torch.Tensor]) -> None:
    """Store a state dict (CPU tensors) under ``key``."""
    store.put_artifact(key, serialize_state(state))


def load_state(store: Store, key: str) -> dict[str, torch.Tensor] | None:
    """The state dict stored under ``key`` (on the CPU), or None when there is none."""
    blob = store.get_artifact(key)
    if blob is None:
        return None
    return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)  # type: ignore[no-any-return]


def load_network(store: Store, arch: ArchSpec, key: str, input_shape: tuple[int, int, int],
                 num_classes: int) -> LightNet | None:
    """``arch`` built for ``input_shape`` and ``num_classes`` with the weights stored under
    ``key`` (on the CPU, in eval mode), or None when no weights are stored there."""
    state = load_state(store, key)
    if state is None:
        return None
    model = build_model(arch, input_shape, num_classes)
    model.load_state_dict(state)
    return model.eval()
