"""The robot's proprioceptive state in the world model: normalisation, a map onto the latent grid,
and a head that predicts the next state.

A world model that conditions each frame on the robot's state (end-effector position and
orientation, gripper opening: the sim's 8-D ``proprio``, ``observation.state`` in its datasets)
is told where the arm is instead of having to infer it from a blurred frame, so errors in the
arm's pose cannot pile up through the image recursion. The state itself moves almost
deterministically under the end-effector controller, so a small regression head carries it from
step to step (``StateHead``); the frame generator then draws the arm where the state says.

Shapes: ``B`` batch, ``l`` context frames, ``S`` state width, ``A`` action (condition) width,
``h, w`` latent grid, ``k`` map channels per cell.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

QUATERNION = slice(3, 7)  # eef quaternion (x, y, z, w) inside the sim's proprio
STATE_KEYS = ("state_mean", "state_std", "state_delta_std")


def canonical_states(states: np.ndarray | torch.Tensor):
    """States ``(..., S)`` with the sim layout's quaternion signed so that ``w >= 0``.

    ``q`` and ``-q`` are one orientation; without a fixed sign a regression target could jump
    between them. States of another width (not the sim's 8-D layout) are returned unchanged.
    """
    if states.shape[-1] != 8:
        return states
    w = states[..., 6:7]
    sign = (w >= 0) * 2 - 1 if isinstance(states, np.ndarray) else torch.where(w >= 0, 1.0, -1.0)
    out = states.copy() if isinstance(states, np.ndarray) else states.clone()
    out[..., QUATERNION] = out[..., QUATERNION] * sign
    return out


def state_statistics(states: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> dict:
    """Per-dimension mean/std of states ``(N, S)`` and std of the change between frames."""
    states = canonical_states(np.asarray(states, dtype=np.float64))
    inside = np.ones(len(states), dtype=bool)  # rows whose next row is in the same episode
    inside[(starts + lengths - 1).astype(np.int64)] = False
    delta = states[1:][inside[:-1]] - states[:-1][inside[:-1]]
    return {
        "state_mean": states.mean(0).tolist(),
        "state_std": np.maximum(states.std(0), 1e-4).tolist(),
        "state_delta_std": np.maximum(delta.std(0), 1e-5).tolist(),
    }


class StateNormalizer:
    """Raw states <-> the normalised units the networks read, from a bundle's statistics."""

    def __init__(self, stats: dict, device: torch.device | str = "cpu") -> None:
        missing = [k for k in STATE_KEYS if k not in stats]
        if missing:
            raise ValueError(f"state statistics lack {missing}")
        self.mean = torch.tensor(stats["state_mean"], dtype=torch.float32, device=device)
        self.std = torch.tensor(stats["state_std"], dtype=torch.float32, device=device)
        self.delta_std = torch.tensor(stats["state_delta_std"], dtype=torch.float32, device=device)

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    def normalize(self, states: torch.Tensor) -> torch.Tensor:
        """Raw ``(..., S)`` -> normalised ``(..., S)``."""
        return (canonical_states(states.float()) - self.mean) / self.std

    def unnormalize(self, states: torch.Tensor) -> torch.Tensor:
        return states.float() * self.std + self.mean

    def delta_scale(self) -> torch.Tensor:
        """``(S,)``: delta units -> normalised state units."""
        return self.delta_std / self.std


class StateMap(nn.Module):
    """A state ``(B, S)`` -> ``k`` channels on every cell of the latent grid ``(B, k, h, w)``.

    A learned projection: the network learns where on the grid an end-effector pose appears (the
    camera's projection), without being told the camera. The last layer starts at zero.
    """

    def __init__(self, state_dim: int, grid: Sequence[int], channels: int, hidden: int = 128):
        super().__init__()
        self.grid, self.channels = tuple(grid), channels
        cells = self.grid[0] * self.grid[1]
        self.net = nn.Sequential(
            nn.Linear(state_dim, hidden), nn.SiLU(), nn.Linear(hidden, channels * cells)
        )
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        h, w = self.grid
        return self.net(states).reshape(*states.shape[:-1], self.channels, h, w)


class StateHead(nn.Module):
    """The next state's change (in delta units) from the last ``history`` states and the last
    ``actions`` actions (the new one and the ones into the context frames).

    Args:
        state_dim: ``S``.
        history: context states read (fewer given: the first is repeated).
        action_dim: width ``A`` of the action part of the condition (the last element is the
            null flag: an action before the episode's start is zeros with the flag set).
        width, depth: the MLP's hidden width and hidden layers.
        actions: actions read. The arm's controller does not reach its target within one step,
            so the last actions tell how it is still moving (the 8-D state has no velocities).

    The output layer starts at zero: an untrained head predicts "the state stays".
    """

    def __init__(
        self,
        state_dim: int,
        history: int,
        action_dim: int,
        width: int = 256,
        depth: int = 3,
        actions: int = 1,
    ) -> None:
        super().__init__()
        if state_dim < 1 or history < 1 or depth < 1 or actions < 1:
            raise ValueError(
                f"state head needs state_dim, history, depth, actions >= 1; got {state_dim}, "
                f"{history}, {depth}, {actions}"
            )
        self.state_dim, self.history, self.action_dim = state_dim, history, action_dim
        self.actions = actions
        inputs = history * state_dim + actions * action_dim
        layers: list[nn.Module] = [nn.Linear(inputs, width), nn.SiLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(width, width), nn.SiLU()]
        layers.append(nn.Linear(width, state_dim))
        self.net = nn.Sequential(*layers)
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, states: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Normalised states ``(B, l, S)`` and the new action ``(B, A)``, or the last actions
        ``(B, m, A)`` oldest first (fewer than ``actions``: null actions before them) ->
        change ``(B, S)``."""
        B, given, S = states.shape
        if S != self.state_dim or given < 1:
            raise ValueError(
                f"states must be (B, l >= 1, {self.state_dim}); got {tuple(states.shape)}"
            )
        if action.dim() == 2:
            action = action[:, None]
        if action.dim() != 3 or action.shape[0] != B or action.shape[2] != self.action_dim:
            raise ValueError(
                f"action must be ({B}, {self.action_dim}) or ({B}, m, {self.action_dim}); "
                f"got {tuple(action.shape)}"
            )
        if action.shape[1] < self.actions:
            from wm_env.model.dit import null_actions

            missing = self.actions - action.shape[1]
            null = null_actions(
                B, missing, self.action_dim, device=action.device, dtype=action.dtype
            )
            action = torch.cat([null, action], dim=1)
        if given < self.history:
            states = torch.cat([states[:, :1].expand(B, self.history - given, S), states], dim=1)
        flat = states[:, -self.history :].reshape(B, -1)
        recent = action[:, -self.actions :].reshape(B, -1).to(flat.dtype)  # (B, actions * A)
        return self.net(torch.cat([flat, recent], dim=1))

    def with_actions(self, actions: int) -> StateHead:
        """A head reading ``actions`` actions that computes what this one computes: the newest
        action keeps its weights, older ones start at zero."""
        first = self.net[0]
        grown = StateHead(
            self.state_dim, self.history, self.action_dim, first.out_features,
            (len(self.net) - 1) // 2, actions,
        )  # fmt: skip
        grown.load_state_dict(
            {k: v for k, v in self.state_dict().items() if k != "net.0.weight"}, strict=False
        )
        states = self.history * self.state_dim
        weight = torch.zeros_like(grown.net[0].weight)
        weight[:, :states] = first.weight[:, :states]
        keep = min(actions, self.actions) * self.action_dim
        weight[:, weight.shape[1] - keep :] = first.weight[:, first.weight.shape[1] - keep :]
        with torch.no_grad():
            grown.net[0].weight.copy_(weight)
        return grown
