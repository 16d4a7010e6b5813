"""``load_policy(spec)``: one string names any policy (built-in, remote, or a checkpoint).

- ``"random"``, ``"zero"``: the baselines of :mod:`policies.simple`; ``"cem"``: the MPC
  planner of :mod:`policies.cem` (world model ``models/default`` unless ``model=`` is given);
- ``"http://..."`` / ``"https://..."``: :class:`policies.remote.RestPolicyClient` (OpenVLA REST);
- ``"ws://..."`` / ``"wss://..."``: :class:`policies.remote.WebsocketPolicyClient` (openpi);
- a directory: its ``config.json`` names the policy ``"type"``, looked up in
  :data:`POLICY_TYPES` (``"module:attribute.path"``, imported only when used) and called with
  the directory. A transformers checkpoint (a ``model_type`` and no ``type``) is an ``openvla``.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from policies.base import Policy
from wm_env.errors import CorruptFileError, lookup

# Policy type (config.json "type") -> "module:callable" taking (directory, **options).
POLICY_TYPES: dict[str, str] = {
    "small_vla": "policies.small_vla:SmallVLAPolicy.from_pretrained",
    "openvla": "policies.openvla:OpenVLAPolicy.from_pretrained",
}

# Built-in policy names -> "module:callable" taking (**options).
BUILTIN_POLICIES: dict[str, str] = {
    "random": "policies.simple:RandomPolicy",
    "zero": "policies.simple:ZeroPolicy",
    "cem": "policies.cem:CEMPolicy",  # options: model (bundle dir), goal, config, replan_every
    # graded open-loop expert plans; options: quality, num_steps (planned per start: for_start)
    "expert": "policies.expert_plan:ExpertPlanPolicy",
}


def import_target(target: str) -> Callable[..., Any]:
    """Resolve ``"package.module:Attr.attr"`` to the object it names."""
    module_name, _, attributes = target.partition(":")
    obj: Any = importlib.import_module(module_name)
    for attribute in attributes.split("."):
        obj = getattr(obj, attribute)
    return obj


def checkpoint_type(directory: Path) -> str:
    """The policy type of a checkpoint directory (its ``config.json``'s ``"type"``).

    Raises:
        ValueError: no ``config.json``; CorruptFileError: it is not a JSON object, or has
            neither a ``type`` nor a transformers ``model_type``.
    """
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise ValueError(f"policy checkpoint {directory} has no config.json")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptFileError(config_path, f"not readable JSON ({exc})") from exc
    if not isinstance(config, dict):
        raise CorruptFileError(config_path, "must hold a JSON object")
    if "type" in config:
        return str(config["type"])
    if "model_type" in config:  # a transformers vision-language checkpoint (OpenVLA and kin)
        return "openvla"
    raise CorruptFileError(config_path, "has no 'type' naming the policy")


def load_policy(spec: str, action_convention: str = "identity", **options: Any) -> Policy:
    """Build the policy that ``spec`` names; ``options`` go to its constructor / loader.

    ``action_convention`` names the units the policy's actions come in (``identity``,
    ``bridge``, ``libero``: :mod:`policies.action_conventions`); other than ``identity``, the
    policy is wrapped so that it acts in this env's units (e.g. an OpenVLA server un-normalising
    with ``bridge_orig``: ``load_policy("http://...", action_convention="bridge")``).

    Raises:
        UnknownNameError: an unknown built-in name, checkpoint type or action convention (with a
            suggestion).
        ValueError: a path that does not exist or a directory without ``config.json``.
    """
    from policies.action_conventions import CONVENTIONS, ActionConvention

    lookup("action convention", action_convention, CONVENTIONS)  # before anything is built
    policy = _load_policy(spec, **options)
    return (
        policy if action_convention == "identity" else ActionConvention(policy, action_convention)
    )


def _load_policy(spec: str, **options: Any) -> Policy:
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"policy spec must be a non-empty string; got {spec!r}")
    if spec.startswith(("http://", "https://")):
        from policies.remote import RestPolicyClient

        return RestPolicyClient(spec, **options)
    if spec.startswith(("ws://", "wss://")):
        from policies.remote import WebsocketPolicyClient

        return WebsocketPolicyClient(spec, **options)
    if spec in BUILTIN_POLICIES:
        return import_target(BUILTIN_POLICIES[spec])(**options)
    path = Path(spec).expanduser()
    if path.is_dir():
        kind = checkpoint_type(path)
        return import_target(lookup("policy type", kind, POLICY_TYPES))(path, **options)
    if path.exists():
        raise ValueError(f"policy checkpoint {spec!r} is a file; expected a directory")
    if "/" in spec or "\\" in spec or spec.startswith("."):
        raise ValueError(f"policy checkpoint directory {spec!r} does not exist")
    return lookup("policy name", spec, BUILTIN_POLICIES)  # raises, with a did-you-mean
