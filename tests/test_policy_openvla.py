"""OpenVLA-style runner: exact token -> action arithmetic, and a tiny random-weight LLaVA end to end."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest

from policies.openvla import (
    OPENVLA_PROMPT,
    OpenVLAPolicy,
    bin_centers,
    decode_action_tokens,
    gripper_to_ours,
    normalized_to_token_ids,
    select_statistics,
    token_ids_to_normalized,
    unnormalize,
)
from wm_env.errors import UnknownNameError

pytestmark = pytest.mark.filterwarnings("ignore:.*tokens outside the action range")

LLAMA_VOCAB = 32000  # OpenVLA: action tokens are ids 31744..31999

# --------------------------------------------------------------------------- pure functions


def test_bin_centers_are_midpoints_of_256_edges_in_minus_one_one():
    centers = bin_centers()
    assert centers.shape == (255,)
    assert centers[0] == pytest.approx(-1 + 1 / 255) and centers[-1] == pytest.approx(1 - 1 / 255)
    np.testing.assert_allclose(np.diff(centers), 2 / 255)


def test_token_ids_map_to_bins_from_the_end_of_the_vocabulary():
    centers = bin_centers()
    tokens = np.array([31999, 31998, 31872, 31745, 31744, 100, 32005])
    expected = centers[[0, 1, 127, 254, 254, 254, 0]]  # 31744 -> index 255, clipped to 254
    np.testing.assert_array_equal(token_ids_to_normalized(tokens, LLAMA_VOCAB), expected)
    np.testing.assert_array_equal(
        token_ids_to_normalized(np.array([299, 44]), 300), centers[[0, 254]]
    )


def test_action_tokenizer_round_trip_is_within_half_a_bin():
    actions = np.random.default_rng(0).uniform(-1, 1, (500, 7))
    actions[0] = [-1, 1, 0, -0.5, 0.5, 1e-9, -1e-9]
    tokens = normalized_to_token_ids(actions, LLAMA_VOCAB)
    assert tokens.min() >= 31744 and tokens.max() <= 31999
    decoded = token_ids_to_normalized(tokens, LLAMA_VOCAB)
    assert np.abs(decoded - actions).max() <= 1 / 255 + 1e-12


def test_unnormalize_maps_minus_one_one_to_q01_q99_except_the_gripper():
    q01 = np.array([-0.02, -0.03, -0.01, -0.1, -0.2, -0.3, 0.0])
    q99 = np.array([0.02, 0.05, 0.01, 0.1, 0.2, 0.5, 1.0])
    normalized = np.array([[-1, 1, 0, 0.5, -0.5, 1, 0.7]])
    raw = unnormalize(normalized, q01, q99)
    np.testing.assert_allclose(raw[0, :6], [-0.02, 0.05, 0.0, 0.05, -0.1, 0.5])
    assert raw[0, 6] == 0.7  # the gripper is not normalized
    every = unnormalize(normalized, q01, q99, mask=np.ones(7, bool))
    assert every[0, 6] == pytest.approx(0.85)


def test_gripper_conventions_map_to_minus_one_open_plus_one_close():
    np.testing.assert_array_equal(
        gripper_to_ours(np.array([1.0, 0.0, 0.9, 0.2]), "bridge"), [-1, 1, -1, 1]
    )
    np.testing.assert_allclose(
        gripper_to_ours(np.array([1.0, 0.25]), "bridge", binarize=False), [-1, 0.5]
    )
    np.testing.assert_array_equal(gripper_to_ours(np.array([1.0, -1.0]), "signed_open"), [-1, 1])
    np.testing.assert_array_equal(gripper_to_ours(np.array([-0.4, 0.3]), "ours"), [-1, 1])
    with pytest.raises(UnknownNameError, match="did you mean 'bridge'"):
        gripper_to_ours(np.array([1.0]), "bridg")


NORM_STATS = {
    "bridge_orig": {"action": {"q01": [-0.1] * 7, "q99": [0.3] * 7, "mask": [True] * 6 + [False]}},
    "sim64": {"action": {"q01": [-1.0] * 7, "q99": [1.0] * 7}},
}


def test_select_statistics_by_unnorm_key():
    stats = select_statistics(NORM_STATS, "bridge_orig")
    np.testing.assert_array_equal(stats["q99"], [0.3] * 7)
    assert stats["mask"].tolist() == [True] * 6 + [False]
    assert select_statistics(NORM_STATS, "sim64")["mask"].tolist() == [True] * 6 + [
        False
    ]  # default
    single = select_statistics({"only": NORM_STATS["sim64"]}, None)
    np.testing.assert_array_equal(single["q01"], [-1.0] * 7)
    lerobot_style = select_statistics({"action": {"q01": [0] * 7, "q99": [1] * 7}}, None)
    np.testing.assert_array_equal(lerobot_style["q99"], [1] * 7)
    with pytest.raises(ValueError, match="bridge_orig, sim64"):
        select_statistics(NORM_STATS, None)
    with pytest.raises(UnknownNameError, match="did you mean 'bridge_orig'"):
        select_statistics(NORM_STATS, "bridge_orgi")
    with pytest.raises(ValueError, match="7 values"):
        select_statistics({"x": {"action": {"q01": [0] * 6, "q99": [1] * 6}}}, "x")


def test_decode_action_tokens_end_to_end_arithmetic():
    centers = bin_centers()
    index = np.array([0, 254, 127, 100, 200, 50, 254])  # gripper bin center ~ +1: Bridge "open"
    tokens = LLAMA_VOCAB - 1 - index
    stats = select_statistics(NORM_STATS, "bridge_orig")
    action = decode_action_tokens(tokens, LLAMA_VOCAB, stats)
    expected = 0.5 * (centers[index[:6]] + 1) * 0.4 - 0.1
    np.testing.assert_allclose(action[:6], expected, rtol=1e-6)
    assert action[6] == -1.0 and action.dtype == np.float32
    closed = decode_action_tokens(
        LLAMA_VOCAB - 1 - np.array([0, 0, 0, 0, 0, 0, 127]), LLAMA_VOCAB, stats
    )
    assert closed[6] == 1.0  # bin center ~0: Bridge "close" -> our +1
    wide = {"q01": np.full(7, -5.0), "q99": np.full(7, 5.0), "mask": np.ones(7, bool)}
    assert (
        np.abs(decode_action_tokens(tokens, LLAMA_VOCAB, wide)).max() == 1.0
    )  # clipped to the space
    with pytest.raises(ValueError, match="7 action tokens"):
        decode_action_tokens(tokens[:5], LLAMA_VOCAB, stats)


# --------------------------------------------------------------------------- a tiny VLM

VOCAB = 300  # 44 words + 256 action tokens (ids 44..299)
WORDS = [
    "<unk>",
    "<pad>",
    "<s>",
    "</s>",
    "<image>",
    "In:",
    "What",
    "action",
    "should",
    "the",
    "robot",
    "take",
    "to",
]
WORDS += ["Out:", "lift", "red", "cube", "pick", "up", "object?", "cube?"]


def build_tiny_llava(directory, image_blind: bool = False) -> None:
    """Save a random-weight LLaVA (CLIP 16x16 vision, 1-layer Llama, 300-token vocab) + processor."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    vocab = {word: i for i, word in enumerate(WORDS)}
    vocab.update({f"<act{i}>": len(WORDS) + i for i in range(VOCAB - len(WORDS))})
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}
        ),
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy="default",
        image_token="<image>",
        num_additional_image_tokens=1,
    )
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=16,
            patch_size=8,
        ),
        text_config=LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=128,
            initializer_range=0.2,  # large enough that the image changes the greedy tokens
        ),
        image_token_index=vocab["<image>"],
        vision_feature_select_strategy="default",
        pad_token_id=vocab["<pad>"],
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config)
    if image_blind:  # every image gives the same features: the model ignores its image
        with torch.no_grad():
            model.model.multi_modal_projector.linear_2.weight.zero_()
    model.save_pretrained(directory)
    processor.save_pretrained(directory)


@pytest.fixture(scope="module")
def tiny_vla(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny_llava") / "model"
    build_tiny_llava(directory)
    (directory / "dataset_statistics.json").write_text(json.dumps(NORM_STATS))
    return directory


def observation(value: int, instruction: str = "lift the red cube") -> dict:
    image = np.zeros((64, 64, 3), np.uint8)
    image[: 32 + value % 32] = value
    return {"image": image, "instruction": instruction}


def reference_tokens(directory, image: np.ndarray, instruction: str) -> np.ndarray:
    """Greedy 7 tokens straight from transformers, without the runner."""
    import torch
    from PIL import Image
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(directory).eval()
    processor = AutoProcessor.from_pretrained(directory)
    text = "<image>" + OPENVLA_PROMPT.format(instruction=instruction)
    inputs = processor(text=text, images=Image.fromarray(image), return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=7, min_new_tokens=7, do_sample=False)
    return out[0, inputs["input_ids"].shape[1] :].numpy()


def test_runner_matches_a_direct_transformers_generate(tiny_vla):
    from policies.registry import load_policy

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no "ignores the image" warning here
        warnings.filterwarnings("ignore", message=".*(torchvision|tokens outside).*")
        policy = load_policy(str(tiny_vla), unnorm_key="bridge_orig")
    assert isinstance(policy, OpenVLAPolicy) and policy.vocab_size == VOCAB
    obs = observation(200)
    policy.reset(obs["instruction"])
    tokens = reference_tokens(tiny_vla, obs["image"], obs["instruction"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        action = policy.act(obs)
    # a random model may write non-action tokens: clipped to the end bins, with a warning
    outside = [w for w in caught if "outside the action range" in str(w.message)]
    assert len(outside) == int((tokens < VOCAB - 256).any())
    assert action.shape == (7,) and action.dtype == np.float32 and np.abs(action).max() <= 1
    np.testing.assert_array_equal(policy.last_tokens, tokens)
    stats = select_statistics(NORM_STATS, "bridge_orig")
    np.testing.assert_array_equal(action, decode_action_tokens(tokens, VOCAB, stats))
    np.testing.assert_array_equal(policy.act(obs), action)  # greedy: deterministic


def test_runner_sees_the_image_and_honours_the_requests_unnorm_key(tiny_vla):
    policy = OpenVLAPolicy.from_pretrained(tiny_vla, unnorm_key="bridge_orig", startup_check=False)
    assert policy.check_image_sensitivity()
    policy.act(observation(10))
    first = policy.last_tokens
    policy.act(observation(250))
    assert not np.array_equal(first, policy.last_tokens)
    bridge = policy.act(observation(250))
    sim = policy.act(observation(250) | {"unnorm_key": "sim64"})
    tokens = policy.last_tokens
    np.testing.assert_array_equal(
        sim, decode_action_tokens(tokens, VOCAB, select_statistics(NORM_STATS, "sim64"))
    )
    np.testing.assert_allclose(
        sim[:6], (bridge[:6] - 0.1) / 0.2, atol=1e-5
    )  # [-0.1, 0.3] vs [-1, 1]
    with pytest.raises(UnknownNameError, match="did you mean 'sim64'"):
        policy.act(observation(250) | {"unnorm_key": "sim46"})


def test_runner_warns_when_the_model_ignores_the_image(tmp_path):
    build_tiny_llava(tmp_path, image_blind=True)
    with pytest.warns(UserWarning, match="ignore the image"):
        policy = OpenVLAPolicy.from_pretrained(tmp_path, statistics=NORM_STATS, unnorm_key="sim64")
    with pytest.warns(UserWarning, match="ignore the image"):
        assert not policy.check_image_sensitivity()


def test_runner_options_and_bad_input(tiny_vla, tmp_path):
    policy = OpenVLAPolicy.from_pretrained(
        tiny_vla,
        unnorm_key="sim64",
        resize=32,
        gripper="ours",
        binarize_gripper=False,
        startup_check=False,
    )
    action = policy.act(observation(120))
    assert action.shape == (7,)
    assert action[6] == pytest.approx(
        bin_centers()[np.clip(VOCAB - policy.last_tokens[6] - 1, 0, 254)]
    )
    with pytest.raises(ValueError, match="uint8"):
        policy.act({"image": np.zeros((8, 8, 3), np.float32), "instruction": "lift"})
    with pytest.raises(ValueError, match="instruction"):
        policy.act({"image": np.zeros((8, 8, 3), np.uint8), "instruction": ""})
    with pytest.raises(ValueError, match="several datasets"):
        OpenVLAPolicy.from_pretrained(tiny_vla, startup_check=False)
    with pytest.raises(UnknownNameError, match="dtype"):
        OpenVLAPolicy.from_pretrained(tiny_vla, dtype="float8", unnorm_key="sim64")
    with pytest.raises(ValueError, match="does not exist"):
        OpenVLAPolicy.from_pretrained(tmp_path / "missing")
    with pytest.raises(ValueError, match=r"\{instruction\}"):
        OpenVLAPolicy.from_pretrained(
            tiny_vla, unnorm_key="sim64", prompt="What now?", startup_check=False
        )


CUSTOM_CONFIG = """from transformers import LlavaConfig


class VLAConfig(LlavaConfig):
    model_type = "my_custom_vla"
"""
CUSTOM_MODEL = """from transformers import LlavaForConditionalGeneration

from .configuration_vla import VLAConfig


class VLAForActionPrediction(LlavaForConditionalGeneration):
    config_class = VLAConfig
"""


def test_custom_code_loads_only_with_trust_remote_code(tiny_vla, tmp_path, monkeypatch):
    """OpenVLA ships its model as custom code (``auto_map``); a stand-in subclass of LLaVA here."""
    import sys

    import transformers.dynamic_module_utils as dynamic

    directory = tmp_path / "custom"
    shutil.copytree(tiny_vla, directory)
    (directory / "configuration_vla.py").write_text(CUSTOM_CONFIG)
    (directory / "modeling_vla.py").write_text(CUSTOM_MODEL)
    config = json.loads((directory / "config.json").read_text())
    config["model_type"] = "my_custom_vla"
    config["auto_map"] = {
        "AutoConfig": "configuration_vla.VLAConfig",
        "AutoModelForVision2Seq": "modeling_vla.VLAForActionPrediction",
    }
    (directory / "config.json").write_text(json.dumps(config))
    # save_pretrained writes LLaVA's legacy key names, which transformers renames only for the
    # "llava" model type: store the weights under the model's own names for the custom type
    from safetensors.torch import save_file
    from transformers import LlavaForConditionalGeneration

    state = LlavaForConditionalGeneration.from_pretrained(tiny_vla).state_dict()
    save_file(
        {k: v.clone().contiguous() for k, v in state.items()}, directory / "model.safetensors"
    )
    with pytest.raises(ValueError, match="trust_remote_code"):
        OpenVLAPolicy.from_pretrained(directory, unnorm_key="sim64")
    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "modules"))  # not ~/.cache
    monkeypatch.setattr(sys, "path", list(sys.path))
    policy = OpenVLAPolicy.from_pretrained(directory, trust_remote_code=True, unnorm_key="sim64")
    assert type(policy.model).__name__ == "VLAForActionPrediction"
    reference = OpenVLAPolicy.from_pretrained(tiny_vla, unnorm_key="sim64", startup_check=False)
    np.testing.assert_array_equal(policy.act(observation(90)), reference.act(observation(90)))


def test_openvla_checkpoints_get_llamas_empty_token_before_the_action_tokens(monkeypatch):
    """OpenVLA's predict_action appends token 29871 to the prompt; without it the 7 action
    tokens come out shifted by one. A scripted model answers the right tokens only when its
    prompt ends in 29871, so the off-by-one would show."""
    import types

    import torch

    import policies.openvla as openvla

    right = np.array([31990, 31900, 31800, 31700, 31744, 31872, 31999])  # 7 action tokens
    shifted = np.array([29871, *right[:-1]])  # what a prompt without the empty token yields

    class Scripted(torch.nn.Module):
        def __init__(self, model_type: str):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))
            self.config = types.SimpleNamespace(model_type=model_type, architectures=None)

        def generate(self, input_ids, **kwargs):
            answer = right if input_ids[0, -1].item() == 29871 else shifted
            return torch.cat([input_ids, torch.as_tensor(answer)[None]], dim=1)

    class Processor:
        tokenizer = types.SimpleNamespace(vocab_size=32000)

        def __call__(self, text, images, return_tensors):
            return {
                "input_ids": torch.tensor([[1, 512, 13, 29901]]),
                "attention_mask": torch.ones(1, 4),
            }

    for model_type, expected in (("openvla", right), ("llava", shifted)):
        monkeypatch.setattr(
            openvla,
            "load_vlm",
            lambda *a, model_type=model_type, **k: (Scripted(model_type), Processor()),
        )
        policy = OpenVLAPolicy.from_pretrained("any", statistics=None, startup_check=False)
        policy.reset("lift the red cube")
        policy.act(observation(3))
        np.testing.assert_array_equal(policy.last_tokens, expected)
    monkeypatch.setattr(openvla, "load_vlm", lambda *a, **k: (Scripted("openvla"), Processor()))
    policy = OpenVLAPolicy.from_pretrained(
        "any", statistics=None, startup_check=False, prompt_suffix_ids=()
    )
    assert policy.prompt_suffix_ids == ()  # the caller's choice wins, for OpenVLA too
