"""wm-gym: world models of robot manipulation as Gymnasium environments.

``import wm_env`` registers the environments:

- ``wm_env/Tabletop-<Family>-v0`` (Lift, Stack, Push, Place): the ground-truth robosuite sim
  (needs the ``sim`` extra).
- ``wm_env/WorldModel-v0``: a trained world model (``model=<bundle dir>``,
  ``starts=<dataset dir | PNG+JSON folder | frames>``); ``gym.make_vec(...,
  vectorization_mode="vector_entry_point")`` gives the batched vector env.

``from wm_env import WorldModel`` is the runtime behind it.
"""

from __future__ import annotations

from gymnasium.envs.registration import register, registry

from wm_env.sim.tasks import FAMILIES

__version__ = "0.1.0"

DEFAULT_ENV_HZ = 5  # env steps per second of the registered defaults (20 Hz control, 4 per step)


def sim_env_id(family: str) -> str:
    """Gymnasium id of the ground-truth sim env of a task family, e.g. ``wm_env/Tabletop-Lift-v0``."""
    return f"wm_env/Tabletop-{family.capitalize()}-v0"


WORLD_MODEL_ENV_ID = "wm_env/WorldModel-v0"

if WORLD_MODEL_ENV_ID not in registry:
    register(
        id=WORLD_MODEL_ENV_ID,
        entry_point="wm_env.envs.world_model_env:WorldModelEnv",
        vector_entry_point="wm_env.envs.vector:WorldModelVectorEnv",
        max_episode_steps=40,  # WorldGym's episode length
    )


def __getattr__(name: str):
    if name == "WorldModel":  # lazy: importing wm_env must not import torch models
        from wm_env.world_model import WorldModel

        return WorldModel
    raise AttributeError(f"module 'wm_env' has no attribute {name!r}")


for _name, _family in FAMILIES.items():
    if sim_env_id(_name) not in registry:
        register(
            id=sim_env_id(_name),
            entry_point="wm_env.sim.env:TabletopEnv",
            kwargs={"family": _name},
            max_episode_steps=int(round(_family.episode_seconds * DEFAULT_ENV_HZ)),
        )
