"""Shared fixtures of the sim tests.

Building a robosuite env takes seconds, so every env is built once per session (one per family
and configuration) by ``sim_env_factory`` and shared by all tests; each test resets it itself.
The fixtures that need robosuite skip cleanly on a machine without the ``sim`` extra.
"""

from __future__ import annotations

import numpy as np
import pytest

FAMILY_NAMES = ("lift", "stack", "push", "place")


@pytest.fixture(scope="session")
def sim_available() -> None:
    """Skip the requesting test when the robosuite simulator (the ``sim`` extra) is missing."""
    pytest.importorskip("robosuite")


@pytest.fixture(scope="session")
def sim_env_factory(sim_available):
    """``make(family, **kwargs)``: a ``gym.make`` env, built once per (family, kwargs)."""
    import gymnasium as gym

    import wm_env

    cache: dict[tuple, gym.Env] = {}

    def make(family: str, **kwargs) -> gym.Env:
        key = (family, tuple(sorted(kwargs.items())))
        if key not in cache:
            cache[key] = gym.make(wm_env.sim_env_id(family), **kwargs)
        return cache[key]

    yield make
    for env in cache.values():
        env.close()


@pytest.fixture(params=FAMILY_NAMES)
def family_env(request, sim_env_factory):
    """The default (64x64, no distractors) env of each task family."""
    return sim_env_factory(request.param)


@pytest.fixture(scope="session")
def object_mask():
    """``mask(env, name)``: bool ``(64, 64)``, main-camera pixels where object ``name`` is visible.

    Uses MuJoCo's segmentation rendering (per pixel: type and id of the front-most object), so
    an occluded or off-screen object has no pixels. Rows are bottom-first (MuJoCo order); the
    env's images are flipped vertically, which does not matter for widths or pixel counts.
    """
    import mujoco

    def mask(env, name: str, size: int = 64) -> np.ndarray:
        scene = env.unwrapped.scene
        scene.make_render_context_current()
        seg = scene.sim.render(camera_name="workspace", width=size, height=size, segmentation=True)
        return (seg[..., 0] == mujoco.mjtObj.mjOBJ_GEOM) & np.isin(
            seg[..., 1], scene.object_visual_geom_ids[name]
        )

    return mask


@pytest.fixture(scope="session")
def lift_push_dataset(sim_available, tmp_path_factory):
    """A 2-episode dataset (episode 0: lift, episode 1: push) collected with the defaults.

    Read-only for the tests: tests that resume or modify it copy it first.
    """
    from wm_env.sim.collect import CollectConfig, collect

    root = tmp_path_factory.mktemp("collect") / "lift_push"
    collect(CollectConfig(family="lift,push", episodes=2, workers=1, out=root), progress=False)
    return root
