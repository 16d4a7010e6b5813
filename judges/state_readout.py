"""A state read-out: a CNN that reads the robot's and the task objects' states out of a frame.

Trained on true sim frames only (``wmgym train readout``), it is then applied to frames a world
model generated, so that a rollout's fidelity is measured in what a policy evaluator needs (where
is the gripper, where is the red cube, did it keep its colour) rather than in pixels alone, and
the sim's own task predicates can be applied to what the frames show.

What it reads from one ``(H, W, 3)`` frame of the twin's main camera:

- the end-effector position (metres, world frame) and the gripper opening;
- for each object class a task can use (:data:`OBJECT_CLASSES`: a kind and a colour, e.g.
  ``cube:red``; in one episode no two task objects share a class): whether it is in view
  (a probability) and its position. An object whose colour changes in the model's frames (a red
  cube turning brown) or that fades away reads as absent: that is the identity check.

:class:`ReadoutScene` turns read-out states into the :class:`wm_env.sim.tasks.SceneView` the
task predicates take, so ``family.success(scene, spec)`` judges a generated frame the way the
sim judges a true one. Grasping is read as "gripper closed on the object": the fingers are
within :data:`GRASP_DISTANCE_M` of its centre and the opening is below
:data:`GRASP_OPENING_M`.

A read-out directory is written with the bundle API: ``config.json`` (section ``readout``) and
``readout.safetensors``.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wm_env.sim.tasks import TABLE_TOP_Z, TASK_COLORS, EpisodeSpec

OBJECT_KINDS = ("cube", "bin")
OBJECT_CLASSES: tuple[str, ...] = tuple(f"{k}:{c}" for k in OBJECT_KINDS for c in TASK_COLORS)
CENTRE = np.array([0.0, 0.0, TABLE_TOP_Z])  # positions are read relative to the table centre
POSITION_SCALE_M = 0.1  # ... in units of 10 cm
GRIPPER_SCALE_M = 0.08  # the opening of an open gripper
GRASP_DISTANCE_M = 0.035
GRASP_OPENING_M = 0.07  # a closed gripper holding a 6 cm cube reads about 0.05-0.06


def object_class(kind: str, color: str) -> str:
    return f"{kind}:{color}"


@dataclass(frozen=True)
class ReadoutConfig:
    """Architecture of a :class:`StateReadout`.

    Attributes:
        image_size: frames are resized to this square size.
        width: channels of the first convolution (doubling at each of the two halvings).
        hidden: width of the slot MLP's hidden layers.
    """

    image_size: int = 64
    width: int = 16
    hidden: int = 128


@dataclass
class ReadStates:
    """What a read-out reads from ``N`` frames (numpy).

    Attributes:
        eef: ``(N, 3)`` end-effector position, metres.
        gripper: ``(N,)`` opening, metres.
        present: ``(N, K)`` probability that object class ``k`` is in view.
        objects: ``(N, K, 3)`` position of each class, metres (meaningless where absent).
    """

    eef: np.ndarray
    gripper: np.ndarray
    present: np.ndarray
    objects: np.ndarray

    def position(self, cls: str) -> np.ndarray:
        return self.objects[:, OBJECT_CLASSES.index(cls)]


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1),
        nn.GroupNorm(8, cout),
        nn.SiLU(),
    )


class StateReadout(nn.Module):
    """Frames uint8 ``(N, H, W, 3)`` -> states (see :class:`ReadStates`).

    Localisation is built in, so that the read-out generalises to layouts it was not trained
    on instead of memorising its training episodes (a CNN whose flattened features feed an MLP
    read held-out layouts 8x worse than its training ones). A small CNN with coordinate
    channels keeps a ``size/4`` feature map; one attention map per slot (the end-effector, then
    each object class) pools it with a spatial softmax into a feature vector and the expected
    map position of that slot; a small MLP shared by the slots (told which slot by an
    embedding) turns those into the slot's position and a fourth value: the gripper opening for
    the end-effector slot, the presence logit for an object class. Outputs ``(N, 4 + 4 K)``
    normalised (:data:`CENTRE`, :data:`POSITION_SCALE_M`, :data:`GRIPPER_SCALE_M`).
    """

    def __init__(self, config: ReadoutConfig) -> None:
        super().__init__()
        self.config = config
        w = config.width
        self.features = nn.Sequential(
            _block(5, w, 1),
            _block(w, 2 * w, 2),
            _block(2 * w, 2 * w, 1),
            _block(2 * w, 4 * w, 2),
            _block(4 * w, 4 * w, 1),
            _block(4 * w, 4 * w, 1),
        )  # (N, 4w, size/4, size/4)
        slots = 1 + len(OBJECT_CLASSES)
        self.attention = nn.Conv2d(4 * w, slots, 1)
        self.slot_embedding = nn.Embedding(slots, 16)
        self.head = nn.Sequential(
            nn.Linear(4 * w + 2 + 16, config.hidden),
            nn.SiLU(),
            nn.Linear(config.hidden, config.hidden),
            nn.SiLU(),
            nn.Linear(config.hidden, 4),
        )

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 or float ``(N, H, W, 3)`` -> raw outputs ``(N, 4 + 4 K)``."""
        x = frames.float()
        if frames.dtype == torch.uint8:
            x = x / 255
        x = x.permute(0, 3, 1, 2)  # (N, 3, H, W)
        size = self.config.image_size
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
        n = x.shape[0]
        ys = torch.linspace(-1, 1, size, device=x.device)
        coords = torch.stack(torch.meshgrid(ys, ys, indexing="ij"))  # (2, size, size)
        x = torch.cat([x * 2 - 1, coords.expand(n, -1, -1, -1)], dim=1)  # (N, 5, size, size)
        feats = self.features(x)  # (N, C, h, w)
        weights = self.attention(feats).flatten(2).softmax(-1)  # (N, S, h*w)
        pooled = torch.einsum("nsp,ncp->nsc", weights, feats.flatten(2))  # (N, S, C)
        h, w = feats.shape[-2:]
        grid = torch.stack(
            torch.meshgrid(
                torch.linspace(-1, 1, h, device=x.device),
                torch.linspace(-1, 1, w, device=x.device),
                indexing="ij",
            )
        ).flatten(1)  # (2, h*w)
        where = torch.einsum("nsp,cp->nsc", weights, grid)  # (N, S, 2)
        slots = self.slot_embedding.weight.expand(n, -1, -1)  # (N, S, 16)
        out = self.head(torch.cat([pooled, where, slots], dim=-1))  # (N, S, 4)
        return out.reshape(n, -1)  # slot 0: eef xyz + gripper; then per class xyz + presence

    @torch.no_grad()
    def read(self, frames: np.ndarray, batch_size: int = 256) -> ReadStates:
        """Read uint8 frames ``(N, H, W, 3)`` (or ``(..., H, W, 3)``, flattened and restored)."""
        frames = np.asarray(frames)
        if frames.dtype != np.uint8 or frames.ndim < 4 or frames.shape[-1] != 3:
            raise ValueError(
                f"frames must be uint8 (N, H, W, 3); got {frames.dtype} {frames.shape}"
            )
        lead = frames.shape[:-3]
        flat = frames.reshape(-1, *frames.shape[-3:])
        device = next(self.parameters()).device
        outs = [
            self(torch.as_tensor(flat[i : i + batch_size], device=device)).float().cpu()
            for i in range(0, len(flat), batch_size)
        ]
        states = decode_outputs(torch.cat(outs))
        return ReadStates(*(a.reshape(*lead, *a.shape[1:]) for a in _fields(states)))


def _fields(states: ReadStates) -> tuple[np.ndarray, ...]:
    return states.eef, states.gripper, states.present, states.objects


def decode_outputs(raw: torch.Tensor) -> ReadStates:
    """Raw outputs ``(N, 4 + 4 K)`` -> :class:`ReadStates` in metres."""
    raw = raw.detach().cpu().double().numpy()
    k = len(OBJECT_CLASSES)
    per_class = raw[:, 4:].reshape(-1, k, 4)
    return ReadStates(
        eef=raw[:, :3] * POSITION_SCALE_M + CENTRE,
        gripper=raw[:, 3] * GRIPPER_SCALE_M,
        present=1 / (1 + np.exp(-per_class[..., 3])),
        objects=per_class[..., :3] * POSITION_SCALE_M + CENTRE,
    )


def encode_targets(
    eef: np.ndarray, gripper: np.ndarray, present: np.ndarray, objects: np.ndarray
) -> np.ndarray:
    """True states in metres (``(N, 3)``, ``(N,)``, ``(N, K)`` bool, ``(N, K, 3)``) -> float32
    targets ``(N, 4 + 4 K)`` in the network's units: eef xyz and gripper, then per class its
    xyz and presence as 0/1 (in the slot of the presence logit)."""
    per_class = np.concatenate(
        [(objects - CENTRE) / POSITION_SCALE_M, present[..., None].astype(np.float64)], axis=-1
    )
    flat = np.concatenate(
        [(eef - CENTRE) / POSITION_SCALE_M, (gripper / GRIPPER_SCALE_M)[:, None]], axis=1
    )
    return np.concatenate([flat, per_class.reshape(len(eef), -1)], axis=1).astype(np.float32)


def readout_loss(raw: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Smooth-L1 on the robot and on the positions of present objects, BCE on presence."""
    k = len(OBJECT_CLASSES)
    robot = F.smooth_l1_loss(raw[:, :4], targets[:, :4], beta=0.1)
    pred, true = raw[:, 4:].reshape(-1, k, 4), targets[:, 4:].reshape(-1, k, 4)
    present = true[..., 3]
    presence = F.binary_cross_entropy_with_logits(pred[..., 3], present)
    error = F.smooth_l1_loss(pred[..., :3], true[..., :3], beta=0.1, reduction="none").sum(-1)
    positions = (error * present).sum() / present.sum().clamp(min=1) / 3
    loss = robot + positions + 0.2 * presence
    return loss, {"robot": robot.item(), "objects": positions.item(), "presence": presence.item()}


# ---------------------------------------------------------------------- predicates on read-outs


class ReadoutScene:
    """A :class:`wm_env.sim.tasks.SceneView` over the read-out states of one frame."""

    def __init__(self, states: ReadStates, index: int, spec: EpisodeSpec) -> None:
        self.states, self.index, self.spec = states, index, spec

    def object_position(self, name: str) -> np.ndarray:
        placement = self.spec.placement(name)
        cls = object_class(placement.kind, placement.color)
        return self.states.objects[self.index, OBJECT_CLASSES.index(cls)]

    def is_grasped(self, name: str) -> bool:
        near = np.linalg.norm(self.states.eef[self.index] - self.object_position(name))
        return bool(near < GRASP_DISTANCE_M and self.states.gripper[self.index] < GRASP_OPENING_M)


def episode_classes(spec: EpisodeSpec) -> dict[str, str]:
    """Object name -> class of the task objects of an episode."""
    return {o.name: object_class(o.kind, o.color) for o in spec.objects}


# ---------------------------------------------------------------------- saving and loading


def save_readout(model: StateReadout, out: str | os.PathLike, extra: dict | None = None) -> dict:
    """Write ``model`` as a read-out directory (``config.json`` + ``readout.safetensors``)."""
    from wm_env.bundle import json_ready, write_component

    section = {
        "config": asdict(model.config),
        "classes": list(OBJECT_CLASSES),
        **json_ready(extra or {}),
    }
    return write_component(out, "readout", section, model.state_dict())


def load_readout(path: str | os.PathLike, device: str | torch.device = "cpu") -> StateReadout:
    """Load and verify a read-out directory written by :func:`save_readout`."""
    from wm_env.bundle import BundleError, load_weights, verify

    config = verify(path)
    section = config.get("readout")
    if not isinstance(section, dict) or "config" not in section:
        raise BundleError(f"{Path(path)} holds no state read-out (no 'readout' section)")
    if list(section.get("classes", [])) != list(OBJECT_CLASSES):
        raise BundleError(
            f"{Path(path)} reads object classes {section.get('classes')}; this version reads "
            f"{list(OBJECT_CLASSES)}: retrain it (`wmgym train readout`)"
        )
    model = StateReadout(ReadoutConfig(**section["config"]))
    model.load_state_dict(load_weights(path, config, "readout"))
    return model.to(device).eval().requires_grad_(False)
