"""A world-model bundle on disk: ``config.json`` plus one ``*.safetensors`` per trained component.

``config.json`` has one section per component (``encoder``, ``adapter``, ``decoder``,
``dynamics``), the dataset's action statistics (``actions``) and provenance (``dataset``), and
under ``files`` the byte size and SHA-256 of every weight file. Loading checks both, so a
truncated or swapped file gives an error naming the file and the mismatch. The bundle's hash
(:func:`bundle_sha256`) is the SHA-256 of the canonical ``config.json``, which pins every file.

Training stages write their component with :func:`write_component`; the runtime reads it back
with :func:`read_config` and :func:`load_weights`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from wm_env.errors import CorruptFileError, WmGymError

CONFIG_NAME = "config.json"
FORMAT = "wm-gym-bundle"
FORMAT_VERSION = 1


class BundleError(WmGymError, ValueError):
    """A bundle directory is missing, incomplete, or inconsistent."""


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _canonical(config: dict[str, Any]) -> str:
    return json.dumps(config, sort_keys=True, separators=(",", ":"))


def read_config(bundle: str | os.PathLike) -> dict[str, Any]:
    """The bundle's ``config.json``; clear errors for a missing directory or a garbled file."""
    root = Path(bundle)
    if not root.is_dir():
        raise BundleError(
            f"model bundle {str(root)!r} does not exist (train one with `wmgym train ...`)"
        )
    path = root / CONFIG_NAME
    if not path.exists():
        raise CorruptFileError(path, "missing: not a model bundle (no config.json)")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise CorruptFileError(path, f"not valid JSON ({error})") from None
    if not isinstance(config, dict):
        raise CorruptFileError(path, f"must hold a JSON object; got a {type(config).__name__}")
    if config.get("format") != FORMAT:
        raise CorruptFileError(path, f"not a {FORMAT} config (format={config.get('format')!r})")
    version = config.get("format_version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise CorruptFileError(path, f"format_version must be an integer; got {version!r}")
    if version > FORMAT_VERSION:
        raise CorruptFileError(
            path,
            f"format_version {config['format_version']} is newer than this wm-gym reads ({FORMAT_VERSION})",
        )
    return config


def _read_or_new(root: Path) -> dict[str, Any]:
    if (root / CONFIG_NAME).exists():
        return read_config(root)
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "files": {}}


def _config_text(config: dict[str, Any]) -> str:
    return json.dumps(config, indent=2, sort_keys=True)


def _write_config(root: Path, config: dict[str, Any]) -> None:
    tmp = root / f".{CONFIG_NAME}.tmp"
    tmp.write_text(_config_text(config))
    os.replace(tmp, root / CONFIG_NAME)


def update_config(bundle: str | os.PathLike, **sections: Any) -> dict[str, Any]:
    """Set top-level sections of ``config.json`` (creating the bundle if needed)."""
    root = Path(bundle)
    root.mkdir(parents=True, exist_ok=True)
    config = _read_or_new(root)
    config.update(sections)
    _write_config(root, config)
    return config


def write_component(
    bundle: str | os.PathLike,
    name: str,
    section: dict[str, Any],
    state_dict: dict[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Store component ``name``: its weights as ``<name>.safetensors`` and its config section.

    The weight file is written atomically first, then ``config.json`` records its size and hash.
    """
    root = Path(bundle)
    root.mkdir(parents=True, exist_ok=True)
    config = _read_or_new(root)
    section = dict(section)
    if state_dict is not None:
        filename = f"{name}.safetensors"
        tmp = root / f".{filename}.tmp"
        save_file({k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}, str(tmp))
        os.replace(tmp, root / filename)
        config["files"][filename] = {
            "bytes": (root / filename).stat().st_size,
            "sha256": file_sha256(root / filename),
        }
        section["weights"] = filename
    config[name] = section
    _write_config(root, config)
    return config


def load_weights(
    bundle: str | os.PathLike,
    config: dict[str, Any],
    section: str,
    device: str | torch.device = "cpu",
) -> dict[str, torch.Tensor]:
    """The verified state dict of a component; errors name the file and the mismatch."""
    root = Path(bundle)
    filename = config[section].get("weights")
    if filename is None:
        raise BundleError(f"component {section!r} of {root} has no weights file")
    path = root / filename
    expected = config.get("files", {}).get(filename)
    if expected is None:
        raise CorruptFileError(
            path, "not listed in config.json 'files' (the bundle was not written by wm-gym)"
        )
    if not path.exists():
        raise CorruptFileError(path, "missing")
    size = path.stat().st_size
    if size != expected["bytes"]:
        raise CorruptFileError(
            path, f"has {size} bytes, config.json says {expected['bytes']} (truncated or replaced)"
        )
    digest = file_sha256(path)
    if digest != expected["sha256"]:
        raise CorruptFileError(
            path,
            f"sha256 {digest[:12]}... does not match config.json's {expected['sha256'][:12]}...",
        )
    try:
        weights = load_file(str(path), device=str(device))
    except Exception as error:
        raise CorruptFileError(path, f"cannot read safetensors ({error})") from None
    for name, tensor in weights.items():  # a diverged run's weights would render black frames
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise CorruptFileError(path, f"holds NaN or inf weights ({name}): retrain it")
    return weights


def json_ready(value: Any) -> Any:
    """Tuples, Paths and numpy scalars turned into JSON types (configs written to a bundle)."""
    return json.loads(
        json.dumps(value, default=lambda v: v.item() if hasattr(v, "item") else str(v))
    )


def latent_space_hashes(config: dict[str, Any]) -> list[str]:
    """SHA-256 of the encoder and adapter weight files (what defines the latent space)."""
    return [
        config["files"][f]["sha256"]
        for f in sorted(config.get("files", {}))
        if f.split(".")[0] in ("encoder", "adapter")
    ]


ENCODER_DECODER = "encoder"  # the ``decoder=`` name of the encoder's own decoder
DECODER_SECTION = "decoder"  # the bundle's default pixel decoder (replaces the encoder's own)


def decoder_section(name: str | None) -> str:
    """The section of pixel decoder ``name``: ``decoder`` for None, else ``decoder_<name>``."""
    return DECODER_SECTION if name is None else f"{DECODER_SECTION}_{name}"


def decoder_names(config: dict[str, Any]) -> list[str]:
    """The ``decoder=`` names a bundle offers: its named pixel decoders (``decoder_<name>``
    sections) and ``"encoder"`` when the encoder decodes itself."""
    prefix = f"{DECODER_SECTION}_"
    names = [k[len(prefix) :] for k, v in config.items() if k.startswith(prefix) and v]
    if config.get("encoder", {}).get("has_decoder"):
        names.append(ENCODER_DECODER)
    return sorted(names)


def run_config_sha256(bundle: str | os.PathLike, decoder: str | None = None) -> str:
    """SHA-256 of ``config.json`` as a run that renders with ``decoder`` depends on it.

    The named decoders the run does not use are left out (their sections and weight-file
    entries), so adding a decoder to a bundle leaves the runs made before resumable: without
    them this is the SHA-256 of the file wm-gym wrote before they were added. With none to
    leave out it is the file's own SHA-256.
    """
    path = Path(bundle) / CONFIG_NAME
    config = json.loads(path.read_text())
    keep = None if decoder == ENCODER_DECODER else decoder_section(decoder)
    unused = [k for k in config if k.startswith(f"{DECODER_SECTION}_") and k != keep]
    if not unused:
        return file_sha256(path)
    for section in unused:
        weights = config.pop(section).get("weights")
        config.get("files", {}).pop(weights, None)
    return hashlib.sha256(_config_text(config).encode()).hexdigest()


def bundle_sha256(bundle: str | os.PathLike) -> str:
    """SHA-256 of the canonical config (which holds the hash of every weight file)."""
    return hashlib.sha256(_canonical(read_config(bundle)).encode()).hexdigest()


def verify(bundle: str | os.PathLike) -> dict[str, Any]:
    """Check every listed weight file's size and hash; return the config."""
    config = read_config(bundle)
    for section, body in config.items():
        if isinstance(body, dict) and "weights" in body:
            load_weights(bundle, config, section)
    return config
