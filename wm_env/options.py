"""How to run a world model, in one object, and the dtype names every package shares.

:class:`WorldModelOptions` is what :meth:`wm_env.world_model.WorldModel.from_pretrained`, both
Gymnasium envs and the evaluation configs take: device, denoising steps, temperature, autocast
dtype, decoder, KV cache, ``torch.compile`` and residual decoding. Adding a setting means adding
a field here, not a parameter to every signature that loads a model.

Dtypes are named the same everywhere (world models, judges, policies, editors): ``fp32``,
``bf16``, ``fp16`` (and ``fp64`` where a module allows it); torch's own names (``float32``,
``bfloat16``, ``float16``, ``half``, ``float64``) are accepted as spellings of the same.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from wm_env.errors import lookup

DTYPE_NAMES = ("fp32", "bf16", "fp16", "fp64")
DTYPE_SPELLINGS = {
    **{name: name for name in DTYPE_NAMES},
    "float32": "fp32",
    "float": "fp32",
    "bfloat16": "bf16",
    "float16": "fp16",
    "half": "fp16",
    "float64": "fp64",
    "double": "fp64",
}


def dtype_name(name: str | None, allowed: tuple[str, ...] = DTYPE_NAMES) -> str | None:
    """The canonical name (``"fp32"``, ``"bf16"``, ...) of a dtype spelling; None stays None.

    Raises :class:`wm_env.errors.UnknownNameError` (with a did-you-mean) for an unknown name or
    one outside ``allowed``.
    """
    if name is None:
        return None
    name = str(name)  # also a torch.dtype: "torch.bfloat16"
    canonical = DTYPE_SPELLINGS.get(name.strip().lower().removeprefix("torch."))
    if canonical is None or canonical not in allowed:
        offered = {k: v for k, v in DTYPE_SPELLINGS.items() if v in allowed}
        lookup("dtype", name, offered)  # raises with the closest names
    return canonical


def torch_dtype(name: str | None, allowed: tuple[str, ...] = DTYPE_NAMES):
    """The ``torch.dtype`` of a dtype spelling (None stays None)."""
    import torch

    canonical = dtype_name(name, allowed)
    return None if canonical is None else getattr(torch, {
        "fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "fp64": "float64"
    }[canonical])  # fmt: skip


AUTOCAST_NAMES = ("fp32", "bf16", "fp16")  # what a world model's autocast may run in


@dataclass(frozen=True)
class WorldModelOptions:
    """How to run a world-model bundle.

    Attributes:
        device: torch device (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
        num_steps: denoising steps per frame (None: the bundle's).
        temperature: scale of the starting noise, 0 (deterministic) to 1 (None: the bundle's).
        dtype: autocast dtype of sampling, encoding and decoding: ``fp32`` (or None), ``bf16``,
            ``fp16``.
        decoder: what renders the frames (None: the bundle's default; ``"encoder"``: the
            encoder's own decoder; another name: the bundle's pixel decoder of that name).
        use_cache: keep the context's keys and values across denoising steps (same frames,
            faster).
        compile: ``torch.compile`` the DiT.
        residual_decoding: frames are the start frame plus the decoded change since then.
    """

    device: str = "cpu"
    num_steps: int | None = None
    temperature: float | None = None
    dtype: str | None = None
    decoder: str | None = None
    use_cache: bool = True
    compile: bool = False
    residual_decoding: bool = True

    def __post_init__(self) -> None:
        if self.num_steps is not None and (
            isinstance(self.num_steps, bool)
            or not isinstance(self.num_steps, int)
            or self.num_steps < 1
        ):
            raise ValueError(f"num_steps must be an integer >= 1; got {self.num_steps!r}")
        if self.temperature is not None and (
            isinstance(self.temperature, bool)
            or not isinstance(self.temperature, (int, float))
            or not math.isfinite(self.temperature)
            or self.temperature < 0
        ):
            raise ValueError(f"temperature must be a finite number >= 0; got {self.temperature!r}")
        object.__setattr__(self, "dtype", dtype_name(self.dtype, AUTOCAST_NAMES))
        if self.decoder is not None and not isinstance(self.decoder, str):
            raise ValueError(f"decoder must be a name; got {self.decoder!r}")
        object.__setattr__(self, "device", str(self.device))

    @classmethod
    def build(
        cls, options: WorldModelOptions | dict[str, Any] | None = None, **settings: Any
    ) -> WorldModelOptions:
        """Options from an options object or a dict, with ``settings`` (field names) on top;
        settings given as None keep the option's value. An unknown name gets a did-you-mean."""
        fields = {f.name for f in dataclasses.fields(cls)}
        if isinstance(options, dict):
            settings = {**options, **{k: v for k, v in settings.items() if v is not None}}
            options = None
        for name in settings:
            if name not in fields:
                lookup("world-model option", name, dict.fromkeys(sorted(fields)))
        base = options if options is not None else cls()
        if not isinstance(base, cls):
            raise TypeError(
                f"options must be WorldModelOptions or a dict; got {type(base).__name__}"
            )
        given = {k: v for k, v in settings.items() if v is not None}
        return dataclasses.replace(base, **given) if given else base

    def non_defaults(self) -> dict[str, Any]:
        """The settings that differ from the defaults (for messages and provenance)."""
        default = WorldModelOptions()
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != getattr(default, f.name)
        }
