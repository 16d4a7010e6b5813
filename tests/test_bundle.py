"""Model bundles on disk (wm_env/bundle.py): config sections, verified weight files, the hash."""

from __future__ import annotations

import json

import pytest
import torch

from wm_env.bundle import (
    CONFIG_NAME,
    FORMAT,
    BundleError,
    bundle_sha256,
    file_sha256,
    load_weights,
    read_config,
    run_config_sha256,
    update_config,
    verify,
    write_component,
)
from wm_env.errors import CorruptFileError


def weights(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "layer.weight": torch.randn(8, 4, generator=g),
        "layer.bias": torch.randn(8, generator=g),
        "steps": torch.arange(3),
    }


@pytest.fixture
def bundle(tmp_path):
    root = tmp_path / "bundle"
    write_component(root, "encoder", {"name": "vae", "latent_dim": 4}, weights(0))
    write_component(root, "dynamics", {"history": 2}, weights(1))
    update_config(root, actions={"low": [-1.0] * 7, "high": [1.0] * 7})
    return root


def test_a_run_depends_on_the_config_without_the_decoders_it_does_not_use(bundle):
    """Adding a named decoder leaves the runs made before resumable (their fingerprint)."""
    before = file_sha256(bundle / CONFIG_NAME)
    assert run_config_sha256(bundle) == before
    write_component(bundle, "decoder_light", {"config": {"base_channels": 16}}, weights(2))
    assert file_sha256(bundle / CONFIG_NAME) != before
    assert run_config_sha256(bundle) == run_config_sha256(bundle, "encoder") == before
    with_light = run_config_sha256(bundle, "light")
    assert with_light == file_sha256(bundle / CONFIG_NAME)
    write_component(bundle, "decoder_tiny", {"config": {"base_channels": 8}}, weights(3))
    assert run_config_sha256(bundle, "light") == with_light and run_config_sha256(bundle) == before
    write_component(bundle, "decoder_light", {"config": {"base_channels": 16}}, weights(4))
    assert run_config_sha256(bundle, "light") != with_light  # a retrained decoder counts
    assert run_config_sha256(bundle) == before
    update_config(bundle, dynamics={"history": 3})  # what every run depends on still counts
    assert run_config_sha256(bundle) != before


def test_round_trip(bundle):
    config = read_config(bundle)
    assert config["format"] == FORMAT
    assert config["encoder"] == {"name": "vae", "latent_dim": 4, "weights": "encoder.safetensors"}
    assert config["dynamics"]["weights"] == "dynamics.safetensors"
    assert config["actions"]["low"] == [-1.0] * 7
    for name in ("encoder.safetensors", "dynamics.safetensors"):
        entry = config["files"][name]
        assert entry["bytes"] == (bundle / name).stat().st_size
        assert entry["sha256"] == file_sha256(bundle / name)
    for section, seed in (("encoder", 0), ("dynamics", 1)):
        loaded = load_weights(bundle, config, section)
        assert loaded.keys() == weights(seed).keys()
        for key, value in weights(seed).items():
            assert torch.equal(loaded[key], value)
    assert verify(bundle) == config
    # no temp files left behind
    assert sorted(p.name for p in bundle.iterdir()) == [
        CONFIG_NAME,
        "dynamics.safetensors",
        "encoder.safetensors",
    ]


def test_update_config_keeps_other_sections(bundle):
    update_config(bundle, dataset={"fps": 10})
    config = read_config(bundle)
    assert config["dataset"] == {"fps": 10}
    assert config["encoder"]["latent_dim"] == 4
    assert set(config["files"]) == {"encoder.safetensors", "dynamics.safetensors"}


def test_component_without_weights(tmp_path):
    root = tmp_path / "b"
    write_component(root, "adapter", {"name": "identity", "options": {}})
    config = read_config(root)
    assert config["adapter"] == {"name": "identity", "options": {}}
    assert config["files"] == {}
    with pytest.raises(BundleError, match="no weights file"):
        load_weights(root, config, "adapter")
    verify(root)  # nothing to check


def test_bundle_sha256_is_stable_and_tracks_weights(bundle):
    first = bundle_sha256(bundle)
    assert first == bundle_sha256(bundle)
    assert len(first) == 64
    # rewriting a section with the same weights and section changes nothing
    write_component(bundle, "encoder", {"name": "vae", "latent_dim": 4}, weights(0))
    assert bundle_sha256(bundle) == first
    # new weights: the file hash in config.json changes, so does the bundle hash
    write_component(bundle, "encoder", {"name": "vae", "latent_dim": 4}, weights(2))
    second = bundle_sha256(bundle)
    assert second != first
    # a config-only change also changes it
    update_config(bundle, note="x")
    third = bundle_sha256(bundle)
    assert third != second
    # the hash is of the canonical config: key order and whitespace in the file do not matter
    config = read_config(bundle)
    (bundle / CONFIG_NAME).write_text(json.dumps(dict(reversed(list(config.items())))))
    assert bundle_sha256(bundle) == third


def test_truncated_weight_file_names_file_and_size(bundle):
    path = bundle / "encoder.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    config = read_config(bundle)
    with pytest.raises(CorruptFileError, match="bytes") as info:
        load_weights(bundle, config, "encoder")
    assert "encoder.safetensors" in str(info.value)
    assert str(len(data) - 10) in str(info.value) and str(len(data)) in str(info.value)
    assert info.value.path == str(path)
    with pytest.raises(CorruptFileError, match="encoder.safetensors"):
        verify(bundle)
    # the other component is still fine
    load_weights(bundle, config, "dynamics")


def test_flipped_byte_same_size_mentions_sha256(bundle):
    path = bundle / "dynamics.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # inside the tensor payload: still a readable safetensors file
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match="sha256") as info:
        load_weights(bundle, read_config(bundle), "dynamics")
    assert "dynamics.safetensors" in str(info.value)
    assert "bytes" not in str(info.value)


def test_missing_weight_file(bundle):
    (bundle / "encoder.safetensors").unlink()
    with pytest.raises(CorruptFileError, match="missing") as info:
        verify(bundle)
    assert "encoder.safetensors" in str(info.value)


def test_unlisted_weight_file(bundle):
    config = read_config(bundle)
    del config["files"]["encoder.safetensors"]
    with pytest.raises(CorruptFileError, match="not listed"):
        load_weights(bundle, config, "encoder")


def test_missing_directory_is_a_bundle_error(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(BundleError, match="does not exist"):
        read_config(missing)
    with pytest.raises(BundleError):
        verify(missing)
    with pytest.raises(BundleError):
        bundle_sha256(missing)
    assert issubclass(BundleError, ValueError)


def test_directory_without_config(tmp_path):
    with pytest.raises(CorruptFileError, match="config.json"):
        read_config(tmp_path)


def test_garbled_config_names_config_json(bundle):
    (bundle / CONFIG_NAME).write_text('{"format": "wm-gym-bundle", ')
    with pytest.raises(CorruptFileError, match="not valid JSON") as info:
        read_config(bundle)
    assert info.value.path.endswith(CONFIG_NAME)
    assert CONFIG_NAME in str(info.value)
    # writers refuse to build on top of a garbled config rather than silently replacing it
    with pytest.raises(CorruptFileError):
        update_config(bundle, x=1)
    with pytest.raises(CorruptFileError):
        write_component(bundle, "decoder", {}, weights(3))


def test_foreign_or_newer_config(bundle):
    path = bundle / CONFIG_NAME
    config = json.loads(path.read_text())
    path.write_text(json.dumps({**config, "format": "something-else"}))
    with pytest.raises(CorruptFileError, match="not a wm-gym-bundle"):
        read_config(bundle)
    path.write_text(json.dumps({**config, "format_version": 99}))
    with pytest.raises(CorruptFileError, match="newer"):
        read_config(bundle)
