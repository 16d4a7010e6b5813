"""The VLM judge's question sent to a served model over an OpenAI-compatible chat API (e.g. vLLM).

Frames go as base64 PNG data URLs in one user message, followed by the question of
:class:`judges.prompt.PromptConfig` (the same one the local judge asks). Each sample asks for
a short answer with ``logprobs``: when the server returns the first token's top log-probabilities,
``p(yes) = P(yes tokens) / (P(yes tokens) + P(no tokens))`` (tokens matched case-insensitively,
ignoring spaces); the sample's vote is the yes/no word of the text answer (the server did the
sampling), else ``p(yes) >= 0.5``. Without log-probabilities the text alone decides (score 1 or 0).

Failures are never verdicts of failure: a server that is down, times out or answers an HTTP
error (after the client's retries with exponential backoff) makes the verdict abstain with the
error as its reason, without sending the remaining samples; with ``on_error="raise"`` it raises
:class:`judges.base.JudgeError` instead. A sample whose answer has no yes/no (nor yes/no
log-probabilities) does not vote; a verdict abstains when no sample voted.
"""

from __future__ import annotations

import base64
import io
import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from judges.base import JudgeError, Verdict, check_judge_input
from judges.prompt import (
    PromptConfig,
    SampleAnswer,
    majority_vote,
    resize_frames,
    subsample_indices,
    yes_no_from_text,
)

ON_ERROR = ("abstain", "raise")


@dataclass(frozen=True)
class OpenAIJudgeConfig:
    """A served VLM (OpenAI-compatible ``/v1/chat/completions``) as a judge.

    Attributes:
        base_url: the API root, e.g. ``http://localhost:8000/v1`` (vLLM's ``vllm serve``).
        model: the served model's name.
        api_key: sent as a bearer token (vLLM accepts anything unless started with a key);
            empty: read ``OPENAI_API_KEY``, else ``EMPTY``.
        prompt: the question and the frames shown (its template hash goes into results).
        num_samples: samples per verdict (majority vote).
        temperature: the server's sampling temperature.
        max_tokens: answer length limit (the yes/no should come first).
        top_logprobs: alternatives returned per answer token (vLLM's default limit is 20).
        timeout_s: seconds per request before it counts as failed.
        max_retries: retries (exponential backoff) on connection errors, 408/409/429 and 5xx.
        on_error: ``abstain`` (record the error in the verdict) or ``raise`` (JudgeError).
        seed: request seed (sample ``k`` sends ``seed + k``) for servers that honour it.
    """

    base_url: str
    model: str
    api_key: str = ""
    prompt: PromptConfig = field(default_factory=PromptConfig)
    num_samples: int = 5
    temperature: float = 0.0
    max_tokens: int = 4
    top_logprobs: int = 20
    timeout_s: float = 60.0
    max_retries: int = 2
    on_error: str = "abstain"
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://; got {self.base_url!r}")
        if not self.model:
            raise ValueError("model (the served model's name) must not be empty")
        if self.num_samples < 1 or self.max_tokens < 1 or self.max_retries < 0:
            raise ValueError(
                f"need num_samples >= 1, max_tokens >= 1, max_retries >= 0; got {self.num_samples}, {self.max_tokens}, {self.max_retries}"
            )
        if not (self.timeout_s > 0 and math.isfinite(self.timeout_s)):
            raise ValueError(f"timeout_s must be a positive number; got {self.timeout_s}")
        if not 0 <= self.top_logprobs <= 20:
            raise ValueError(f"top_logprobs must be in [0, 20]; got {self.top_logprobs}")
        if self.on_error not in ON_ERROR:
            from wm_env.errors import lookup

            lookup("on_error", self.on_error, dict.fromkeys(ON_ERROR))


def png_data_url(image) -> str:
    """A PIL image as a ``data:image/png;base64,...`` URL."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def answer_from_logprobs(top: list[tuple[str, float]], prompt: PromptConfig) -> float | None:
    """``p(yes) / (p(yes) + p(no))`` over ``(token, logprob)`` alternatives, or None without either."""
    yes = {w.lower() for w in prompt.yes_words}
    no = {w.lower() for w in prompt.no_words}
    p_yes = sum(math.exp(lp) for token, lp in top if token.strip().lower() in yes)
    p_no = sum(math.exp(lp) for token, lp in top if token.strip().lower() in no)
    return p_yes / (p_yes + p_no) if p_yes + p_no > 0 else None


class OpenAIJudge:
    """Asks a served VLM whether the episode succeeded (see the module docstring).

    Attributes:
        name: ``openai:<model>@<base_url>``.
        prompt_hash: SHA-256 of the prompt template.
    """

    def __init__(self, config: OpenAIJudgeConfig) -> None:
        try:
            from openai import OpenAI
        except ImportError as error:  # pragma: no cover - the hf extra installs it
            raise ImportError(
                "the OpenAI-compatible judge needs the `openai` package: pip install 'wm-gym[hf]'"
            ) from error
        self.config = config
        self.client = OpenAI(
            base_url=config.base_url,
            api_key=config.api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY",
            timeout=config.timeout_s,
            max_retries=config.max_retries,
        )
        self.name = f"openai:{config.model}@{config.base_url}"
        self.prompt_hash = config.prompt.sha256

    def messages(self, frames: np.ndarray, instruction: str) -> list[dict[str, Any]]:
        """One user turn: the frames as PNG data URLs, then the question."""
        prompt = self.config.prompt
        images = [
            {"type": "image_url", "image_url": {"url": png_data_url(im)}}
            for im in resize_frames(frames, prompt.image_size)
        ]
        question = {"type": "text", "text": prompt.render(instruction, len(frames))}
        return [{"role": "user", "content": [*images, question]}]

    def request(self, frames: np.ndarray, instruction: str, seed: int):
        """One chat completion on the shown frames ``(k, H, W, 3)``.

        Raises:
            JudgeError: the server is down, timed out, or answered an HTTP error (after retries).
        """
        import openai

        config = self.config
        try:
            return self.client.chat.completions.create(
                model=config.model,
                messages=self.messages(frames, instruction),
                max_tokens=config.max_tokens,
                temperature=config.temperature,
                logprobs=config.top_logprobs > 0,
                top_logprobs=config.top_logprobs or None,
                seed=seed,
            )
        except openai.APIError as error:
            raise JudgeError(f"{self.name}: {type(error).__name__}: {error}") from error

    def parse(self, response) -> SampleAnswer:
        """A completion -> one sample's vote and ``p(yes)`` (no vote without a yes/no)."""
        prompt = self.config.prompt
        try:
            choice = response.choices[0]
            text = choice.message.content or ""
            logprobs = getattr(choice, "logprobs", None)
            content = getattr(logprobs, "content", None) or []
            p_yes = None
            if content:
                first = content[0]
                top = [(t.token, t.logprob) for t in (first.top_logprobs or [])]
                p_yes = answer_from_logprobs(top or [(first.token, first.logprob)], prompt)
        except (AttributeError, IndexError, TypeError) as error:
            return SampleAnswer(None, None, f"malformed response ({error})")
        vote = yes_no_from_text(text, prompt)
        if vote is None and p_yes is not None:
            vote = p_yes >= 0.5
        if vote is None:
            return SampleAnswer(None, None, f"answer without yes/no: {text[:60]!r}")
        return SampleAnswer(vote, p_yes if p_yes is not None else float(vote))

    def judge(self, frames: np.ndarray, instruction: str) -> Verdict:
        """Majority vote of ``num_samples`` answers on subsampled frames ``(T, H, W, 3)``.

        After a transport error (down, timeout, HTTP error) the remaining samples are not sent:
        the verdict abstains with the error (or raises it with ``on_error="raise"``).
        """
        frames = check_judge_input(frames, instruction)
        prompt = self.config.prompt
        answers = []
        for k in range(self.config.num_samples):
            shown = subsample_indices(
                len(frames), prompt.stride, k % prompt.stride, prompt.max_frames
            )
            try:
                response = self.request(frames[shown], instruction, self.config.seed + k)
            except JudgeError as error:
                if self.config.on_error == "raise":
                    raise
                return Verdict.abstain(f"endpoint error: {error}")
            answers.append(self.parse(response))
        return majority_vote(answers)
