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


# ----------------------------------------------------------------------------- world models
# A tiny synthetic LeRobot dataset and a tiny trained bundle, shared by the training/runtime
# tests (test_world_model.py, test_stages.py). No simulator: a soft blob moves by the action.

BLOB_SIZE = 32  # frame side
BLOB_MOVE = 4.0  # pixels per unit of action
BLOB_EPISODES, BLOB_FRAMES = 6, 12


def render_blob(position) -> np.ndarray:
    """uint8 ``(32, 32, 3)``: an orange Gaussian blob (sigma 6 px) centred at ``(x, y)``.

    Smooth on purpose: the tiny VAE learns it in ~150 steps (a hard-edged square takes far more).
    """
    yy, xx = np.mgrid[:BLOB_SIZE, :BLOB_SIZE]
    g = np.exp(-((xx - position[0]) ** 2 + (yy - position[1]) ** 2) / (2 * 6.0**2))
    return (30 + 220 * g[..., None] * np.array([1.0, 0.7, 0.3])).astype(np.uint8)


@pytest.fixture(scope="session")
def blob_render():
    """The frame renderer of :func:`blob_dataset` (for start frames at chosen positions)."""
    return render_blob


@pytest.fixture(scope="session")
def blob_dataset(tmp_path_factory):
    """6 episodes x 12 frames of 32x32: the blob moves by ``4 * (dx, dy)`` px per step.

    Actions are uniform in [-1, 1] in dx, dy (the other five dims 0), so the dynamics depend
    on the action. Read-only for the tests.
    """
    from wm_env.dataset.lerobot import LeRobotWriter
    from wm_env.dataset.record import EpisodeRecord

    root = tmp_path_factory.mktemp("blob") / "dataset"
    rng = np.random.default_rng(0)
    writer = LeRobotWriter(root, fps=10)
    for episode in range(BLOB_EPISODES):
        position = rng.uniform(8, 24, 2)
        actions = np.zeros((BLOB_FRAMES - 1, 7), np.float32)
        actions[:, :2] = rng.uniform(-1, 1, (BLOB_FRAMES - 1, 2))
        frames, states = [render_blob(position)], [position.copy()]
        for action in actions:
            position = np.clip(position + BLOB_MOVE * action[:2], 6, 26)
            frames.append(render_blob(position))
            states.append(position.copy())
        record = EpisodeRecord(
            episode_index=episode,
            frames={"image": np.stack(frames)},
            actions=actions,
            states=np.asarray(states, np.float32),
            instruction="move the blob",
            success=False,
            success_per_step=np.zeros(BLOB_FRAMES, bool),
        )
        writer.write_episode(record, task_index=0)
    writer.finalize(["move the blob"])
    return root


@pytest.fixture(scope="session")
def tiny_bundle(blob_dataset, tmp_path_factory):
    """A bundle trained on :func:`blob_dataset`: VAE (4x4x4 latents) + 1-layer DiT (~25 s).

    The DiT gets enough steps (800) to pick up the action dependence (fewer steps or a
    narrower DiT learn it for some initialisations only). Weights are initialised from a fixed
    seed, so the bundle does not depend on which tests ran before. Read-only for the tests:
    tests that write into a bundle copy it first (``shutil.copytree``).
    """
    import torch

    from train.loop import OptimConfig, RuntimeConfig
    from train.stage_dynamics import DynamicsStageConfig, run_dynamics_stage
    from train.stage_encoder import EncoderStageConfig, run_encoder_stage
    from wm_env.dataset.split import DataConfig

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("tiny_bundle")
    bundle, data, runtime = base / "bundle", DataConfig(dataset=blob_dataset), RuntimeConfig()
    torch.manual_seed(0)  # the stages seed batches and noise, not the initial weights
    run_encoder_stage(
        EncoderStageConfig(
            bundle=bundle,
            data=data,
            image_size=BLOB_SIZE,
            latent_channels=4,
            downsample=8,
            base_channels=8,
            optim=OptimConfig(
                steps=150,
                batch_size=8,
                lr=3e-3,
                warmup_steps=5,
                min_lr_ratio=0.1,
                ema_decay=0.0,
                checkpoint_every=10**6,
                log_every=50,
            ),
            runtime=runtime,
            run_dir=base / "runs" / "encoder",
        ),
        progress=False,
    )
    torch.manual_seed(0)
    run_dynamics_stage(
        DynamicsStageConfig(
            bundle=bundle,
            data=data,
            preset=None,
            hidden=64,
            depth=1,
            heads=4,
            patch_size=1,
            num_steps=4,
            action_dropout=0.0,
            mean_head_width=16,
            mean_head_depth=1,
            optim=OptimConfig(
                steps=800,
                batch_size=16,
                lr=6e-3,
                warmup_steps=10,
                min_lr_ratio=0.1,
                ema_decay=0.0,
                checkpoint_every=10**6,
                log_every=50,
            ),
            runtime=runtime,
            run_dir=base / "runs" / "dynamics",
        ),
        progress=False,
    )
    torch.set_num_threads(threads)
    return bundle


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Every test runs torch on one thread: on 2 busy cores two threads were up to 10x slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def decode_calls(monkeypatch) -> list[int]:
    """Frames per ``WorldModel.decode`` call made during the test (the decoder still runs)."""
    from wm_env.world_model import WorldModel

    calls: list[int] = []
    original = WorldModel.decode
    monkeypatch.setattr(
        WorldModel, "decode", lambda self, z, r=None: calls.append(len(z)) or original(self, z, r)
    )
    return calls
