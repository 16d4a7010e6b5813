"""A local vision-language model as a success judge (transformers, image-text-to-text).

The model (e.g. Qwen2.5-VL or Qwen2-VL) loads from a LOCAL directory (no hub, no downloads).
It is shown subsampled frames of the episode with the question of :class:`judges.prompt.
PromptConfig` and answers from the next-token distribution after the assistant turn starts:
``p(yes) = sum of the yes tokens' probabilities / (that + the no tokens')``. No text is
generated, so a verdict costs one forward pass per sample.

``num_samples`` samples see the frames from different offsets (``k % stride``); with
``temperature > 0`` each sample's vote is also drawn from its (tempered) yes/no probabilities
with a seeded generator, otherwise it votes ``p(yes) >= 0.5``. A sample whose yes + no
probability mass is below ``min_answer_mass`` did not answer the question and does not vote; if
none voted the verdict abstains. The same frames, instruction and seed give the same verdict.

Processors: :func:`transformers.AutoProcessor` where it loads. Qwen-VL processors also need
the video processor, which needs torchvision (not installable on CPU-only machines here); then
a Qwen-style processor is put together from the checkpoint's tokenizer (with its chat template)
and image processor (:class:`QwenStyleProcessor`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from judges.base import Verdict, check_judge_input
from judges.prompt import (
    PromptConfig,
    SampleAnswer,
    majority_vote,
    resize_frames,
    subsample_indices,
)
from wm_env.options import dtype_name

DTYPES = {"auto": None, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class VLMJudgeConfig:
    """A local image-text-to-text model as a judge.

    Attributes:
        model: local directory of the checkpoint (config, weights, tokenizer, processor).
        prompt: the question and the frames shown (its template hash goes into results).
        num_samples: samples per verdict (majority vote).
        temperature: 0: each sample votes ``p(yes) >= 0.5``; > 0: its vote is drawn from the
            yes/no probabilities sharpened or flattened by this temperature.
        seed: seed of the votes drawn when ``temperature > 0``.
        min_answer_mass: a sample whose p(yes) + p(no) is below this did not answer (no vote).
        device: torch device (``cpu``, ``cuda``, ``cuda:1``).
        dtype: ``auto`` (the checkpoint's), ``fp32``, ``bf16`` (GPUs), ``fp16``.
        trust_remote_code: run code shipped with the checkpoint (only when you trust it).
    """

    model: Path
    prompt: PromptConfig = field(default_factory=PromptConfig)
    num_samples: int = 5
    temperature: float = 0.0
    seed: int = 0
    min_answer_mass: float = 0.05
    device: str = "cpu"
    dtype: str = "auto"
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1; got {self.num_samples}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0; got {self.temperature}")
        if not 0.0 <= self.min_answer_mass < 1.0:
            raise ValueError(f"min_answer_mass must be in [0, 1); got {self.min_answer_mass}")
        if self.dtype != "auto":  # fp32 / bf16 / fp16, any spelling of them
            object.__setattr__(self, "dtype", dtype_name(self.dtype, ("fp32", "bf16", "fp16")))


class QwenStyleProcessor:
    """Tokenizer + image processor acting as a Qwen-VL processor (for machines without torchvision).

    Expands each ``<|image_pad|>`` of the chat template's text into as many tokens as the image
    has merged patches, and marks image tokens in ``mm_token_type_ids`` (M-RoPE needs them).
    """

    def __init__(self, tokenizer, image_processor, image_token: str = "<|image_pad|>") -> None:
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError("the checkpoint's tokenizer has no chat template")
        if not hasattr(image_processor, "merge_size"):
            raise ValueError(
                f"{type(image_processor).__name__} is not a Qwen-VL image processor (no merge_size)"
            )
        self.tokenizer, self.image_processor, self.image_token = (
            tokenizer,
            image_processor,
            image_token,
        )
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)

    def apply_chat_template(self, messages: list[dict[str, Any]], **kwargs: Any) -> str:
        return self.tokenizer.apply_chat_template(messages, **kwargs)

    def __call__(self, text: list[str], images: list, return_tensors: str = "pt"):
        from transformers import BatchFeature

        if len(text) != 1:
            raise ValueError("QwenStyleProcessor handles one conversation at a time")
        pixels = self.image_processor(images=images, return_tensors=return_tensors)
        counts = (pixels["image_grid_thw"].prod(-1) // self.image_processor.merge_size**2).tolist()
        parts = text[0].split(self.image_token)
        if len(parts) - 1 != len(counts):
            raise ValueError(f"{len(parts) - 1} image placeholders for {len(counts)} images")
        expanded = parts[0] + "".join(
            self.image_token * n + part for n, part in zip(counts, parts[1:], strict=True)
        )
        tokens = self.tokenizer(expanded, return_tensors=return_tensors, add_special_tokens=False)
        mm_types = (tokens["input_ids"] == self.image_token_id).to(torch.int64)
        return BatchFeature({**tokens, **pixels, "mm_token_type_ids": mm_types})


def load_processor(path: str | os.PathLike, trust_remote_code: bool = False):
    """``AutoProcessor`` of a local checkpoint, or a :class:`QwenStyleProcessor` when it cannot load."""
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

    try:
        return AutoProcessor.from_pretrained(
            path, local_files_only=True, trust_remote_code=trust_remote_code
        )
    except (ImportError, AttributeError, ValueError, TypeError, OSError) as error:
        try:
            return QwenStyleProcessor(
                AutoTokenizer.from_pretrained(
                    path, local_files_only=True, trust_remote_code=trust_remote_code
                ),
                AutoImageProcessor.from_pretrained(
                    path, local_files_only=True, trust_remote_code=trust_remote_code
                ),
            )
        except Exception as fallback:
            raise ValueError(
                f"cannot load a processor from {path}: AutoProcessor failed ({error!r}) and so did "
                f"a tokenizer + image processor ({fallback!r})"
            ) from None


def answer_token_ids(tokenizer, words: tuple[str, ...]) -> list[int]:
    """Distinct first-token ids of ``words`` (how each answer starts)."""
    ids = []
    for word in words:
        encoded = tokenizer.encode(word, add_special_tokens=False)
        if encoded and encoded[0] not in ids:
            ids.append(int(encoded[0]))
    if not ids:
        raise ValueError(f"the tokenizer encodes none of {words}")
    return ids


class VLMJudge:
    """Asks a local VLM whether the episode succeeded (see the module docstring).

    Attributes:
        name: ``vlm:<checkpoint directory name>``.
        prompt_hash: SHA-256 of the prompt template.
    """

    def __init__(self, config: VLMJudgeConfig, model=None, processor=None) -> None:
        self.config = config
        path = Path(config.model)
        if model is None or processor is None:
            if not path.is_dir():
                raise ValueError(f"VLM checkpoint {str(path)!r} is not a local directory")
            from transformers import AutoModelForImageTextToText

            processor = processor or load_processor(path, config.trust_remote_code)
            model = model or AutoModelForImageTextToText.from_pretrained(
                path,
                local_files_only=True,
                trust_remote_code=config.trust_remote_code,
                dtype=DTYPES[config.dtype] or "auto",
            )
        self.processor = processor
        self.model = model.to(torch.device(config.device)).eval()
        tokenizer = getattr(processor, "tokenizer", processor)
        self.yes_ids = answer_token_ids(tokenizer, config.prompt.yes_words)
        self.no_ids = answer_token_ids(tokenizer, config.prompt.no_words)
        if set(self.yes_ids) & set(self.no_ids):
            raise ValueError(
                f"yes and no answers start with the same token ({self.yes_ids} / {self.no_ids})"
            )
        self.name = f"vlm:{path.name}"
        self.prompt_hash = config.prompt.sha256

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **options: Any) -> VLMJudge:
        """``VLMJudge(VLMJudgeConfig(model=path, **options))``."""
        return cls(VLMJudgeConfig(model=Path(path), **options))

    def messages(self, num_images: int, instruction: str) -> list[dict[str, Any]]:
        """The chat: one user turn with the images, then the question."""
        question = self.config.prompt.render(instruction, num_images)
        content = [{"type": "image"} for _ in range(num_images)]
        return [{"role": "user", "content": [*content, {"type": "text", "text": question}]}]

    @torch.no_grad()
    def answer_probabilities(self, frames: np.ndarray, instruction: str) -> tuple[float, float]:
        """``(p(yes), p(no))`` of the next token for uint8 frames ``(k, H, W, 3)`` (all shown)."""
        prompt = self.config.prompt
        text = self.processor.apply_chat_template(
            self.messages(len(frames), instruction), add_generation_prompt=True, tokenize=False
        )
        inputs = self.processor(
            text=[text], images=resize_frames(frames, prompt.image_size), return_tensors="pt"
        )
        inputs = {
            k: v.to(self.model.device) if torch.is_tensor(v) else v for k, v in inputs.items()
        }
        logits = self.model(**inputs).logits[0, -1].float()  # (V,)
        probs = torch.softmax(logits, dim=-1)
        return float(probs[self.yes_ids].sum()), float(probs[self.no_ids].sum())

    def judge(self, frames: np.ndarray, instruction: str) -> Verdict:
        """Majority vote of ``num_samples`` yes/no answers on subsampled frames ``(T, H, W, 3)``."""
        frames = check_judge_input(frames, instruction)
        config, prompt = self.config, self.config.prompt
        rng = np.random.default_rng(config.seed)
        answers = []
        for k in range(config.num_samples):
            shown = subsample_indices(
                len(frames), prompt.stride, k % prompt.stride, prompt.max_frames
            )
            p_yes, p_no = self.answer_probabilities(frames[shown], instruction)
            answers.append(self._sample_answer(p_yes, p_no, rng))
        return majority_vote(answers)

    def _sample_answer(self, p_yes: float, p_no: float, rng: np.random.Generator) -> SampleAnswer:
        mass = p_yes + p_no
        if mass <= 0 or mass < self.config.min_answer_mass:
            return SampleAnswer(None, None, f"yes/no probability {mass:.3g}")
        score = p_yes / mass
        if self.config.temperature > 0:
            logit = np.log(max(p_yes, 1e-30)) - np.log(max(p_no, 1e-30))
            tempered = 1.0 / (1.0 + np.exp(-logit / self.config.temperature))
            return SampleAnswer(bool(rng.random() < tempered), score)
        return SampleAnswer(score >= 0.5, score)
