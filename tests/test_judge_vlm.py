"""The VLM judge on a tiny random-weight Qwen2-VL built offline, and the shared prompt / vote logic."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from judges.base import Verdict
from judges.prompt import (
    PromptConfig,
    SampleAnswer,
    majority_vote,
    subsample_indices,
    yes_no_from_text,
)

SPECIAL = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
INSTRUCTION = "lift the red cube"


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory):
    """A random-weight Qwen2-VL (2 text layers of width 32, 1 vision layer) saved to a local dir."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2VLConfig, Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    corpus = ["Yes No yes no did the robot lift the red cube user assistant frames video"]
    tok.train_from_iterator(corpus * 10, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
    )
    ids = tokenizer.convert_tokens_to_ids
    config = Qwen2VLConfig(
        text_config={
            "vocab_size": tok.get_vocab_size(),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "rope_parameters": {
                "rope_type": "default",
                "mrope_section": [1, 1, 2],
                "rope_theta": 10000.0,
            },
        },
        vision_config={
            "depth": 1,
            "embed_dim": 32,
            "hidden_size": 32,
            "num_heads": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("vlm") / "tiny-qwen2-vl"
    Qwen2VLForConditionalGeneration(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    Qwen2VLImageProcessorPil(min_pixels=28 * 28, max_pixels=56 * 56).save_pretrained(path)
    return path


def small_prompt(**kwargs) -> PromptConfig:
    return PromptConfig(**{"stride": 4, "max_frames": 4, "image_size": 28, **kwargs})


@pytest.fixture(scope="module")
def vlm_judge(tiny_vlm):
    from judges.vlm import VLMJudge

    return VLMJudge.from_pretrained(
        tiny_vlm, prompt=small_prompt(), num_samples=3, min_answer_mass=0.0
    )


def episode(num_frames: int = 10) -> np.ndarray:
    """Frame ``i`` is a flat grey of level ``20 * i`` (so shown frames can be identified)."""
    return np.stack([np.full((16, 16, 3), 20 * i, np.uint8) for i in range(num_frames)])


# ---------------------------------------------------------------------- prompt and frames
def test_subsample_indices_take_every_nth_frame_from_the_offset_and_keep_the_last():
    assert subsample_indices(10, 4, 0, 8).tolist() == [0, 4, 8, 9]
    assert subsample_indices(10, 4, 1, 8).tolist() == [1, 5, 9]
    assert subsample_indices(9, 4, 0, 8).tolist() == [0, 4, 8]  # the last is already in
    assert subsample_indices(3, 5, 4, 8).tolist() == [2]  # offset past the end: the last only
    thinned = subsample_indices(100, 1, 0, 5)
    assert thinned.tolist() == [0, 25, 50, 74, 99]  # evenly thinned, first and last kept
    with pytest.raises(ValueError, match="at least one frame"):
        subsample_indices(0, 4, 0, 8)


def test_prompt_config_renders_the_instruction_and_hashes_the_template():
    prompt = PromptConfig()
    text = prompt.render("  push the blue cube to the left ", 5)
    assert "push the blue cube to the left" in text and "5 images" in text
    assert len(prompt.sha256) == 64
    assert PromptConfig(template="Task: {instruction}?").sha256 != prompt.sha256
    with pytest.raises(ValueError, match="instruction"):
        PromptConfig(template="Did it work?")
    with pytest.raises(ValueError, match="only use"):
        PromptConfig(template="{instruction} {other}")
    with pytest.raises(ValueError, match="both yes and no"):
        PromptConfig(yes_words=("Yes",), no_words=("yes",))


def test_yes_no_from_text_finds_the_first_answer_word():
    prompt = PromptConfig()
    assert yes_no_from_text("Yes.", prompt) is True
    assert yes_no_from_text("  no, the cube fell", prompt) is False
    assert yes_no_from_text("The answer is: NO", prompt) is False
    assert yes_no_from_text("Nothing happened; yesterday", prompt) is None  # not whole words
    assert yes_no_from_text("", prompt) is None


def test_majority_vote_counts_votes_breaks_ties_to_success_and_abstains_when_nobody_answers():
    verdict = majority_vote(
        [SampleAnswer(True, 0.9), SampleAnswer(True, 0.6), SampleAnswer(False, 0.2)]
    )
    assert verdict.success is True and verdict.score == pytest.approx((0.9 + 0.6 + 0.2) / 3)
    assert "2 yes / 1 no" in verdict.rationale
    assert majority_vote([SampleAnswer(False, 0.1), SampleAnswer(False, 0.4)]).success is False
    tie = majority_vote([SampleAnswer(True, 0.7), SampleAnswer(False, 0.1)])
    assert tie.success is True  # ties go to the higher score
    partial = majority_vote([SampleAnswer(None, None, "timeout"), SampleAnswer(False, None)])
    assert partial.success is False and partial.score == 0.0 and "1 without" in partial.rationale
    nobody = majority_vote([SampleAnswer(None, None, "timeout"), SampleAnswer(None, None, "?")])
    assert nobody.success is None and nobody.abstained and "timeout" in nobody.rationale


# ---------------------------------------------------------------------- the local VLM
def test_vlm_judge_gives_a_deterministic_score_in_0_1(vlm_judge):
    frames = episode()
    first = vlm_judge.judge(frames, INSTRUCTION)
    assert isinstance(first, Verdict) and first.success in (True, False)
    assert 0.0 <= first.score <= 1.0
    assert vlm_judge.judge(frames, INSTRUCTION) == first
    assert vlm_judge.name == "vlm:tiny-qwen2-vl" and len(vlm_judge.prompt_hash) == 64
    p_yes, p_no = vlm_judge.answer_probabilities(frames[[0, 4, 8, 9]], INSTRUCTION)
    assert 0 < p_yes < 1 and 0 < p_no < 1  # real next-token probabilities of the tiny model
    from judges.vlm import VLMJudge, VLMJudgeConfig

    one = VLMJudgeConfig(model=vlm_judge.config.model, prompt=small_prompt(), num_samples=1,
                         min_answer_mass=0.0)  # fmt: skip
    single = VLMJudge(one, vlm_judge.model, vlm_judge.processor).judge(frames, INSTRUCTION)
    assert single.score == pytest.approx(p_yes / (p_yes + p_no))
    assert single.success == (single.score >= 0.5)


def test_load_judge_detects_a_vlm_checkpoint(tiny_vlm):
    from judges.registry import load_judge
    from judges.vlm import VLMJudge

    judge = load_judge(str(tiny_vlm), num_samples=1, prompt={"image_size": 28})
    assert isinstance(judge, VLMJudge) and judge.config.prompt.image_size == 28
    with pytest.raises(KeyError, match="did you mean 'num_samples'"):
        load_judge("vlm", path=str(tiny_vlm), num_sample=1)


def test_vlm_judge_shows_the_subsampled_frames_with_the_instruction(vlm_judge, monkeypatch):
    processor, seen = vlm_judge.processor, []

    class Recording:
        tokenizer = processor.tokenizer

        def apply_chat_template(self, *args, **kwargs):
            return processor.apply_chat_template(*args, **kwargs)

        def __call__(self, text, images, return_tensors="pt"):
            seen.append((text[0], [int(np.asarray(im).mean()) for im in images]))
            return processor(text=text, images=images, return_tensors=return_tensors)

    monkeypatch.setattr(vlm_judge, "processor", Recording())
    vlm_judge.judge(episode(10), INSTRUCTION)
    shown = [levels for _, levels in seen]
    assert shown == [[0, 80, 160, 180], [20, 100, 180], [40, 120, 180]]  # offsets 0, 1, 2
    for text, levels in seen:
        assert INSTRUCTION in text
        assert text.count("<|vision_start|>") == len(levels)
        assert text.endswith("<|im_start|>assistant\n")


class _Biased(torch.nn.Module):
    """The tiny model with ``bias`` added to the logits of some tokens."""

    def __init__(self, model, token_ids, bias: float) -> None:
        super().__init__()
        self.inner, self.token_ids, self.bias = model, token_ids, bias

    @property
    def device(self):
        return self.inner.device

    def forward(self, **inputs):
        out = self.inner(**inputs)
        out.logits[..., self.token_ids] += self.bias
        return out


def test_vlm_judge_follows_the_yes_no_token_probabilities(vlm_judge):
    from judges.vlm import VLMJudge

    config, processor = vlm_judge.config, vlm_judge.processor
    yes = VLMJudge(config, _Biased(vlm_judge.model, vlm_judge.yes_ids, 20.0), processor)
    verdict = yes.judge(episode(), INSTRUCTION)
    assert verdict.success is True and verdict.score > 0.99 and "3 yes / 0 no" in verdict.rationale
    no = VLMJudge(config, _Biased(vlm_judge.model, vlm_judge.no_ids, 20.0), processor)
    verdict = no.judge(episode(), INSTRUCTION)
    assert verdict.success is False and verdict.score < 0.01


def test_vlm_judge_abstains_when_the_model_does_not_answer_yes_or_no(vlm_judge):
    from judges.vlm import VLMJudge, VLMJudgeConfig

    # The random model spreads its probability over ~300 tokens: yes + no is far below 0.5.
    strict = VLMJudge(
        VLMJudgeConfig(model=vlm_judge.config.model, prompt=small_prompt(), num_samples=2,
                       min_answer_mass=0.5),
        vlm_judge.model,
        vlm_judge.processor,
    )  # fmt: skip
    verdict = strict.judge(episode(), INSTRUCTION)
    assert verdict.success is None and "yes/no probability" in verdict.rationale


def test_vlm_judge_sampling_temperature_draws_seeded_votes(vlm_judge):
    from judges.vlm import VLMJudge, VLMJudgeConfig

    def judge_with(seed):
        config = VLMJudgeConfig(model=vlm_judge.config.model, prompt=small_prompt(),
                                num_samples=5, temperature=1.0, seed=seed, min_answer_mass=0.0)  # fmt: skip
        return VLMJudge(config, vlm_judge.model, vlm_judge.processor).judge(episode(), INSTRUCTION)

    verdicts = [judge_with(seed) for seed in range(6)]
    assert judge_with(0) == verdicts[0]  # seeded
    # The random model's p(yes) is near 0.5: drawn votes differ between seeds, the score does not.
    assert len({v.rationale.split(";")[0] for v in verdicts}) > 1
    assert len({round(v.score, 9) for v in verdicts}) == 1


def test_vlm_judge_rejects_bad_input_and_bad_config(vlm_judge, tmp_path):
    from judges.vlm import VLMJudgeConfig

    with pytest.raises(ValueError, match="uint8"):
        vlm_judge.judge(np.zeros((0, 16, 16, 3), np.uint8), INSTRUCTION)
    with pytest.raises(ValueError, match="uint8"):
        vlm_judge.judge(np.zeros((3, 16, 16, 3), np.float32), INSTRUCTION)
    with pytest.raises(ValueError, match="uint8"):
        vlm_judge.judge(np.zeros((3, 16, 16)), INSTRUCTION)
    with pytest.raises(ValueError, match="instruction"):
        vlm_judge.judge(episode(), "  ")
    with pytest.raises(ValueError, match="num_samples"):
        VLMJudgeConfig(model=tmp_path, num_samples=0)
    with pytest.raises(KeyError, match="did you mean 'bf16'"):
        VLMJudgeConfig(model=tmp_path, dtype="bf61")
    from judges.vlm import VLMJudge

    with pytest.raises(ValueError, match="not a local directory"):
        VLMJudge.from_pretrained(tmp_path / "missing")
