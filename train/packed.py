"""Packed latents: a dataset's encoded training data in one file, for training elsewhere.

``wmgym train pack --bundle B --data.dataset D --out F`` encodes the train and validation
episodes of ``D``'s split with ``B``'s frozen encoder (+ adapter) and writes one safetensors
file: per split the latents (fp16 by default: half the bytes, and the DiT normalises them
anyway), the actions, the episode lengths and ids; in its metadata the latent space it was
encoded in, the dataset's action statistics and fingerprint. ``wmgym train dynamics --packed F``
then trains from it without the dataset, the encoder, pandas, pyarrow or diffusers: what a lent
GPU machine needs to receive (``scripts/train_on_gpu.sh``). A packed file whose latent space is
not the bundle's is refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from wm_env.dataset.split import DataConfig

PACK_FORMAT = 1
SPLITS = ("train", "val")
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


class PackedData(NamedTuple):
    """What a dynamics run reads from a packed file (or computes from a dataset).

    ``train``/``val``: arrays with ``actions`` float32 ``(N, 7)``, ``states`` float32 ``(N, S)``
    (None when the dataset records none), ``lengths`` and
    ``episode_ids`` ``(E,)``, ``starts`` ``(E,)``; ``val`` is None without held-out episodes.
    ``train_latents``/``val_latents``: float32 ``(N, L, D)`` raw (un-normalised) latents.
    """

    train: dict[str, np.ndarray]
    val: dict[str, np.ndarray] | None
    train_latents: torch.Tensor
    val_latents: torch.Tensor | None
    action_stats: dict[str, Any]
    fingerprint: dict[str, Any]


@dataclass(frozen=True)
class PackConfig:
    """Encode a dataset's train/validation episodes into one packed-latents file.

    Attributes:
        bundle: the bundle whose encoder (+ adapter) encodes the frames.
        out: the packed file (``.safetensors``).
        dtype: storage dtype of the latents: ``fp16``, ``bf16`` or ``fp32``.
        run_dir: the latent cache shared with ``wmgym train dynamics`` (default
            ``runs/<bundle>/dynamics``): frames encoded once serve both.
        device: torch device of the encoder.
    """

    bundle: Path = Path("models/default")
    data: DataConfig = field(default_factory=DataConfig)
    out: Path = Path("outputs/packed/latents.safetensors")
    dtype: str = "fp16"
    run_dir: Path | None = None
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}; got {self.dtype!r}")


def latent_space_key(bundle_config: dict) -> str:
    """The string that names a bundle's latent space (encoder and adapter sections, weights)."""
    from wm_env.bundle import latent_space_hashes

    weights = latent_space_hashes(bundle_config)
    return f"{bundle_config['encoder']}|{bundle_config.get('adapter')}|{weights}"


def _with_starts(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    lengths = arrays["lengths"]
    return {**arrays, "starts": np.cumsum(lengths) - lengths}


def encoded_dataset(
    bundle: Path,
    data: DataConfig,
    run_dir: Path,
    device: str,
    progress: bool = True,
    with_val: bool = True,
) -> PackedData:
    """Load ``data``'s split and encode it with ``bundle``'s encoder (cached in ``run_dir``)."""
    from train.latent_cache import cached_episode_latents
    from train.stage_dynamics import encode_frames
    from wm_env.bundle import read_config
    from wm_env.dataset.split import dataset_fingerprint, load_split
    from wm_env.world_model import build_adapter_from_config, build_encoder_from_config

    bundle_config = read_config(bundle)
    if "encoder" not in bundle_config:
        raise ValueError(
            f"{bundle} has no encoder yet: run `wmgym train encoder --bundle {bundle}` first"
        )
    encoder = build_encoder_from_config(bundle_config, bundle, device)
    adapter = build_adapter_from_config(bundle_config, bundle, device)
    dataset, train, val = load_split(data, progress)
    space = latent_space_key(bundle_config)

    def encoded(arrays) -> torch.Tensor:
        return cached_episode_latents(
            run_dir / "latents.safetensors",
            space,
            arrays,
            lambda frames: encode_frames(encoder, adapter, frames, progress=progress),
        )

    keep = ("actions", "states", "lengths", "episode_ids", "starts")
    return PackedData(
        {k: train[k] for k in keep},
        None if val is None else {k: val[k] for k in keep},
        encoded(train),
        None if val is None or not with_val else encoded(val),
        dict(dataset.stats["action"]),
        dataset_fingerprint(dataset),
    )


def pack_latents(config: PackConfig, progress: bool = True) -> Path:
    """Write the packed file of :class:`PackConfig`; return its path."""
    from wm_env.bundle import read_config

    run_dir = config.run_dir or Path("runs") / config.bundle.name / "dynamics"
    data = encoded_dataset(config.bundle, config.data, run_dir, config.device, progress)
    dtype = DTYPES[config.dtype]
    tensors = {}
    for split, arrays, latents in (
        ("train", data.train, data.train_latents),
        ("val", data.val, data.val_latents),
    ):
        if arrays is None:
            continue
        tensors[f"{split}/latents"] = latents.to(dtype).contiguous()
        tensors[f"{split}/actions"] = torch.from_numpy(np.ascontiguousarray(arrays["actions"]))
        if arrays.get("states") is not None:
            tensors[f"{split}/states"] = torch.from_numpy(np.ascontiguousarray(arrays["states"]))
        tensors[f"{split}/lengths"] = torch.from_numpy(arrays["lengths"].astype(np.int64))
        tensors[f"{split}/episode_ids"] = torch.from_numpy(arrays["episode_ids"].astype(np.int64))
    metadata = {
        "format": str(PACK_FORMAT),
        "space": latent_space_key(read_config(config.bundle)),
        "action_stats": json.dumps(data.action_stats),
        "dataset": json.dumps(data.fingerprint),
        "data_config": json.dumps({k: str(v) for k, v in vars(config.data).items()}),
    }
    config.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = config.out.with_name(f".{config.out.name}.tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(config.out)
    return config.out


def read_packed(path: Path, space: str) -> PackedData:
    """Read a packed file, refusing one of another latent space or format."""
    from wm_env.errors import CorruptFileError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no packed-latents file (make one with `wmgym train pack`)"
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except Exception as error:  # a torn or foreign file
        raise CorruptFileError(path, f"cannot read packed latents ({error})") from None
    if meta.get("format") != str(PACK_FORMAT) or "train/latents" not in tensors:
        raise CorruptFileError(path, f"not a packed-latents file of format {PACK_FORMAT}")
    if meta.get("space") != space:
        raise ValueError(
            f"{path} was encoded in another latent space than the bundle's (its encoder or "
            "adapter weights differ); pack it again with this bundle (`wmgym train pack`)"
        )
    splits = {}
    for split in SPLITS:
        if f"{split}/latents" not in tensors:
            splits[split] = (None, None)
            continue
        arrays = _with_starts(
            {
                "actions": tensors[f"{split}/actions"].numpy(),
                "lengths": tensors[f"{split}/lengths"].numpy(),
                "episode_ids": tensors[f"{split}/episode_ids"].numpy(),
                "states": tensors[f"{split}/states"].numpy()
                if f"{split}/states" in tensors
                else None,
            }
        )
        latents = tensors[f"{split}/latents"].float()
        states = arrays["states"]
        if (
            len(latents) != int(arrays["lengths"].sum())
            or len(arrays["actions"]) != len(latents)
            or (states is not None and len(states) != len(latents))
        ):
            raise CorruptFileError(path, f"{split}: latents, actions and lengths disagree")
        splits[split] = (arrays, latents)
    return PackedData(
        splits["train"][0],
        splits["val"][0],
        splits["train"][1],
        splits["val"][1],
        json.loads(meta["action_stats"]),
        json.loads(meta["dataset"]),
    )


def store_in_bf16(bundle: str | Path, section: str = "dynamics") -> Path:
    """Rewrite a bundle component's floating-point weights in bf16 (half the bytes), in place.

    The runtime loads them into its float32 modules unchanged (``load_state_dict`` casts), so a
    model trained under bf16 autocast on a GPU loses nothing it had; used to bring a bundle back
    within a file-size limit (``scripts/train_on_gpu.sh``).
    """
    from wm_env.bundle import load_weights, read_config, write_component

    config = read_config(bundle)
    state = load_weights(bundle, config, section)
    state = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in state.items()}
    body = {k: v for k, v in config[section].items() if k != "weights"}
    write_component(bundle, section, {**body, "stored_dtype": "bf16"}, state)
    return Path(bundle) / config[section]["weights"]
