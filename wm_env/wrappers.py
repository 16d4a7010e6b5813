"""Out-of-distribution wrappers: distractors in the start frames, perturbed instructions.

- :class:`DistractorWrapper` edits the start frames of a world-model env with an
  :mod:`wm_env.editing` editor before the model encodes them: the imagined episode then
  contains an object the policy never saw.
- :class:`InstructionWrapper` shows the policy a paraphrase (or an unseen phrasing) of the
  episode's instruction, from :mod:`wm_env.instructions`.

Both keep the wrapped env's spaces, and both are seeded by ``reset(seed=...)`` with generators
of their own, so they never draw from (and so never change) the env's ``np_random`` stream.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from wm_env.editing import EditRecord, ImageEditor, build_editor, edit_frames
from wm_env.errors import lookup
from wm_env.instructions import MODES, perturb_instruction

# Mixed into reset seeds, so an edit's randomness is not the env's own stream for that seed
# (gymnasium seeds np_random with exactly default_rng(seed)).
DISTRACTOR_SALT = 0x0D157
INSTRUCTION_SALT = 0x1257


class DistractorWrapper(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Adds distractors to a world-model env's start frames at every reset.

    The wrapped env (``env.unwrapped``) must offer the world-model start contract:

    - ``load_start(seed, options) -> {"frames": uint8 (l, H, W, 3) | (H, W, 3),
      "instruction": str, ...}``: what ``reset(seed=seed, options=options)`` would start from;
    - ``reset(seed=..., options={"frames": ..., "instruction": ...})`` starts from given frames.

    ``reset`` loads the start, applies ONE edit to every history frame (same objects at the
    same places, so the history stays consistent), and resets the env from the edited frames.
    ``info["edit"]`` holds the :class:`~wm_env.editing.EditRecord` as a dict, and
    ``info["start_id"]`` the id ``load_start`` gave (when it gives one), not ``"given"``.

    Args:
        env: a world-model env. The ground-truth sim has no ``load_start``: a ``TypeError``
            says to use its ``num_distractors`` (real objects) instead.
        editor: an :class:`~wm_env.editing.ImageEditor` or a registered editor name.
        seed: seeds the edits of episodes reset without a seed (``None``: fresh entropy).
            ``reset(seed=s)`` always gives the same edit for the same ``s`` and start.
    """

    def __init__(
        self, env: gym.Env, editor: ImageEditor | str = "paste", seed: int | None = None
    ) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, editor=editor, seed=seed)
        gym.Wrapper.__init__(self, env)
        if not callable(getattr(env.unwrapped, "load_start", None)):
            raise TypeError(
                f"DistractorWrapper edits a world model's start frames, but "
                f"{type(env.unwrapped).__name__} has no load_start(seed, options). For the "
                "ground-truth sim, add real distractor objects with its num_distractors argument "
                "instead, e.g. gym.make('wm_env/Tabletop-Lift-v0', num_distractors=2)"
            )
        self.editor: ImageEditor = build_editor(editor) if isinstance(editor, str) else editor
        if not callable(getattr(self.editor, "edit", None)):
            raise TypeError(f"editor must have edit(image, rng); got {type(editor).__name__}")
        self._rng = np.random.default_rng(seed)
        self.last_edit: EditRecord | None = None

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        if seed is not None:
            self._rng = np.random.default_rng([seed, DISTRACTOR_SALT])
        start = self.env.unwrapped.load_start(seed, options)
        frames = np.asarray(start["frames"])
        if frames.dtype != np.uint8 or frames.ndim not in (3, 4) or frames.shape[-1] != 3:
            raise ValueError(
                "load_start must return uint8 frames of shape (l, H, W, 3) or (H, W, 3); "
                f"got {frames.dtype} {tuple(frames.shape)}"
            )
        history = frames[None] if frames.ndim == 3 else frames  # (l, H, W, 3)
        edited, record = edit_frames(self.editor, history, self._rng)
        edited = edited[0] if frames.ndim == 3 else edited
        obs, info = self.env.reset(
            seed=seed, options={"frames": edited, "instruction": start["instruction"]}
        )
        self.last_edit = record
        info = {**info, "edit": record.to_dict()}
        if "start_id" in start:  # the env saw "given" frames; say which start they came from
            info["start_id"] = start["start_id"]
        return obs, info


class InstructionWrapper(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Replaces ``obs["instruction"]`` with a perturbation of it, one per episode.

    At reset one paraphrase (``mode="paraphrase"``) or unseen phrasing (``mode="unseen"``) of
    the episode's instruction is drawn (seeded by the reset seed) and shown at reset and at
    every step; ``info["instruction_perturbation"]`` gives ``original``, ``perturbed`` and
    ``mode``. The wrapped env still gets and judges the original task.

    Args:
        env: an env whose observation space is a ``Dict`` with an ``instruction`` ``Text``.
        mode: ``"paraphrase"`` or ``"unseen"`` (see :mod:`wm_env.instructions`).
        seed: seeds episodes reset without a seed (``None``: fresh entropy).
    """

    def __init__(self, env: gym.Env, mode: str = "paraphrase", seed: int | None = None) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, mode=mode, seed=seed)
        gym.Wrapper.__init__(self, env)
        self.mode = lookup("instruction perturbation mode", mode, {m: m for m in MODES})
        space = env.observation_space
        if not isinstance(space, spaces.Dict) or "instruction" not in space.spaces:
            raise TypeError(
                "InstructionWrapper needs a Dict observation space with an 'instruction' entry; "
                f"got {space}"
            )
        self._rng = np.random.default_rng(seed)
        self.original: str | None = None
        self.perturbed: str | None = None

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        obs, info = self.env.reset(seed=seed, options=options)
        if seed is not None:
            self._rng = np.random.default_rng([seed, INSTRUCTION_SALT])
        self.original = str(obs["instruction"])
        perturbed = perturb_instruction(self.original, self._rng, self.mode)
        if not self.observation_space["instruction"].contains(perturbed):
            perturbed = self.original  # the env's Text space is narrower than ours
        self.perturbed = perturbed
        return self._observation(obs), self._info(info)

    def step(self, action) -> tuple[dict[str, Any], Any, bool, bool, dict[str, Any]]:
        if self.perturbed is None:
            raise RuntimeError("call reset() before step()")
        obs, reward, terminated, truncated, info = self.env.step(action)
        return self._observation(obs), reward, terminated, truncated, self._info(info)

    def _observation(self, obs: dict[str, Any]) -> dict[str, Any]:
        return {**obs, "instruction": self.perturbed}

    def _info(self, info: dict[str, Any]) -> dict[str, Any]:
        perturbation = {"original": self.original, "perturbed": self.perturbed, "mode": self.mode}
        return {**info, "instruction_perturbation": perturbation}


class JudgeWrapper(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Rewards and ends episodes by a judge's verdict on the frames seen so far.

    With ``every=None`` the judge is called once, when the episode is truncated (the time
    limit): reward 1.0 on success. With ``every=n`` it is also called every ``n`` steps and a
    success terminates the episode. The verdict goes to ``info["verdict"]``; an abstention
    (``success=None``) gives reward 0 and is recorded, never turned into a failure.

    Args:
        env: an env whose observations have ``image`` and ``instruction``.
        judge: any :class:`judges.base.Judge`.
        every: judge every n steps (None: only at the end).
    """

    def __init__(self, env: gym.Env, judge, every: int | None = None) -> None:
        if every is not None and every < 1:
            raise ValueError(f"every must be >= 1 or None; got {every}")
        gym.utils.RecordConstructorArgs.__init__(self, judge=judge, every=every)
        gym.Wrapper.__init__(self, env)
        self.judge, self.every = judge, every
        self._frames: list[np.ndarray] = []
        self._instruction = ""

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        self._frames = [obs["image"]]
        self._instruction = obs["instruction"]
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._frames.append(obs["image"])
        steps = len(self._frames) - 1
        due = truncated or terminated or (self.every is not None and steps % self.every == 0)
        if due:
            verdict = self.judge.judge(np.stack(self._frames), self._instruction)
            info = {**info, "verdict": verdict}
            if verdict.success:
                reward = 1.0
                terminated = terminated or self.every is not None
        return obs, reward, terminated, truncated, info
