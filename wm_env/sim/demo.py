"""``wmgym demo sim``: the scripted experts solve one episode of each family, as a GIF grid."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from wm_env.viz import caption, grid, save_gif, upscale


@dataclass(frozen=True)
class SimDemoConfig:
    """Run the scripted expert on one seeded episode of every task family and save a GIF grid.

    Attributes:
        out: output directory.
        resolution: rendered image size.
        num_distractors: distractor objects per scene.
        seed: reset seed of every episode (the default 1 shows a success in every family; seed 0's
            push layout is one of the expert's 4% failures: see benchmarks/results/sim_figures.md).
    """

    out: Path = Path("outputs/demo")
    resolution: int = 128
    num_distractors: int = 1
    seed: int = 1


def run_sim_demo(config: SimDemoConfig) -> Path:
    """Run the demo; return the GIF's path."""
    import gymnasium as gym

    import wm_env
    from wm_env.sim.experts import ExpertQuality
    from wm_env.sim.rollout import run_expert
    from wm_env.sim.tasks import FAMILIES

    videos = []
    for family in FAMILIES:
        env = gym.make(
            wm_env.sim_env_id(family),
            resolution=config.resolution,
            num_distractors=config.num_distractors,
        )
        obs, info = env.reset(seed=config.seed)
        rollout = run_expert(
            env, obs, info, ExpertQuality(), seed=config.seed, num_steps=env.spec.max_episode_steps
        )
        env.close()
        print(
            f"{family:>6}: {rollout.instruction!r} -> {'success' if rollout.success else 'failure'} in {len(rollout.actions)} steps"
        )
        factor = max(1, -(-192 // config.resolution))  # at least 192 px wide
        videos.append(
            caption(upscale(rollout.frames["image"], factor), rollout.instruction, rollout.success)
        )
    path = save_gif(Path(config.out) / "sim_experts.gif", grid(videos, columns=2))
    print(f"GIF grid: {path}")
    return path
