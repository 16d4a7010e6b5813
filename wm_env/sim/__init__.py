"""The ground-truth tabletop simulator (robosuite): task families, experts, the Gymnasium env.

Importing this package does not import robosuite; :mod:`wm_env.sim.env` does.
"""

from wm_env.sim.experts import ExpertQuality, PrivilegedState, ScriptedExpert
from wm_env.sim.tasks import FAMILIES, EpisodeSpec, all_instructions, get_family

__all__ = [
    "FAMILIES",
    "EpisodeSpec",
    "ExpertQuality",
    "PrivilegedState",
    "ScriptedExpert",
    "all_instructions",
    "get_family",
]
