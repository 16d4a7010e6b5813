"""Running scripted experts in the sim: closed-loop episodes and open-loop action plans."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wm_env.sim.experts import ExpertQuality, ScriptedExpert
from wm_env.spaces import camera_key


@dataclass
class Rollout:
    """What one episode produced, at the env's step rate."""

    frames: dict[str, np.ndarray]  # observation key -> uint8 (T + 1, H, W, 3)
    actions: np.ndarray  # float32 (T, 7)
    proprio: np.ndarray  # float32 (T + 1, 8)
    success_per_step: np.ndarray  # bool (T + 1,)
    instruction: str
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def success(self) -> bool:
        """Success is the predicate at the final step."""
        return bool(self.success_per_step[-1])


def make_expert(env, quality: ExpertQuality, seed: int) -> ScriptedExpert:
    """An expert reset for the env's current episode; its failure draws come from ``seed``."""
    sim = env.unwrapped
    expert = ScriptedExpert(quality, step_seconds=sim.step_seconds)
    expert.reset(sim.episode_spec, sim.privileged_state(), np.random.default_rng(seed))
    return expert


def run_expert(
    env, obs: dict, info: dict, quality: ExpertQuality, seed: int, num_steps: int
) -> Rollout:
    """Run the closed-loop expert for ``num_steps`` from the env's current (just reset) state."""
    sim = env.unwrapped
    expert = make_expert(env, quality, seed)
    keys = [k for k in obs if k.startswith("image")]
    frames = {k: [obs[k]] for k in keys}
    proprio, success, actions = [info["proprio"]], [info["success"]], []
    for _ in range(num_steps):
        action = expert.act(sim.privileged_state())
        obs, _, terminated, truncated, info = env.step(action)
        actions.append(action)
        for k in keys:
            frames[k].append(obs[k])
        proprio.append(info["proprio"])
        success.append(info["success"])
        if terminated or truncated:
            break
    return Rollout(
        frames={k: np.stack(v) for k, v in frames.items()},
        actions=np.asarray(actions, dtype=np.float32).reshape(-1, 7),
        proprio=np.stack(proprio).astype(np.float32),
        success_per_step=np.asarray(success, dtype=bool),
        instruction=obs["instruction"],
        info={"acted_on": expert.acted_on, "gave_up": expert.gives_up},
    )


def open_loop_plan(env, quality: ExpertQuality, seed: int, num_steps: int) -> np.ndarray:
    """float32 ``(num_steps, 7)``: the expert's actions from the current state, planned ahead.

    The expert runs closed-loop on a snapshot of the physics, then the snapshot is restored,
    so the env is left exactly where it was. Replayed open-loop in the same sim the plan
    reproduces the expert's episode; in a world model it is a graded policy that needs no
    privileged state.
    """
    sim = env.unwrapped
    saved = sim.physics_state()
    expert = make_expert(env, quality, seed)
    actions = np.empty((num_steps, 7), dtype=np.float32)
    try:
        for t in range(num_steps):
            actions[t] = expert.act(sim.privileged_state())
            sim.step(actions[t])
    finally:
        sim.set_physics_state(saved)
    return actions


def main_camera_key() -> str:
    """Observation key of the main camera."""
    return camera_key("workspace", "workspace")
