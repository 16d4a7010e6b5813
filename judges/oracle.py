"""The ground-truth judge: the sim's success predicate, for runs whose truth is known.

The oracle does not look at pixels: it reads the predicate from where the sim reports it. Three
sources, each fitting the :class:`judges.base.Judge` protocol (frames are still checked, and
their count says which step is judged):

- :meth:`OracleJudge.for_env`: a live sim env (``wm_env/Tabletop-*-v0``); ``judge`` evaluates
  the task's predicate on the env's current state, the same value as ``info["success"]`` after
  the last step. Works inside :class:`wm_env.wrappers.JudgeWrapper`.
- :meth:`OracleJudge.from_flags`: one episode's recorded per-frame predicate (``success_per_step``
  of a rollout, ``next.success`` of a dataset: ``T + 1`` flags for ``T`` steps); ``judge`` on
  the first ``t`` frames answers the flag of frame ``t - 1``.
- :meth:`OracleJudge.from_info`: the final step's ``info`` (``info["success"]``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from judges.base import Verdict, check_judge_input


class OracleJudge:
    """The sim's success predicate as a judge (see the module docstring for the sources).

    Attributes:
        name: ``oracle``.
    """

    name = "oracle"

    def __init__(self, predicate: Callable[[int], bool], source: str) -> None:
        self._predicate = predicate  # frames seen -> success at the last of them
        self.source = source

    @classmethod
    def for_env(cls, env) -> OracleJudge:
        """The predicate of a live sim env, evaluated on its current state at each call."""
        sim = getattr(env, "unwrapped", env)
        has_predicate = hasattr(sim, "family") and hasattr(sim, "scene")
        if not (has_predicate and hasattr(type(sim), "episode_spec")):
            raise ValueError(
                f"{type(sim).__name__} is not a tabletop sim env (wm_env/Tabletop-*-v0): no success predicate"
            )
        return cls(lambda _: bool(sim.family.success(sim.scene, sim.episode_spec)), "sim state")

    @classmethod
    def from_flags(cls, success_per_frame: Sequence[bool] | np.ndarray) -> OracleJudge:
        """One episode's per-frame predicate: bool ``(T + 1,)``, aligned with its frames."""
        flags = np.asarray(success_per_frame)
        if flags.ndim != 1 or len(flags) == 0:
            raise ValueError(
                f"success flags must be a non-empty 1-D sequence; got shape {flags.shape}"
            )

        def predicate(num_frames: int) -> bool:
            if num_frames > len(flags):
                raise ValueError(
                    f"{num_frames} frames but the episode has success flags for {len(flags)}"
                )
            return bool(flags[num_frames - 1])

        return cls(predicate, f"recorded flags ({len(flags)} frames)")

    @classmethod
    def from_info(cls, info: Mapping[str, Any]) -> OracleJudge:
        """The final step's ``info`` from the sim (must hold ``success``)."""
        if "success" not in info:
            raise ValueError(f"info has no 'success' (keys: {sorted(info)}): not from the sim env")
        success = bool(info["success"])
        return cls(lambda _: success, "final info")

    def judge(self, frames: np.ndarray, instruction: str) -> Verdict:
        """The predicate at the last of ``frames`` ``(T, H, W, 3)`` (score 1.0 or 0.0)."""
        frames = check_judge_input(frames, instruction)
        success = self._predicate(len(frames))
        return Verdict(success, float(success), f"sim success predicate ({self.source})")
