"""Building a judge from a spec: a kind and a location, or a location whose kind is detected.

- ``probe``: a probe directory (``wmgym train probe``); options: ``bundle``, ``device``,
  ``threshold``.
- ``vlm``: a local transformers checkpoint directory; options: the fields of
  :class:`judges.vlm.VLMJudgeConfig` (``prompt`` may be a dict of :class:`PromptConfig` fields).
- ``state``: a state read-out directory (``wmgym train readout``): the task predicate on the
  states it reads (:mod:`judges.state_judge`); options: ``presence``, ``device``.
- ``openai``: an ``http(s)://`` URL of an OpenAI-compatible API; options: the fields of
  :class:`judges.openai_client.OpenAIJudgeConfig` (``model`` is required).

``load_judge("models/probe")``, ``load_judge("http://localhost:8000/v1", model="qwen")`` and
``load_judge("probe", path="models/probe")`` all work. The oracle is not built from a spec: it
needs the sim itself (:mod:`judges.oracle`).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from wm_env.errors import lookup

KINDS = ("probe", "state", "vlm", "openai")
PROBE_OPTIONS = ("bundle", "device", "threshold", "inputs")


def detect_kind(location: str) -> str:
    """``openai`` for URLs, ``probe`` / ``state`` for probe / read-out directories, ``vlm`` for
    other checkpoints."""
    if location.startswith(("http://", "https://")):
        return "openai"
    root = Path(location)
    config = root / "config.json"
    if not root.is_dir() or not config.is_file():
        raise ValueError(
            f"judge {location!r} is not a probe or read-out directory, a VLM checkpoint "
            f"directory or an http(s):// URL (kinds: {', '.join(KINDS)})"
        )
    try:
        content = json.loads(config.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{config}: not valid JSON ({error})") from None
    if isinstance(content, dict) and "probe" in content:
        return "probe"
    return "state" if isinstance(content, dict) and "readout" in content else "vlm"


def _check_options(kind: str, options: dict[str, Any], valid: tuple[str, ...]) -> None:
    for key in options:
        lookup(f"{kind} judge option", key, dict.fromkeys(valid))


def load_judge(spec: str, path: str | None = None, **options: Any):
    """The judge for ``spec`` (a kind with ``path``, or a path / URL alone); see the module docstring.

    Raises:
        ValueError: a location that is none of the kinds, or a kind without a location.
        UnknownNameError: a mistyped kind or option (with a suggestion).
    """
    if spec in KINDS:
        if not path:
            raise ValueError(f"judge kind {spec!r} needs a path (or URL)")
        kind, location = spec, str(path)
    elif path is None and ("/" in spec or Path(spec).exists()):
        kind, location = detect_kind(spec), spec
    else:
        lookup("judge kind", spec, dict.fromkeys(KINDS))
        raise AssertionError("unreachable")  # lookup raised
    if kind == "probe":
        from judges.probe import ProbeJudge

        _check_options(kind, options, PROBE_OPTIONS)
        return ProbeJudge.from_pretrained(location, **options)
    if kind == "state":
        from judges.state_judge import StateJudge, StateJudgeConfig

        _check_options(kind, options, _fields(StateJudgeConfig, exclude=""))
        return StateJudge.from_pretrained(location, **options)
    options = dict(options)
    if isinstance(options.get("prompt"), dict):
        from judges.prompt import PromptConfig

        options["prompt"] = PromptConfig(**options["prompt"])
    if kind == "vlm":
        from judges.vlm import VLMJudge, VLMJudgeConfig

        _check_options(kind, options, _fields(VLMJudgeConfig, exclude="model"))
        return VLMJudge(VLMJudgeConfig(model=Path(location), **options))
    from judges.openai_client import OpenAIJudge, OpenAIJudgeConfig

    _check_options(kind, options, _fields(OpenAIJudgeConfig, exclude="base_url"))
    if "model" not in options:
        raise ValueError(f"the openai judge at {location} needs model=<served model name>")
    return OpenAIJudge(OpenAIJudgeConfig(base_url=location, **options))


def _fields(cls, exclude: str) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls) if f.name != exclude)
