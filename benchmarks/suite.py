"""Benchmark suites: which world, starts, policies, judge and conditions a leaderboard runs.

A suite is a YAML or TOML file (see ``benchmarks/suites/default.yaml``)::

    name: default
    world: {type: world_model, bundle: models/default}   # or {type: sim}
    tasks: [lift, stack, push, place]                    # sim task families
    seeds: [0, 1, 2, 3]                                  # layouts: start = (task, seed)
    episode_length: 40
    judge: {spec: probe, path: models/probe}             # the sim always uses its oracle
    policies:
      - {name: expert-q1, spec: expert, options: {quality: 1.0}}
      - {name: random, spec: random}
    conditions:
      - {name: clean}
      - {name: distractors, type: distractors, count: 2, editor: paste}
      - {name: paraphrase, type: instruction, mode: paraphrase}

Each start is a seeded layout of the ground-truth sim, so the same starts exist in both worlds:
the world model starts from the sim's rendered first frame, the sim from the layout itself.
Cells are (policy, task, condition); every cell runs ``episodes`` episodes over the seeds
(cycling through them with distinct episode indices when ``episodes > len(seeds)``).
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from wm_env.errors import lookup
from wm_env.options import WorldModelOptions

WORLD_TYPES = ("world_model", "sim")
CONDITION_TYPES = ("clean", "distractors", "instruction")
SPLITS = ("development", "heldout")


def _names(names) -> dict[str, str]:
    return {n: n for n in names}


LATER_WORLD_OPTIONS = ("dtype", "num_steps", "decoder")  # see Suite.hash


@dataclass(frozen=True)
class WorldSpec:
    """Where episodes run: a world-model bundle or the ground-truth sim."""

    type: str = "world_model"
    bundle: str | None = "models/default"
    resolution: int = 64
    num_envs: int = 16  # world model: episodes advanced together by one batched model call
    temperature: float | None = None  # world model: noise scale (None: the bundle's)
    device: str = "cpu"
    dtype: str | None = None  # world model: autocast dtype ("bf16", "fp16"; None: float32)
    num_steps: int | None = None  # world model: denoising steps per frame (None: the bundle's)
    decoder: str | None = None  # world model: which of the bundle's decoders (None: its default)

    def __post_init__(self) -> None:
        object.__setattr__(self, "type", lookup("world type", self.type, _names(WORLD_TYPES)))
        if self.type == "world_model" and not self.bundle:
            raise ValueError("a world_model world needs a 'bundle' directory")
        if self.num_envs < 1:
            raise ValueError(f"world.num_envs must be >= 1; got {self.num_envs}")
        if self.num_steps is not None and self.num_steps < 1:
            raise ValueError(f"world.num_steps must be >= 1; got {self.num_steps}")
        object.__setattr__(self, "dtype", self.model_options.dtype)  # validated, canonical name

    @property
    def model_options(self) -> WorldModelOptions:
        """How a world-model world runs its bundle."""
        return WorldModelOptions(
            device=self.device,
            num_steps=self.num_steps,
            temperature=self.temperature,
            dtype=self.dtype,
            decoder=self.decoder,
        )


@dataclass(frozen=True)
class PolicySpec:
    """A policy entry: ``spec`` is a registered name, a checkpoint dir or a server URL.

    ``noise`` (optional) is the standard deviation of Gaussian noise added to every executed
    action (clipped to the bounds, seeded per episode): a noisy variant of the same policy.
    """

    name: str
    spec: str
    options: dict[str, Any] = field(default_factory=dict)
    noise: float | None = None

    def __post_init__(self) -> None:
        if self.noise is not None and not (
            isinstance(self.noise, int | float) and 0 <= self.noise < float("inf")
        ):
            raise ValueError(
                f"policy {self.name!r}: noise must be a number >= 0; got {self.noise!r}"
            )

    @property
    def identity(self) -> str:
        """What the policy is, whatever it is called: spec, options and noise as JSON."""
        return json.dumps([self.spec, self.options, self.noise], sort_keys=True, default=str)


@dataclass(frozen=True)
class ConditionSpec:
    """A test condition: clean, image-edited distractors, or a perturbed instruction."""

    name: str
    type: str = "clean"
    count: int = 2  # distractors: objects added (edited into the frame / spawned in the sim)
    editor: str = "paste"  # distractors, world model: a registered editor name
    prompt: str | None = None  # distractors: the editing prompt (diffusion editors)
    editor_options: dict[str, Any] = field(default_factory=dict)
    mode: str = "paraphrase"  # instruction: paraphrase | unseen

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "type", lookup("condition type", self.type, _names(CONDITION_TYPES))
        )
        if self.type == "distractors" and self.count < 1:
            raise ValueError(f"condition {self.name!r}: count must be >= 1; got {self.count}")

    @property
    def editor_id(self) -> str:
        """The editor named in results ('' unless this condition edits frames)."""
        return self.editor if self.type == "distractors" else ""


@dataclass(frozen=True)
class JudgeSpec:
    """The world model's judge (``probe`` + path, ``vlm`` + path, or a server URL)."""

    spec: str = "probe"
    path: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Suite:
    """A whole benchmark suite (see the module docstring)."""

    name: str
    world: WorldSpec
    tasks: tuple[str, ...]
    seeds: tuple[int, ...]
    policies: tuple[PolicySpec, ...]
    conditions: tuple[ConditionSpec, ...] = (ConditionSpec("clean"),)
    judge: JudgeSpec = JudgeSpec()
    episodes: int | None = None  # per cell; default: one per seed
    episode_length: int = 40
    seed: int = 0  # base seed of model noise, edits and perturbations
    split: str = "development"  # "heldout": nothing was fitted or tuned on its policies/starts

    def __post_init__(self) -> None:
        from wm_env.sim.tasks import FAMILIES

        object.__setattr__(self, "split", lookup("split", self.split, _names(SPLITS)))
        if not self.tasks or not self.seeds or not self.policies or not self.conditions:
            raise ValueError("a suite needs at least one task, seed, policy and condition")
        object.__setattr__(
            self, "tasks", tuple(lookup("task", t, _names(FAMILIES)) for t in self.tasks)
        )
        for what, names in (
            ("policy", [p.name for p in self.policies]),
            ("condition", [c.name for c in self.conditions]),
        ):
            duplicates = sorted({n for n in names if names.count(n) > 1})
            if duplicates:
                raise ValueError(f"{what} names must be unique; repeated: {duplicates}")
        if self.episode_length < 1:
            raise ValueError(f"episode_length must be >= 1; got {self.episode_length}")
        if self.episodes is not None and self.episodes < 1:
            raise ValueError(f"episodes must be >= 1; got {self.episodes}")

    @property
    def episodes_per_cell(self) -> int:
        return self.episodes or len(self.seeds)

    def episode_keys(self) -> list[EpisodeKey]:
        """Every episode of the suite, in run order (condition, task, policy, index)."""
        keys = []
        for condition in self.conditions:
            for task in self.tasks:
                for policy in self.policies:
                    for index in range(self.episodes_per_cell):
                        seed = self.seeds[index % len(self.seeds)]
                        keys.append(EpisodeKey(policy.name, task, condition.name, seed, index))
        return keys

    def policy(self, name: str) -> PolicySpec:
        return lookup("policy", name, {p.name: p for p in self.policies})

    def condition(self, name: str) -> ConditionSpec:
        return lookup("condition", name, {c.name: c for c in self.conditions})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def hash(self) -> str:
        """sha256 of the suite's canonical JSON (provenance).

        World options added after the first release count only when set, so that a suite
        that does not use them keeps its hash and its run directories stay resumable.
        """
        data = self.to_dict()
        for name in LATER_WORLD_OPTIONS:
            if data["world"][name] is None:
                del data["world"][name]
        for policy in data["policies"]:  # added later too: counts only when set
            if policy["noise"] is None:
                del policy["noise"]
        del data["split"]  # a label: the episodes are the same whichever split it names
        text = json.dumps(data, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    def with_world(self, world: WorldSpec) -> Suite:
        """The same suite in another world (agreement runs it in both)."""
        return Suite(**{**self.__dict__, "world": world})

    def check_heldout(self, development: list[Suite]) -> None:
        """Refuse a held-out suite that shares a start seed or a policy with ``development``.

        Policies are compared by what they are (spec, options, noise), not by their names.

        Raises:
            ValueError: naming every shared seed and policy, or if this suite is not held out.
        """
        if self.split != "heldout":
            raise ValueError(f"suite {self.name!r} is split {self.split!r}, not 'heldout'")
        problems = []
        for other in development:
            seeds = sorted(set(self.seeds) & set(other.seeds))
            if seeds:
                problems.append(f"start seeds {seeds} are in suite {other.name!r}")
            theirs = {p.identity: p.name for p in other.policies}
            for policy in self.policies:
                if policy.identity in theirs:
                    problems.append(
                        f"policy {policy.name!r} is {theirs[policy.identity]!r} of suite "
                        f"{other.name!r}"
                    )
        if problems:
            raise ValueError(
                f"held-out suite {self.name!r} is not held out: " + "; ".join(problems)
            )


@dataclass(frozen=True)
class EpisodeKey:
    """Identifies one episode of a suite; the log's resume key."""

    policy: str
    task: str
    condition: str
    seed: int
    index: int

    @property
    def start_id(self) -> str:
        return f"{self.task}-{self.seed}"

    def as_tuple(self) -> tuple[str, str, str, int, int]:
        return (self.policy, self.task, self.condition, self.seed, self.index)


def load_suite(path: str | Path, overrides: dict[str, Any] | None = None) -> Suite:
    """Read a suite from YAML (``.yaml``/``.yml``) or TOML (``.toml``).

    ``overrides`` replace top-level keys (e.g. ``{"seeds": [0, 1]}`` from the command line).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"suite file {str(path)!r} does not exist")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            raw = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            raw = yaml.safe_load(text)
        else:
            raise ValueError(f"suite file must end in .yaml, .yml or .toml; got {path.name!r}")
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as error:
        raise ValueError(
            f"suite file {str(path)!r} is not valid {path.suffix[1:]}: {error}"
        ) from error
    if not isinstance(raw, dict):
        raise ValueError(f"suite file {str(path)!r} must hold a mapping at the top level")
    raw = {**raw, **(overrides or {})}
    return suite_from_dict(raw, default_name=path.stem)


def suite_from_dict(raw: dict[str, Any], default_name: str = "suite") -> Suite:
    """Build and validate a :class:`Suite` from plain data (unknown keys are errors)."""
    known = {
        "name", "world", "tasks", "seeds", "policies", "conditions", "judge", "episodes",
        "episode_length", "seed", "split",
    }  # fmt: skip
    for key in raw:
        lookup("suite key", key, _names(known))
    try:
        return Suite(
            name=str(raw.get("name", default_name)),
            world=WorldSpec(**_mapping(raw.get("world", {}), "world")),
            tasks=tuple(raw.get("tasks", ())),
            seeds=tuple(int(s) for s in raw.get("seeds", ())),
            policies=tuple(PolicySpec(**_mapping(p, "policy")) for p in raw.get("policies", ())),
            conditions=tuple(
                ConditionSpec(**_mapping(c, "condition"))
                for c in raw.get("conditions", [{"name": "clean"}])
            ),
            judge=JudgeSpec(**_mapping(raw.get("judge", {}), "judge")),
            episodes=raw.get("episodes"),
            episode_length=int(raw.get("episode_length", 40)),
            seed=int(raw.get("seed", 0)),
            split=str(raw.get("split", "development")),
        )
    except TypeError as error:  # an unknown field inside a section
        raise ValueError(f"invalid suite: {error}") from error


def _mapping(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"each {what} entry must be a mapping; got {value!r}")
    return value
