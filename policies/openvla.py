"""OpenVLA-style vision-language-action runner: a transformers VLM that writes actions as tokens.

The model reads OpenVLA's prompt and the image and greedily generates 7 tokens, one per action
dimension. The last 256 token ids of the tokenizer's vocabulary are action bins:
``token = vocab_size - digitize(a, linspace(-1, 1, 256))`` when training, and decoding maps
``index = clip(vocab_size - token - 1, 0, 254)`` to the 255 bin centers. Dims 0-5 are then
un-normalized from [-1, 1] with the dataset statistics' q01/q99 (``unnorm_key`` picks the
dataset, as in OpenVLA's ``norm_stats``); the gripper is not normalized and is mapped to our
convention (-1 open, +1 close) from the model's (Bridge: 1 open, 0 close).

The pure functions (:func:`token_ids_to_normalized`, :func:`unnormalize`, :func:`gripper_to_ours`,
:func:`select_statistics`) carry the arithmetic; :class:`OpenVLAPolicy` runs the model.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from policies.base import check_instruction, check_observation
from wm_env.errors import lookup
from wm_env.options import torch_dtype
from wm_env.spaces import ACTION_DIM

N_BINS = 256
OPENVLA_PROMPT = "In: What action should the robot take to {instruction}?\nOut:"
STARTUP_INSTRUCTION = "pick up the object"
DTYPES = ("fp32", "fp16", "bf16")  # the names of wm_env.options, any spelling of them


# --------------------------------------------------------------------------- pure functions


def bin_edges(n_bins: int = N_BINS) -> np.ndarray:
    """``linspace(-1, 1, n_bins)``: float64 ``(n_bins,)`` bin edges."""
    return np.linspace(-1.0, 1.0, n_bins)


def bin_centers(n_bins: int = N_BINS) -> np.ndarray:
    """Midpoints of consecutive :func:`bin_edges`: float64 ``(n_bins - 1,)``."""
    edges = bin_edges(n_bins)
    return (edges[:-1] + edges[1:]) / 2


def normalized_to_token_ids(
    actions: np.ndarray, vocab_size: int, n_bins: int = N_BINS
) -> np.ndarray:
    """OpenVLA's action tokenizer: normalized actions in [-1, 1] ``(..., D)`` -> token ids ``(..., D)``."""
    actions = np.clip(np.asarray(actions, np.float64), -1.0, 1.0)
    return (vocab_size - np.digitize(actions, bin_edges(n_bins))).astype(np.int64)


def token_ids_to_normalized(
    token_ids: np.ndarray, vocab_size: int, n_bins: int = N_BINS
) -> np.ndarray:
    """Token ids ``(..., D)`` -> normalized actions ``(..., D)`` (float64, bin centers in [-1, 1]).

    Ids outside the last ``n_bins`` of the vocabulary are clipped to the nearest end bin, as
    OpenVLA does.
    """
    centers = bin_centers(n_bins)
    index = np.clip(vocab_size - np.asarray(token_ids, np.int64) - 1, 0, len(centers) - 1)
    return centers[index]


def unnormalize(
    normalized: np.ndarray,
    q01: np.ndarray,
    q99: np.ndarray,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Map [-1, 1] back to ``[q01, q99]`` where ``mask`` (default: dims 0-5, not the gripper).

    ``normalized``: ``(..., 7)``; ``q01``, ``q99``, ``mask``: ``(7,)``. Unmasked dims pass through.
    """
    normalized = np.asarray(normalized, np.float64)
    q01, q99 = np.asarray(q01, np.float64), np.asarray(q99, np.float64)
    if mask is None:
        mask = np.arange(normalized.shape[-1]) < ACTION_DIM - 1
    raw = 0.5 * (normalized + 1.0) * (q99 - q01) + q01
    return np.where(np.asarray(mask, bool), raw, normalized)


# How a model's gripper value maps to ours (-1 open, +1 close).
GRIPPER_CONVENTIONS: dict[str, str] = {
    "bridge": "1 open, 0 close (OpenVLA's Bridge / RT-X): ours = 1 - 2 g",
    "signed_open": "+1 open, -1 close: ours = -g",
    "ours": "-1 open, +1 close already: ours = g",
}


def gripper_to_ours(
    value: np.ndarray, convention: str = "bridge", binarize: bool = True
) -> np.ndarray:
    """Convert the gripper value(s) of a model to ours (-1 open, +1 close), optionally binarized.

    ``binarize`` snaps to -1/+1 by sign (0 -> +1, close), as OpenVLA's evaluations do.
    """
    lookup("gripper convention", convention, GRIPPER_CONVENTIONS)
    value = np.asarray(value, np.float64)
    ours = {"bridge": 1.0 - 2.0 * value, "signed_open": -value, "ours": value}[convention]
    if binarize:
        ours = np.where(ours >= 0, 1.0, -1.0)
    return np.clip(ours, -1.0, 1.0)


def load_statistics(source: str | Path | Mapping | None) -> dict | None:
    """Statistics as a dict: given as one, or read from a JSON file (``None`` stays ``None``)."""
    if source is None or isinstance(source, Mapping):
        return None if source is None else dict(source)
    path = Path(source)
    if not path.is_file():
        raise ValueError(f"statistics file {path} does not exist")
    return json.loads(path.read_text())


def select_statistics(statistics: Mapping, unnorm_key: str | None) -> dict[str, np.ndarray]:
    """The action statistics to un-normalize with: ``{"q01", "q99", "mask"}`` float/bool ``(7,)``.

    ``statistics`` is OpenVLA's ``norm_stats`` (``{dataset: {"action": {"q01", "q99", "mask"?}}}``)
    or one dataset's statistics (``{"action": {...}}``, e.g. a LeRobot ``meta/stats.json``).
    ``unnorm_key`` may be omitted when there is one dataset. Without a ``mask``, dims 0-5 are
    un-normalized and the gripper is not.
    """
    if "action" in statistics and isinstance(statistics["action"], Mapping):
        entry = statistics
    else:
        if unnorm_key is None:
            if len(statistics) != 1:
                raise ValueError(
                    f"the model has statistics of several datasets; choose one with unnorm_key: "
                    f"{', '.join(sorted(statistics))}"
                )
            unnorm_key = next(iter(statistics))
        entry = lookup("unnorm_key", unnorm_key, dict(statistics))
    action = entry.get("action") if isinstance(entry, Mapping) else None
    if not isinstance(action, Mapping) or "q01" not in action or "q99" not in action:
        raise ValueError(f"statistics for {unnorm_key!r} need action q01 and q99")
    q01 = np.asarray(action["q01"], np.float64)
    q99 = np.asarray(action["q99"], np.float64)
    default_mask = np.arange(ACTION_DIM) < ACTION_DIM - 1
    mask = np.asarray(action.get("mask", default_mask), bool)
    for key, value in (("q01", q01), ("q99", q99), ("mask", mask)):
        if value.shape != (ACTION_DIM,):
            raise ValueError(f"action {key} must have {ACTION_DIM} values; got shape {value.shape}")
    return {"q01": q01, "q99": q99, "mask": mask}


def decode_action_tokens(
    token_ids: np.ndarray,
    vocab_size: int,
    statistics: Mapping[str, np.ndarray] | None,
    gripper: str = "bridge",
    binarize_gripper: bool = True,
) -> np.ndarray:
    """Seven generated token ids -> our float32 ``(7,)`` action, clipped to [-1, 1].

    ``statistics`` from :func:`select_statistics` (``None``: no un-normalization).
    """
    token_ids = np.asarray(token_ids)
    if token_ids.shape != (ACTION_DIM,):
        raise ValueError(f"expected {ACTION_DIM} action tokens; got shape {token_ids.shape}")
    action = token_ids_to_normalized(token_ids, vocab_size)
    if statistics is not None:
        action = unnormalize(action, statistics["q01"], statistics["q99"], statistics["mask"])
    action[-1] = gripper_to_ours(action[-1], gripper, binarize_gripper)
    return np.clip(action, -1.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------- model loading


def _torch_dtype(dtype: Any):
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    return torch_dtype(dtype, DTYPES)


def load_vlm(path: str | Path, trust_remote_code: bool = False, dtype: Any = "float32"):
    """Load ``(model, processor)`` from a local directory (never the hub).

    Tries ``AutoModelForImageTextToText`` (transformers 5), then ``AutoModelForVision2Seq``
    (older releases). A checkpoint with custom code (``auto_map``, e.g. OpenVLA's Prismatic) is
    loaded only when the caller sets ``trust_remote_code``.
    """
    import transformers

    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"VLM checkpoint directory {path} does not exist")
    torch_dtype = _torch_dtype(dtype)
    try:
        config = transformers.AutoConfig.from_pretrained(
            path, trust_remote_code=trust_remote_code, local_files_only=True
        )
    except ValueError as exc:
        hint = "" if trust_remote_code else " (custom code runs only if you pass trust_remote_code)"
        raise ValueError(f"cannot read the model config in {path}: {exc}{hint}") from exc
    processor = transformers.AutoProcessor.from_pretrained(
        path, trust_remote_code=trust_remote_code, local_files_only=True
    )
    auto_map = getattr(config, "auto_map", None) or {}
    if trust_remote_code:
        for key in (
            "AutoModelForImageTextToText",
            "AutoModelForVision2Seq",
            "AutoModelForCausalLM",
        ):
            if key in auto_map:
                from transformers.dynamic_module_utils import get_class_from_dynamic_module

                cls = get_class_from_dynamic_module(auto_map[key], path, local_files_only=True)
                model = cls.from_pretrained(path, dtype=torch_dtype, local_files_only=True)
                return model.eval(), processor
    errors = []
    for name in ("AutoModelForImageTextToText", "AutoModelForVision2Seq"):
        auto = getattr(transformers, name, None)
        if auto is None:
            continue
        try:
            model = auto.from_pretrained(
                path, config=config, dtype=torch_dtype, local_files_only=True
            )
            return model.eval(), processor
        except ValueError as exc:  # the config is not one this auto class maps
            errors.append(f"{name}: {exc}")
    raise ValueError(f"no vision-language model class loads {path}: " + "; ".join(errors))


# --------------------------------------------------------------------------- the policy


LLAMA_EMPTY_TOKEN = 29871  # OpenVLA's predict_action appends it to a prompt not ending in it


def is_openvla_checkpoint(model: Any) -> bool:
    """Whether ``model`` is one of OpenVLA's own checkpoints (its config's model type or
    architecture), whose prompts need :data:`LLAMA_EMPTY_TOKEN` appended."""
    config = getattr(model, "config", None)
    architectures = getattr(config, "architectures", None) or []
    return getattr(config, "model_type", "") == "openvla" or any(
        str(name).startswith("OpenVLA") for name in architectures
    )


class OpenVLAPolicy:
    """Runs an OpenVLA-style VLM in-process: ``act(obs)`` -> float32 ``(7,)``.

    Args:
        model, processor: a transformers VLM and its processor (see :func:`load_vlm`).
        statistics: OpenVLA ``norm_stats`` / one dataset's stats (dict or JSON path); ``None``:
            the bin centers are the actions (a model trained on actions in our [-1, 1] space).
        unnorm_key: which dataset's statistics (needed when there are several).
        gripper: the model's gripper convention (:data:`GRIPPER_CONVENTIONS`).
        binarize_gripper: snap the gripper to -1/+1.
        prompt: template with ``{instruction}`` (OpenVLA's by default). If the processor has an
            ``image_token`` (LLaVA-style) missing from the prompt, it is put in front.
        vocab_size: end of the action-token range (default: the tokenizer's ``vocab_size``,
            32000 for OpenVLA's Llama tokenizer).
        prompt_suffix_ids: token ids appended to the prompt (OpenVLA's own ``predict_action``
            appends 29871, Llama's empty token, when the prompt does not end with it;
            :meth:`from_pretrained` does so for OpenVLA checkpoints unless told otherwise).
        resize: resize images to ``resize x resize`` (Lanczos) before the processor.
        device: torch device string (``"cpu"``, ``"cuda"``, ...).
        startup_check: run :meth:`check_image_sensitivity` now.
        name: the policy's name in results.
    """

    def __init__(
        self,
        model: Any,
        processor: Any,
        statistics: str | Path | Mapping | None = None,
        unnorm_key: str | None = None,
        gripper: str = "bridge",
        binarize_gripper: bool = True,
        prompt: str = OPENVLA_PROMPT,
        vocab_size: int | None = None,
        prompt_suffix_ids: tuple[int, ...] = (),
        resize: int | None = None,
        device: str = "cpu",
        startup_check: bool = True,
        name: str = "openvla",
    ) -> None:
        import torch

        if "{instruction}" not in prompt:
            raise ValueError(f"prompt must contain '{{instruction}}'; got {prompt!r}")
        lookup("gripper convention", gripper, GRIPPER_CONVENTIONS)
        if resize is not None and (int(resize) != resize or resize < 1):
            raise ValueError(f"resize must be a positive integer or None; got {resize!r}")
        self.model, self.processor = model, processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.vocab_size = int(vocab_size if vocab_size is not None else self.tokenizer.vocab_size)
        if self.vocab_size < N_BINS:
            raise ValueError(f"vocab_size must be >= {N_BINS} action bins; got {self.vocab_size}")
        self.statistics_source = load_statistics(statistics)
        self.unnorm_key = unnorm_key
        self.statistics = self._statistics(unnorm_key)
        self.gripper, self.binarize_gripper = gripper, binarize_gripper
        image_token = getattr(processor, "image_token", None)
        if isinstance(image_token, str) and image_token not in prompt:
            prompt = image_token + prompt
        self.prompt, self.prompt_suffix_ids = prompt, tuple(int(i) for i in prompt_suffix_ids)
        self.resize = resize
        self.device = torch.device(device)
        self.dtype = next(model.parameters()).dtype
        self.model.to(self.device)
        self.name = name
        self.last_tokens: np.ndarray | None = None  # int64 (7,) of the last act
        self._warned_tokens = False
        if startup_check:
            self.check_image_sensitivity()

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        trust_remote_code: bool = False,
        dtype: str = "float32",
        statistics: str | Path | Mapping | None = None,
        **kwargs: Any,
    ) -> OpenVLAPolicy:
        """Load from a local directory; statistics default to its ``dataset_statistics.json``
        or the config's ``norm_stats`` (as OpenVLA's checkpoints ship them)."""
        model, processor = load_vlm(path, trust_remote_code=trust_remote_code, dtype=dtype)
        if is_openvla_checkpoint(model):  # as OpenVLA's own predict_action prompts it
            kwargs.setdefault("prompt_suffix_ids", (LLAMA_EMPTY_TOKEN,))
        if statistics is None:
            stats_file = Path(path) / "dataset_statistics.json"
            statistics = (
                stats_file if stats_file.is_file() else getattr(model.config, "norm_stats", None)
            )
        kwargs.setdefault("name", f"openvla:{Path(path).name}")
        return cls(model, processor, statistics=statistics, **kwargs)

    def _statistics(self, unnorm_key: str | None) -> dict[str, np.ndarray] | None:
        if self.statistics_source is None:
            if unnorm_key is not None:
                raise ValueError(f"unnorm_key {unnorm_key!r} given but the model has no statistics")
            return None
        return select_statistics(self.statistics_source, unnorm_key)

    def reset(self, instruction: str) -> None:
        """Start an episode (the model keeps no state between steps)."""
        check_instruction(instruction)

    def predict_tokens(self, image: np.ndarray, instruction: str) -> np.ndarray:
        """Greedily generate the 7 action token ids ``(7,)`` int64 for a uint8 ``(H, W, 3)`` image."""
        import torch
        from PIL import Image

        picture = Image.fromarray(image)
        if self.resize is not None:
            picture = picture.resize((self.resize, self.resize), Image.Resampling.LANCZOS)
        text = self.prompt.format(instruction=instruction.lower())
        inputs = self.processor(text=text, images=picture, return_tensors="pt")
        if (
            self.prompt_suffix_ids
            and inputs["input_ids"][0, -1].item() != self.prompt_suffix_ids[-1]
        ):
            suffix = torch.tensor([self.prompt_suffix_ids], dtype=inputs["input_ids"].dtype)
            inputs["input_ids"] = torch.cat([inputs["input_ids"], suffix], dim=1)
            if "attention_mask" in inputs:
                ones = torch.ones_like(suffix, dtype=inputs["attention_mask"].dtype)
                inputs["attention_mask"] = torch.cat([inputs["attention_mask"], ones], dim=1)
        inputs = {
            k: v.to(self.device, self.dtype if v.is_floating_point() else v.dtype)
            for k, v in inputs.items()
            if isinstance(v, torch.Tensor)
        }
        prompt_length = inputs["input_ids"].shape[1]
        with torch.inference_mode():
            out = self.model.generate(
                **inputs, max_new_tokens=ACTION_DIM, min_new_tokens=ACTION_DIM, do_sample=False
            )  # (1, prompt_length + 7)
        return out[0, prompt_length:].cpu().numpy().astype(np.int64)

    def act(self, obs: dict[str, Any]) -> np.ndarray:
        """Return our float32 ``(7,)`` action for the observation.

        An ``obs["unnorm_key"]`` (sent by REST clients) overrides the policy's ``unnorm_key``.
        """
        image, instruction = check_observation(obs)
        key = obs.get("unnorm_key", self.unnorm_key)
        statistics = self.statistics if key == self.unnorm_key else self._statistics(key)
        tokens = self.predict_tokens(image, instruction)
        self.last_tokens = tokens
        if not self._warned_tokens and (tokens < self.vocab_size - N_BINS).any():
            self._warned_tokens = True
            warnings.warn(
                f"{self.name} generated tokens outside the action range {tokens.tolist()}; they "
                "are clipped to the end bins (is this an action model?)",
                stacklevel=2,
            )
        return decode_action_tokens(
            tokens, self.vocab_size, statistics, self.gripper, self.binarize_gripper
        )

    def check_image_sensitivity(self, size: int = 224) -> bool:
        """Warn and return False if a black and a white image give the same action tokens.

        A model that ignores its image (e.g. OpenVLA's remote code under transformers >= 4.50,
        openvla issue 346) returns the same action for every input.
        """
        black = np.zeros((size, size, 3), np.uint8)
        white = np.full((size, size, 3), 255, np.uint8)
        same = np.array_equal(
            self.predict_tokens(black, STARTUP_INSTRUCTION),
            self.predict_tokens(white, STARTUP_INSTRUCTION),
        )
        if same:
            warnings.warn(
                f"{self.name}: a black and a white image give the same action; the model seems "
                "to ignore the image (a known failure of OpenVLA's code with transformers >= "
                "4.50, openvla issue 346). Check the transformers version and the checkpoint.",
                stacklevel=2,
            )
        return not same
