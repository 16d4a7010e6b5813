"""The true object and robot states of recorded episodes, recovered by replaying them in the sim.

A dataset written by ``wmgym data collect`` stores each episode's start state (``meta.start``:
the layout and the full physics state) and its actions, but only the robot's proprioception per
frame. Replaying the actions from the start state in the sim gives back every object's position
at every frame, exactly (the sim is deterministic; :func:`replay_episode` checks the replayed
end-effector against the recorded one). Nothing is rendered, so a replay costs about a quarter
of recording the episode.

Also here: :func:`project_to_pixels`, where a world point appears in a camera's frame (the
cameras are fixed, :data:`wm_env.sim.scene.CAMERAS`), for drawing read-out positions on frames.
"""

from __future__ import annotations

import json
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from wm_env.errors import CorruptFileError
from wm_env.sim.tasks import EpisodeSpec

REPLAY_TOLERANCE_M = 1e-4  # the replayed end-effector must match the recorded one this closely
CACHE_DIR = "derived/replayed_states"  # inside the dataset, one .npz per episode


class ReplayError(ValueError):
    """An episode cannot be replayed (no start state), or its replay is not the recording."""


@dataclass
class EpisodeStates:
    """True states of one episode at each of its ``T`` frames (frame 0 is the start).

    Attributes:
        eef: float ``(T, 3)`` end-effector (grip site) position, metres, world frame.
        gripper: float ``(T,)`` finger opening (about 0.08 open, 0 closed).
        objects: name -> float ``(T, 3)`` position of each task object of the episode.
        grasped: name -> bool ``(T,)`` whether both fingers touch it.
        spec: the episode's layout (kinds, colours, roles) as a dict.
    """

    eef: np.ndarray
    gripper: np.ndarray
    objects: dict[str, np.ndarray]
    grasped: dict[str, np.ndarray]
    spec: dict

    @property
    def episode_spec(self) -> EpisodeSpec:
        return EpisodeSpec.from_dict(self.spec)

    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays = {"eef": self.eef, "gripper": self.gripper, "spec": np.array(json.dumps(self.spec))}
        for name in self.objects:
            arrays[f"object/{name}"] = self.objects[name]
            arrays[f"grasped/{name}"] = self.grasped[name]
        return arrays

    @classmethod
    def from_arrays(cls, arrays) -> EpisodeStates:
        objects = {k.split("/", 1)[1]: arrays[k] for k in arrays if k.startswith("object/")}
        grasped = {k.split("/", 1)[1]: arrays[k] for k in arrays if k.startswith("grasped/")}
        return cls(
            eef=np.asarray(arrays["eef"]),
            gripper=np.asarray(arrays["gripper"]),
            objects=objects,
            grasped=grasped,
            spec=json.loads(str(arrays["spec"])),
        )


# One sim per family per process, built on first use (a build takes seconds).
_ENVS: dict[tuple[str, int], object] = {}


def _env(family: str, control_steps: int):
    import gymnasium as gym

    import wm_env

    key = (family, control_steps)
    if key not in _ENVS:
        _ENVS[key] = gym.make(
            wm_env.sim_env_id(family),
            resolution=16,  # renders only the start frame of a replay
            control_steps=control_steps,
            max_episode_steps=10**6,
        ).unwrapped
    return _ENVS[key]


def replay_episode(
    meta: dict,
    actions: np.ndarray,
    recorded_eef: np.ndarray | None = None,
    control_steps: int = 4,
) -> EpisodeStates:
    """Replay ``actions`` ``(T, 7)`` (the last row, the dataset's null action, is not played)
    from the start state in ``meta`` (a dataset episode's meta); return the states of its ``T``
    frames. With ``recorded_eef`` ``(T, 3)`` the replay must match it (:class:`ReplayError`)."""
    start = meta.get("start")
    if not isinstance(start, dict) or "spec" not in start or "physics_state" not in start:
        raise ReplayError(
            "the episode has no start state (meta.start with spec and physics_state); "
            "only datasets recorded by `wmgym data collect` can be replayed"
        )
    spec = EpisodeSpec.from_dict(start["spec"])
    env = _env(spec.family, control_steps)
    env.reset(options={"start": start})
    scene = env.scene
    names = [o.name for o in spec.objects]
    steps = len(actions)
    eef, gripper = np.zeros((steps, 3)), np.zeros(steps)
    objects = {n: np.zeros((steps, 3)) for n in names}
    grasped = {n: np.zeros(steps, dtype=bool) for n in names}
    for t in range(steps):
        if t > 0:
            action = np.clip(np.asarray(actions[t - 1], np.float64), -1.0, 1.0)
            for _ in range(control_steps):
                scene.step(action)
        eef[t], gripper[t] = scene.eef_position, scene.gripper_opening
        for n in names:
            objects[n][t] = scene.object_position(n)
            grasped[n][t] = scene.is_grasped(n)
    if recorded_eef is not None:
        error = float(np.abs(eef - recorded_eef).max())
        if error > REPLAY_TOLERANCE_M:
            raise ReplayError(
                f"the replay's end-effector is {100 * error:.2f} cm off the recorded one: the "
                "sim changed since the episode was recorded, or the start state is incomplete"
            )
    return EpisodeStates(eef, gripper, objects, grasped, spec.to_dict())


def _replay_from_dataset(root: str, episode: int, control_steps: int) -> tuple[int, dict]:
    from wm_env.dataset.lerobot import LeRobotDataset

    dataset = LeRobotDataset(root)
    states = replay_episode(
        dataset.episode_meta(episode),
        dataset.actions(episode),
        dataset.states(episode)[:, :3],
        control_steps,
    )
    return episode, states.to_arrays()


def _cache_path(root: Path, episode: int) -> Path:
    return root / CACHE_DIR / f"episode_{episode:06d}.npz"


def _read_cached(path: Path, recorded_eef: np.ndarray) -> EpisodeStates | None:
    """The cached states at ``path``, or None when missing; a cache that does not match the
    dataset's recorded end-effector (an overwritten dataset, a torn file) is refused."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            states = EpisodeStates.from_arrays({k: data[k] for k in data.files})
    except Exception as error:  # a torn or foreign file
        raise CorruptFileError(path, f"cannot read replayed states ({error}); delete it") from None
    if states.eef.shape != recorded_eef.shape or not np.allclose(
        states.eef, recorded_eef, atol=REPLAY_TOLERANCE_M
    ):
        raise CorruptFileError(
            path, "replayed states do not match the dataset's recorded end-effector; delete it"
        )
    return states


def dataset_states(
    dataset, episodes, workers: int = 1, progress: bool = True
) -> dict[int, EpisodeStates]:
    """True states of ``episodes`` of a LeRobot ``dataset`` (a ``LeRobotDataset``), replayed
    once and cached in the dataset folder (``derived/replayed_states``)."""
    from tqdm.auto import tqdm

    root = Path(dataset.root)
    control_steps = int(
        ((dataset.info.get("wmgym") or {}).get("collect") or {}).get(
            "control_steps", round(20 / dataset.fps)
        )
    )
    out: dict[int, EpisodeStates] = {}
    pending = []
    for e in episodes:
        cached = _read_cached(_cache_path(root, int(e)), dataset.states(int(e))[:, :3])
        if cached is None:
            pending.append(int(e))
        else:
            out[int(e)] = cached
    bar = tqdm(total=len(pending), desc="replaying episodes", disable=not progress or not pending)

    def store(episode: int, arrays: dict) -> None:
        path = _cache_path(root, episode)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.stem + ".tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(path)
        out[episode] = EpisodeStates.from_arrays(arrays)
        bar.update()

    if workers <= 1 or len(pending) <= 1:
        for e in pending:
            store(*_replay_from_dataset(str(root), e, control_steps))
    else:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            for result in pool.map(
                _replay_from_dataset,
                [str(root)] * len(pending),
                pending,
                [control_steps] * len(pending),
            ):
                store(*result)
    bar.close()
    return out


def project_to_pixels(points: np.ndarray, camera: str, height: int, width: int) -> np.ndarray:
    """World points ``(..., 3)`` -> pixel ``(..., 2)`` (column, row; floats, 0.5 = a pixel's
    centre) in the frames of fixed camera ``camera`` (:data:`wm_env.sim.scene.CAMERAS`)."""
    from wm_env.sim.scene import CAMERAS

    cam = CAMERAS[camera]
    pos, lookat = np.asarray(cam["pos"], float), np.asarray(cam["lookat"], float)
    forward = (lookat - pos) / np.linalg.norm(lookat - pos)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    d = np.asarray(points, float) - pos
    depth = d @ forward
    focal = (height / 2) / np.tan(np.radians(cam["fovy"]) / 2)
    col = width / 2 + focal * (d @ right) / depth
    row = height / 2 - focal * (d @ up) / depth
    return np.stack([col, row], axis=-1)
