"""The two worlds a suite's episodes run in: the world model (batched) and the ground-truth sim.

Both take a batch of :class:`~benchmarks.suite.EpisodeKey` of ONE condition and return one
:class:`EpisodeResult` per key: the frames the policy saw, the actions it took, the
instruction it was given, and (sim only) the true success. Judging happens afterwards, in the
runner. A policy that fails (a server that went down) marks its episode as an error; the
other episodes of the batch go on.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.lazy_frames import LazyFrames
from benchmarks.suite import ConditionSpec, EpisodeKey, Suite
from policies.base import check_action, uses_image
from wm_env.errors import CorruptFileError

EDIT_SALT, INSTRUCTION_SALT, MODEL_SALT, POLICY_SALT, NOISE_SALT = 12, 13, 14, 15, 16


@dataclass
class EpisodeResult:
    """What happened in one episode (before judging)."""

    key: EpisodeKey
    instruction: str  # what the policy was told
    # uint8 (T + 1, H, W, 3): the start frame and one per step (world model: LazyFrames)
    frames: np.ndarray | LazyFrames
    actions: np.ndarray  # float32 (T, 7) executed actions
    seconds: float
    true_success: bool | None = None  # the sim's predicate at the end (sim only)
    error: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def steps(self) -> int:
        return len(self.actions)


def episode_seed(suite: Suite, key: EpisodeKey, salt: int) -> int:
    """A seed for one episode's randomness, stable across runs and independent of run order."""
    text = f"{suite.seed}/{key.policy}/{key.task}/{key.condition}/{key.seed}/{key.index}/{salt}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little") & 0x7FFFFFFF


# ------------------------------------------------------------------ starts
def render_starts(
    tasks, seeds, resolution: int, cache_dir: str | Path | None = None
) -> dict[tuple[str, int], dict[str, Any]]:
    """The first frame, instruction and robot state of each (task, seed) layout, rendered by the sim.

    Cached as PNG + JSON (the start-folder layout :class:`wm_env.envs.starts.StartSet` reads) in
    ``cache_dir`` so a world-model run needs no simulator once its starts exist.
    """
    import imageio.v3 as iio

    from wm_env.sim.env import TabletopEnv

    cache = Path(cache_dir) if cache_dir else None
    starts: dict[tuple[str, int], dict[str, Any]] = {}
    for task in tasks:
        env = None
        for seed in seeds:
            png = cache / f"{task}-{seed}.png" if cache else None
            meta = png.with_suffix(".json") if png else None
            cached = json.loads(meta.read_text()) if png and png.exists() and meta.exists() else {}
            if "state" in cached:  # caches written before states were recorded render again
                frame = iio.imread(png)
                if cached.get("sha256") not in (None, _pixels_sha256(frame)):
                    raise CorruptFileError(
                        png,
                        "changed since this run rendered it (its episodes would start from "
                        "another frame): delete it and its .json to render it again",
                    )
                starts[(task, seed)] = {
                    "frame": frame,
                    "instruction": cached["instruction"],
                    "state": np.asarray(cached["state"], dtype=np.float32),
                }
                continue
            if env is None:
                env = TabletopEnv(family=task, resolution=resolution)
            obs, _ = env.reset(seed=seed)
            starts[(task, seed)] = {
                "frame": obs["image"],
                "instruction": obs["instruction"],
                "state": obs["state"],
            }
            if png is not None:
                png.parent.mkdir(parents=True, exist_ok=True)
                iio.imwrite(png, obs["image"])
                record = {"instruction": obs["instruction"], "task": task, "seed": seed}
                record.update(state=obs["state"].tolist(), sha256=_pixels_sha256(obs["image"]))
                meta.write_text(json.dumps(record))
        if env is not None:
            env.close()
    return starts


def _pixels_sha256(frame: np.ndarray) -> str:
    """SHA-256 of a frame's shape and pixels (what an episode starts from)."""
    frame = np.ascontiguousarray(frame)
    return hashlib.sha256(repr(frame.shape).encode() + frame.tobytes()).hexdigest()


def perturbed_instruction(suite: Suite, key: EpisodeKey, instruction: str) -> str:
    """The instruction the policy sees under ``key``'s condition."""
    condition = suite.condition(key.condition)
    if condition.type != "instruction":
        return instruction
    from wm_env.instructions import perturb_instruction

    rng = np.random.default_rng(episode_seed(suite, key, INSTRUCTION_SALT))
    return perturb_instruction(instruction, rng, condition.mode)


# ------------------------------------------------------------------ acting
class PolicySlot:
    """One episode's policy: executes returned chunks action by action; records failures."""

    def __init__(self, policy, instruction: str) -> None:
        self.policy = policy
        self.queue: list[np.ndarray] = []
        self.error: str | None = None
        self.uses_image = uses_image(policy)
        try:
            policy.reset(instruction)
        except Exception as error:  # noqa: BLE001 - any policy failure is recorded, not raised
            self.error = f"{type(error).__name__}: {error}"

    @property
    def wants_image(self) -> bool:
        """Whether the next :meth:`act` asks the policy, and the policy reads the image."""
        return self.error is None and not self.queue and self.uses_image

    def act(self, obs: dict[str, Any]) -> np.ndarray:
        """The next action; zeros (gripper unchanged) once the policy has failed."""
        if self.error is None and not self.queue:
            try:
                self.queue = list(check_action(self.policy.act(obs), name=self.policy.name))
            except Exception as error:  # noqa: BLE001
                self.error = f"{type(error).__name__}: {error}"
        if self.error is not None:
            return np.zeros(7, dtype=np.float32)
        return self.queue.pop(0)


# ------------------------------------------------------------------ world model
class WorldModelWorld:
    """Runs batches of episodes through the batched vector env (one model call per step).

    The vector env resets the batch (starts and per-episode seeds); the steps then go to its
    model with ``decode=False``, and a frame is decoded only when a policy reads it: the
    episode's video is a :class:`~benchmarks.lazy_frames.LazyFrames` that decodes the rest
    when the judge samples it or the video is saved. The frames equal the vector env's.
    """

    def __init__(self, suite: Suite, starts: dict[tuple[str, int], dict[str, Any]]) -> None:
        from wm_env.envs.vector import WorldModelVectorEnv
        from wm_env.world_model import WorldModel

        world = suite.world
        self.suite = suite
        self.starts = starts
        self.model = WorldModel.from_pretrained(world.bundle, world.model_options)
        first = next(iter(starts.values()))
        self.env = WorldModelVectorEnv(
            num_envs=world.num_envs,
            model=self.model,
            starts=[
                {
                    "frames": first["frame"],
                    "instruction": first["instruction"],
                    "state": first.get("state"),
                }
            ],
            max_episode_steps=None,  # the runner stops at the suite's episode length
        )
        self._editors: dict[str, Any] = {}

    @property
    def batch_size(self) -> int:
        return self.env.num_envs

    def editor(self, condition: ConditionSpec):
        if condition.name not in self._editors:
            self._editors[condition.name] = self.build_editor(condition)
        return self._editors[condition.name]

    @staticmethod
    def build_editor(condition: ConditionSpec):
        """The image editor of a distractor condition, with its options."""
        from wm_env.editing import build_editor

        options = dict(condition.editor_options)
        if condition.editor == "paste":
            options.setdefault("count", condition.count)
        if condition.prompt is not None:
            options.setdefault("prompt", condition.prompt)
        return build_editor(condition.editor, **options)

    def start_frames(self, key: EpisodeKey) -> tuple[np.ndarray, str, dict[str, Any]]:
        """(frames (1, H, W, 3), instruction, meta) of ``key``'s start under its condition (the
        robot's start state is ``self.starts[(key.task, key.seed)]["state"]``)."""
        start = self.starts[(key.task, key.seed)]
        frames = start["frame"][None]
        meta: dict[str, Any] = {}
        condition = self.suite.condition(key.condition)
        if condition.type == "distractors":
            frames, record = self.editor(condition).edit_with_seed(
                frames, episode_seed(self.suite, key, EDIT_SALT)
            )
            meta["edit"] = record.to_dict()
        return frames, start["instruction"], meta

    def run(self, keys: list[EpisodeKey], policies: list) -> list[EpisodeResult]:
        """Run ``keys`` (at most ``batch_size``, one condition) with one policy object each."""
        n = len(keys)
        if not 1 <= n <= self.batch_size:
            raise ValueError(f"a batch holds 1..{self.batch_size} episodes; got {n}")
        started = time.perf_counter()
        starts = [self.start_frames(k) for k in keys]
        pad = self.batch_size - n  # idle sub-envs replay the first episode's start
        frames = np.stack([s[0] for s in starts] + [starts[0][0]] * pad)  # (N, 1, H, W, 3)
        true_instructions = [s[1] for s in starts] + [starts[0][1]] * pad
        seeds = [episode_seed(self.suite, k, MODEL_SALT) for k in keys] + [0] * pad
        states = [self.starts[(k.task, k.seed)].get("state") for k in keys]
        missing = any(state is None for state in states)
        states = None if missing else np.stack(states + [states[0]] * pad)  # (N, S)
        obs, _ = self.env.reset(
            seed=seeds,
            options={"frames": frames, "instruction": true_instructions, "state": states},
        )
        told = [
            perturbed_instruction(self.suite, k, s[1]) for k, s in zip(keys, starts, strict=True)
        ]
        slots = [PolicySlot(p, t) for p, t in zip(policies, told, strict=True)]
        residuals = self.model.residuals  # (N, H, W, 3) or None
        start_latents = self.model.latest_latents[:n].clone()  # (n, L, D)
        low, high = self.env.single_action_space.low, self.env.single_action_space.high
        known: list[dict[int, np.ndarray]] = [{} for _ in range(n)]  # frames decoded so far
        latents, actions = [], []  # per step: (n, L, D), (n, 7)
        for t in range(self.suite.episode_length):
            looking = [i for i, slot in enumerate(slots) if slot.wants_image]
            if looking and t > 0:  # one decoder call for the episodes whose policy looks
                rows = np.array(looking)
                shown = self.model.decode(
                    latents[-1][rows], None if residuals is None else residuals[rows]
                )
                for i, frame in zip(looking, shown, strict=True):
                    known[i][t] = frame
            step_actions = np.zeros((self.batch_size, 7), dtype=np.float32)
            for i, slot in enumerate(slots):
                image = obs["image"][i] if t == 0 else known[i].get(t)
                step_actions[i] = slot.act({"image": image, "instruction": told[i]})
            self.model.step(np.clip(step_actions, low, high), decode=False)
            latents.append(self.model.latest_latents[:n].clone())
            actions.append(step_actions[:n])
        seconds = (time.perf_counter() - started) / n
        stacked = torch.stack(latents, dim=1)  # (n, T, L, D)
        acted = np.stack(actions, axis=1)  # (n, T, 7)
        return [
            EpisodeResult(
                key,
                told[i],
                LazyFrames(
                    self.model,
                    obs["image"][i],
                    stacked[i],
                    None if residuals is None else residuals[i].clone(),
                    known[i],
                    start_latents[i],
                ),
                acted[i],
                seconds,
                error=slots[i].error,
                meta=starts[i][2],
            )
            for i, key in enumerate(keys)
        ]

    def close(self) -> None:
        self.env.close()


# ------------------------------------------------------------------ ground-truth sim
class SimWorld:
    """Runs episodes in the robosuite sim, one env per task family, real distractor objects."""

    def __init__(self, suite: Suite) -> None:
        self.suite = suite
        self.max_distractors = max(
            (c.count for c in suite.conditions if c.type == "distractors"), default=0
        )
        self._envs: dict[str, Any] = {}

    batch_size = 1

    def env(self, task: str):
        if task not in self._envs:
            from wm_env.sim.env import TabletopEnv

            self._envs[task] = TabletopEnv(
                family=task,
                resolution=self.suite.world.resolution,
                max_distractors=self.max_distractors,
            )
        return self._envs[task]

    def run(self, keys: list[EpisodeKey], policies: list) -> list[EpisodeResult]:
        return [self.run_one(k, p) for k, p in zip(keys, policies, strict=True)]

    def run_one(self, key: EpisodeKey, policy) -> EpisodeResult:
        started = time.perf_counter()
        condition = self.suite.condition(key.condition)
        count = condition.count if condition.type == "distractors" else 0
        env = self.env(key.task)
        obs, info = env.reset(seed=key.seed, options={"num_distractors": count})
        told = perturbed_instruction(self.suite, key, obs["instruction"])
        slot = PolicySlot(policy, told)
        frames, actions = [obs["image"]], []
        for _ in range(self.suite.episode_length):
            action = slot.act({"image": obs["image"], "instruction": told})
            obs, _, _, _, info = env.step(np.clip(action, -1.0, 1.0))
            frames.append(obs["image"])
            actions.append(action)
        return EpisodeResult(
            key,
            told,
            np.stack(frames),
            np.stack(actions).astype(np.float32),
            time.perf_counter() - started,
            true_success=bool(info["success"]),
            error=slot.error,
        )

    def close(self) -> None:
        for env in self._envs.values():
            env.close()
