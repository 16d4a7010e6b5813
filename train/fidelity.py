"""``wmgym eval fidelity``: does a world model keep the robot and the objects where they are?

On held-out sim episodes, the world model is rolled out from each episode's first frame under
its recorded actions (up to ``horizon`` steps, the whole episode for the shorter families), and
every generated frame is compared with the true one:

- pixels: PSNR, SSIM and ST-LPIPS, next to copying the first frame and the autoencoder ceiling
  (a true frame encoded and decoded);
- states: a state read-out trained on true frames only (``wmgym train readout``) reads the
  end-effector, the gripper and every task object from the generated frame, against the true
  states replayed in the sim (:mod:`wm_env.sim.replay`): end-effector error (cm), gripper error
  (cm), and object error (cm) for the objects the episode moves (more than
  :data:`MOVED_CM` cm) and for those it does not. The same read-out on copy-first frames is the
  baseline, and on the true frames the read-out's own floor;
- identity: an object is *kept* while the read-out still sees its class (kind and colour) in
  the generated frame; an episode *loses* an object when one of its task objects reads absent
  at the last step. Also the mean colour error (grey levels) of a 5x5 patch at the object's
  true place, generated against true frame;
- success: the family's task predicate applied to the read-out states of the last generated
  frame, against the true predicate at that step (accuracy, false-success rate).

Writes ``fidelity.json``, ``fidelity.md``, ``per_step.csv``, ``errors.png`` and
``fidelity_grid.gif`` (truth | world model, the read-out positions drawn on both) to ``--out``.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from judges.state_readout import (
    OBJECT_CLASSES,
    ReadoutScene,
    ReadStates,
    episode_classes,
    load_readout,
)
from train.metrics import psnr, ssim
from wm_env.dataset.lerobot import LeRobotDataset
from wm_env.dataset.split import DataConfig, split_episodes
from wm_env.options import WorldModelOptions
from wm_env.sim.replay import EpisodeStates, dataset_states, project_to_pixels
from wm_env.sim.tasks import TASK_COLORS, get_family

MOVED_CM = 2.0  # an object that moves more than this over the rollout counts as moved
REPORT_STEPS = (1, 5, 10, 20, 40)
PATCH = 2  # colour patch half-width (pixels at 64x64)
# Issue 22's targets, checked in fidelity.md: (name, value key, bound, "max" or "min")
TARGETS_TEXT = {
    "eef_cm@20": "end-effector error at step 20 <= 3 cm",
    "eef_cm@40": "end-effector error at step 40 <= 5 cm",
    "moved_cm@last": "moved-object error at the last step <= 3 cm",
    "unmoved_cm@last": "unmoved-object error at the last step <= 1 cm",
    "lost_episodes": "episodes losing an object (class or presence) <= 5%",
    "psnr_gain@20": "20-step PSNR >= copy-first + 3 dB",
    "ssim_above_copy": "SSIM above copy-first at every step to 20",
    "success_agreement": "success read-out agrees with the truth in >= 90% of episodes",
    "false_success": "false successes <= 5%",
}


@dataclass(frozen=True)
class FidelityConfig:
    """Measure a world model's state fidelity on held-out sim episodes.

    Attributes:
        bundle: the world-model bundle.
        readout: the state read-out directory (``wmgym train readout``).
        data: the dataset (it must hold start states: recorded by ``wmgym data collect``).
        split: ``all`` (every episode: a dataset no model was trained on, the default
            ``data/sim64_test``) or ``val`` (the validation episodes of ``data``'s split).
        out: where the figures go.
        horizon: rollout steps (episodes shorter than that are rolled out to their end).
        max_episodes: episodes used (0: all).
        batch_size: episodes rolled out together.
        lpips: also compute ST-LPIPS (needs ``stlpips-pytorch``).
        gif_episodes: episodes shown in the GIF grid.
        wm: how the world model runs (device, denoising steps, temperature, dtype, decoder:
            :class:`wm_env.options.WorldModelOptions`; on the command line ``--wm.num-steps``).
        seed: sampling seed (episode ``e`` uses ``seed + e``: figures do not depend on batching).
        replay_workers: processes replaying episodes for their true states (cached).
    """

    bundle: Path = Path("models/default")
    readout: Path = Path("models/state_readout")
    data: DataConfig = field(default_factory=lambda: DataConfig(dataset=Path("data/sim64_test")))
    split: str = "all"
    out: Path = Path("outputs/fidelity")
    horizon: int = 40
    max_episodes: int = 0
    batch_size: int = 32
    lpips: bool = True
    gif_episodes: int = 4
    seed: int = 0
    wm: WorldModelOptions = field(default_factory=WorldModelOptions)
    replay_workers: int = 2

    def __post_init__(self) -> None:
        if self.split not in ("all", "val"):
            raise ValueError(f"split must be 'all' or 'val'; got {self.split!r}")
        if self.horizon < 1 or self.batch_size < 1:
            raise ValueError(
                f"horizon and batch_size must be >= 1; got {self.horizon}, {self.batch_size}"
            )


def select_episodes(dataset: LeRobotDataset, config: FidelityConfig) -> list[int]:
    """The evaluated episodes: the split's, with a start state and at least one step."""
    ids = dataset.episode_ids
    if config.split == "val":
        _, val = split_episodes(len(ids), config.data.val_fraction, config.data.split_seed)
        ids = ids[val]
    episodes = [int(e) for e in ids if dataset.length(int(e)) > 1]
    if config.max_episodes:
        episodes = episodes[: config.max_episodes]
    if not episodes:
        raise ValueError(f"{dataset.root}: no episode with at least two frames to evaluate")
    missing = [e for e in episodes if "start" not in dataset.episode_meta(e)]
    if missing:
        raise ValueError(
            f"{dataset.root}: episodes {missing[:5]}{'...' if len(missing) > 5 else ''} have no "
            "start state (meta.start), so their true object states cannot be replayed; use a "
            "dataset recorded by `wmgym data collect`"
        )
    return episodes


def require_decoder(bundle: Path) -> None:
    """Refuse a bundle that cannot render frames (fidelity reads states out of frames)."""
    from wm_env.bundle import BundleError, decoder_names, read_config

    config = read_config(bundle)
    has_own = config.get("encoder", {}).get("has_decoder", True)
    if not has_own and not config.get("decoder"):
        named = [n for n in decoder_names(config) if n != "encoder"]
        raise BundleError(
            f"{bundle}: its encoder has no decoder and the bundle no 'decoder' section, so it "
            "renders no frames to read; train one (`wmgym train decoder --bundle ...`)"
            + (f" or pass --decoder {named[0]}" if named else "")
        )


# ---------------------------------------------------------------------- per-episode errors


@dataclass
class EpisodeErrors:
    """Per-step errors of one episode's ``T`` generated frames (steps 1..T), NaN where n/a."""

    eef_cm: np.ndarray  # (T,)
    gripper_cm: np.ndarray  # (T,)
    moved_cm: np.ndarray  # (T,) mean over moved objects
    unmoved_cm: np.ndarray  # (T,) mean over unmoved objects
    kept: np.ndarray  # (T,) share of task objects whose class the read-out still sees
    colour: np.ndarray  # (T,) mean colour error at the objects' true places (grey levels)
    lost: bool  # a task object reads absent at the last step
    success: bool  # the predicate on the read-out states of the last frame


def state_errors(
    read: ReadStates,
    true: EpisodeStates,
    frames: np.ndarray,
    true_frames: np.ndarray,
    camera: str = "workspace",
) -> EpisodeErrors:
    """Errors of read-out states ``read`` (of frames ``(T, H, W, 3)``, steps 1..T) against the
    true states (frames 0..T of the episode) and the true frames ``(T, H, W, 3)``."""
    steps = len(read.eef)
    spec = true.episode_spec
    classes = episode_classes(spec)
    eef = np.linalg.norm(read.eef - true.eef[1 : steps + 1], axis=-1) * 100
    gripper = np.abs(read.gripper - true.gripper[1 : steps + 1]) * 100
    moved, unmoved, kept, colour = [], [], [], []
    h, w = frames.shape[1:3]
    for name, cls in classes.items():
        k = OBJECT_CLASSES.index(cls)
        path = true.objects[name][: steps + 1]
        was_moved = np.linalg.norm(path - path[0], axis=-1).max() * 100 > MOVED_CM
        error = np.linalg.norm(read.objects[:, k] - path[1:], axis=-1) * 100
        (moved if was_moved else unmoved).append(error)
        kept.append(read.present[:, k] > 0.5)
        pixels = np.round(project_to_pixels(path[1:], camera, h, w) - 0.5).astype(int)
        diffs = []
        for t, (c, r) in enumerate(pixels):
            r0, r1 = np.clip([r - PATCH, r + PATCH + 1], 0, h)
            c0, c1 = np.clip([c - PATCH, c + PATCH + 1], 0, w)
            a = frames[t, r0:r1, c0:c1].reshape(-1, 3).astype(float).mean(0)
            b = true_frames[t, r0:r1, c0:c1].reshape(-1, 3).astype(float).mean(0)
            diffs.append(np.abs(a - b).mean() if r1 > r0 and c1 > c0 else np.nan)
        colour.append(np.array(diffs))

    def mean(rows: list[np.ndarray]) -> np.ndarray:
        return np.mean(rows, axis=0) if rows else np.full(steps, np.nan)

    kept_arr = np.mean(kept, axis=0)
    success = get_family(spec.family).success(ReadoutScene(read, steps - 1, spec), spec)
    return EpisodeErrors(
        eef, gripper, mean(moved), mean(unmoved), kept_arr, mean(colour),
        bool(kept_arr[-1] < 1.0), bool(success),
    )  # fmt: skip


# ---------------------------------------------------------------------- the run


def _rollouts(
    model, firsts: np.ndarray, actions: np.ndarray, seeds: list[int], states: np.ndarray
) -> tuple[np.ndarray, np.ndarray | None]:
    """uint8 ``(B, T, H, W, 3)`` rollouts from first frames ``(B, H, W, 3)`` and start states
    ``(B, S)``, and for models that carry the robot's state, that state ``(B, T, S)``."""
    model.reset(firsts, seed=seeds, states=states)
    frames, carried = [], []
    for t in range(actions.shape[1]):
        frames.append(model.step(actions[:, t]))
        carried.append(model.latest_states)
    return np.stack(frames, axis=1), None if carried[0] is None else np.stack(carried, axis=1)


def carried_state_errors(carried: np.ndarray, true: EpisodeStates) -> dict[str, np.ndarray]:
    """Per-step errors (cm) of the state a model carries ``(T, 8)`` (the sim's proprio layout:
    eef xyz, quaternion, gripper opening) against the true states (frames 0..T)."""
    steps = len(carried)
    return {
        "eef_cm": np.linalg.norm(carried[:, :3] - true.eef[1 : steps + 1], axis=-1) * 100,
        "gripper_cm": np.abs(carried[:, 7] - true.gripper[1 : steps + 1]) * 100,
    }


def _pixel_metrics(pred: np.ndarray, true: np.ndarray, lpips) -> dict[str, np.ndarray]:
    """Per-frame PSNR, SSIM (and LPIPS) of ``(T, H, W, 3)`` frames."""
    p, t = torch.from_numpy(pred), torch.from_numpy(true)
    out = {"psnr": psnr(p, t).numpy(), "ssim": ssim(p, t).numpy()}
    if lpips is not None:
        with torch.no_grad():
            out["lpips"] = lpips(p.float() / 255, t.float() / 255).numpy()
    return out


def evaluate_fidelity(config: FidelityConfig, progress: bool = True) -> dict:
    """Run the fidelity evaluation; return (and write) the figures."""
    from wm_env.world_model import WorldModel

    dataset = LeRobotDataset(config.data.dataset)
    episodes = select_episodes(dataset, config)
    require_decoder(config.bundle)
    readout = load_readout(config.readout, config.wm.device)
    model = WorldModel.from_pretrained(config.bundle, config.wm)
    truth_states = dataset_states(dataset, episodes, config.replay_workers, progress)
    lpips = None
    if config.lpips:
        from train.perceptual import build_perceptual

        lpips = build_perceptual("stlpips")

    # rollouts, batched among episodes of one length so that a batch steps to its horizon
    lengths = {e: min(config.horizon, dataset.length(e) - 1) for e in episodes}
    batches = []
    for length in sorted(set(lengths.values())):
        group = [e for e in episodes if lengths[e] == length]
        batches += [
            group[i : i + config.batch_size] for i in range(0, len(group), config.batch_size)
        ]
    worlds = {"model": {}, "copy": {}, "truth": {}}
    carried_states = {}  # episode -> (T, S): the robot state a state model carries
    pix = {name: {} for name in ("model", "copy", "ceiling")}
    gif = {}
    generation = [0.0, 0]  # seconds and frames of world-model rollouts (decoding included)
    bar = tqdm(total=len(episodes), desc="fidelity rollouts", disable=not progress)
    for batch in batches:
        steps = lengths[batch[0]]
        frames = {e: dataset.frames(e, config.data.camera, count=steps + 1) for e in batch}
        acts = np.stack([dataset.actions(e)[:steps] for e in batch])
        firsts = np.stack([frames[e][0] for e in batch])
        starts = np.stack([dataset.states(e)[0] for e in batch])  # (B, S) the robot's state
        started = time.perf_counter()
        predicted, carried = _rollouts(
            model, firsts, acts, [config.seed + e for e in batch], starts
        )
        generation[0] += time.perf_counter() - started
        generation[1] += predicted.shape[0] * predicted.shape[1]
        for b, e in enumerate(batch):
            true = frames[e][1:]
            copy = np.broadcast_to(frames[e][:1], true.shape).copy()
            ceiling = model.decode(model.encode(true))
            for name, video in (("model", predicted[b]), ("copy", copy), ("ceiling", ceiling)):
                pix[name][e] = _pixel_metrics(video, true, lpips)
            worlds["model"][e], worlds["copy"][e], worlds["truth"][e] = predicted[b], copy, true
            if carried is not None:
                carried_states[e] = carried[b]
            if len(gif) < config.gif_episodes and e in episodes[: config.gif_episodes]:
                gif[e] = (true, predicted[b])
        bar.update(len(batch))
    bar.close()

    # read-outs
    errors = {name: {} for name in ("model", "copy", "truth")}
    true_success = {}
    for e in episodes:
        true_frames = worlds["truth"][e]
        for name in errors:
            frames_ = worlds[name][e]
            errors[name][e] = state_errors(
                readout.read(frames_), truth_states[e], frames_, true_frames
            )
        per_step = dataset.success_per_step(e)
        true_success[e] = (
            bool(per_step[lengths[e]]) if per_step is not None else bool(dataset.success(e))
        )

    figures = _summarise(config, model, episodes, lengths, pix, errors, true_success)
    if carried_states:
        per_episode = {
            e: carried_state_errors(carried_states[e], truth_states[e]) for e in episodes
        }
        figures["carried_state"] = {
            key: _per_step({e: v[key] for e, v in per_episode.items()}, figures["horizon"])
            for key in ("eef_cm", "gripper_cm")
        }
    figures["ms_per_frame"] = round(1000 * generation[0] / max(generation[1], 1), 2)
    figures["batch_size"] = config.batch_size
    config.out.mkdir(parents=True, exist_ok=True)
    (config.out / "fidelity.json").write_text(json.dumps(figures, indent=2))
    (config.out / "fidelity.md").write_text(_markdown(figures))
    _write_per_step(config.out / "per_step.csv", figures)
    _plot(config.out / "errors.png", figures)
    _grid_gif(config.out / "fidelity_grid.gif", gif, readout, truth_states)
    return figures


def _per_step(values: dict[int, np.ndarray], horizon: int) -> list[float | None]:
    """Mean over episodes at each step 1..horizon (episodes shorter than a step leave it)."""
    out = []
    for t in range(horizon):
        column = [v[t] for v in values.values() if len(v) > t and np.isfinite(v[t])]
        out.append(round(float(np.mean(column)), 4) if column else None)
    return out


def _at_last(values: dict[int, np.ndarray]) -> float | None:
    column = [v[-1] for v in values.values() if len(v) and np.isfinite(v[-1])]
    return round(float(np.mean(column)), 4) if column else None


def _summarise(config, model, episodes, lengths, pix, errors, true_success) -> dict:
    horizon = max(lengths.values())
    figures = {
        "bundle": str(config.bundle),
        "readout": str(config.readout),
        "dataset": str(config.data.dataset),
        "split": config.split,
        "episodes": len(episodes),
        "horizon": horizon,
        "episode_steps": {str(k): int(v) for k, v in sorted(lengths.items())},
        "num_steps": model.num_steps,
        "temperature": model.temperature,
        "dtype": config.wm.dtype or "fp32",
        "decoder": config.wm.decoder or "default",
        "pixels": {},
        "states": {},
    }
    for world, metrics in pix.items():
        figures["pixels"][world] = {
            m: _per_step({e: v[m] for e, v in metrics.items()}, horizon)
            for m in next(iter(metrics.values()))
        }
    for world, errs in errors.items():
        fields = ("eef_cm", "gripper_cm", "moved_cm", "unmoved_cm", "kept", "colour")
        block = {f: _per_step({e: getattr(x, f) for e, x in errs.items()}, horizon) for f in fields}
        block["last"] = {f: _at_last({e: getattr(x, f) for e, x in errs.items()}) for f in fields}
        block["lost_episodes"] = float(np.mean([x.lost for x in errs.values()]))
        predicted = np.array([errs[e].success for e in episodes])
        truth = np.array([true_success[e] for e in episodes])
        block["success"] = {
            "agreement": float(np.mean(predicted == truth)),
            "false_success": float(np.mean(predicted & ~truth)),
            "missed_success": float(np.mean(~predicted & truth)),
            "read_rate": float(predicted.mean()),
            "true_rate": float(truth.mean()),
        }
        figures["states"][world] = block
    figures["targets"] = _targets(figures)
    return figures


def _step(values: list, step: int):
    return values[step - 1] if len(values) >= step else None


def _targets(f: dict) -> dict:
    """Issue 22's targets: the figure, the bound, and whether it is met."""
    m, px = f["states"]["model"], f["pixels"]
    psnr20 = _step(px["model"]["psnr"], 20)
    copy20 = _step(px["copy"]["psnr"], 20)
    ssim_ok = all(
        a is not None and b is not None and a > b
        for a, b in zip(px["model"]["ssim"][:20], px["copy"]["ssim"][:20], strict=False)
    )
    rows = {
        "eef_cm@20": (_step(m["eef_cm"], 20), 3.0, "max"),
        "eef_cm@40": (_step(m["eef_cm"], 40), 5.0, "max"),
        "moved_cm@last": (m["last"]["moved_cm"], 3.0, "max"),
        "unmoved_cm@last": (m["last"]["unmoved_cm"], 1.0, "max"),
        "lost_episodes": (m["lost_episodes"], 0.05, "max"),
        "psnr_gain@20": (None if psnr20 is None else round(psnr20 - copy20, 3), 3.0, "min"),
        "ssim_above_copy": (float(ssim_ok), 1.0, "min"),
        "success_agreement": (m["success"]["agreement"], 0.9, "min"),
        "false_success": (m["success"]["false_success"], 0.05, "max"),
    }
    out = {}
    for key, (value, bound, kind) in rows.items():
        met = value is not None and (value <= bound if kind == "max" else value >= bound)
        out[key] = {"value": value, "bound": bound, "kind": kind, "met": bool(met)}
    return out


def _fmt(value, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _markdown(f: dict) -> str:
    steps = [s for s in REPORT_STEPS if s <= f["horizon"]]
    px, st = f["pixels"], f["states"]
    lines = [
        f"{f['episodes']} episodes of `{f['dataset']}` (split `{f['split']}`), rolled out from "
        f"their first frame under the recorded actions for up to {f['horizon']} steps; "
        f"{f['num_steps']} denoising steps, temperature {f['temperature']:g}, {f['dtype']}, "
        f"{f['decoder']} decoder; states read by `{f['readout']}`. Generation "
        f"{f.get('ms_per_frame', float('nan')):.1f} ms per frame (batches of "
        f"{f.get('batch_size', '?')}, decoding included).",
        "",
        "| step | " + " | ".join(str(s) for s in steps) + " |",
        "|---|" + "---|" * len(steps),
    ]

    def row(label: str, values: list, digits: int = 2) -> str:
        return f"| {label} | " + " | ".join(_fmt(_step(values, s), digits) for s in steps) + " |"

    for metric, digits in (("psnr", 2), ("ssim", 3), ("lpips", 3)):
        if metric not in px["model"]:
            continue
        lines.append(row(f"{metric.upper()} world model", px["model"][metric], digits))
        lines.append(row(f"{metric.upper()} copy first", px["copy"][metric], digits))
        lines.append(row(f"{metric.upper()} autoencoder", px["ceiling"][metric], digits))
    labels = {
        "eef_cm": "end-effector error (cm)",
        "gripper_cm": "gripper error (cm)",
        "moved_cm": "moved-object error (cm)",
        "unmoved_cm": "unmoved-object error (cm)",
        "kept": "objects kept (share)",
        "colour": "colour error (grey levels)",
    }
    for key, label in labels.items():
        for world, name in (
            ("model", "world model"),
            ("copy", "copy first"),
            ("truth", "true frames"),
        ):
            lines.append(row(f"{label}, {name}", st[world][key]))
    for key, label in (("eef_cm", "end-effector"), ("gripper_cm", "gripper")):
        if "carried_state" in f:  # the state itself, not read out of frames
            lines.append(row(f"{label} error (cm), the model's own state", f["carried_state"][key]))
    lines += [
        "",
        "| success read-out at the last step | world model | copy first | true frames |",
        "|---|---|---|---|",
    ]
    for key in ("agreement", "false_success", "missed_success", "read_rate", "true_rate"):
        lines.append(
            f"| {key.replace('_', ' ')} | "
            + " | ".join(f"{st[w]['success'][key]:.3f}" for w in ("model", "copy", "truth"))
            + " |"
        )
    lines.append(
        "| episodes losing an object | "
        + " | ".join(f"{st[w]['lost_episodes']:.3f}" for w in ("model", "copy", "truth"))
        + " |"
    )
    lines += ["", "| target | figure | met |", "|---|---|---|"]
    for key, target in f["targets"].items():
        lines.append(
            f"| {TARGETS_TEXT[key]} | {_fmt(target['value'], 3)} | {'yes' if target['met'] else '**no**'} |"
        )
    lines += [
        "",
        "Rows 'true frames' are the read-out on the true frames: its own error, the floor of "
        "every read-out figure. Moved objects are those that move more than "
        f"{MOVED_CM:g} cm during the rollout.",
    ]
    return "\n".join(lines) + "\n"


def _write_per_step(path: Path, f: dict) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["world", "metric", *range(1, f["horizon"] + 1)])
        for world, metrics in f["pixels"].items():
            for metric, values in metrics.items():
                writer.writerow([world, metric, *values])
        for world, block in f["states"].items():
            for metric in ("eef_cm", "gripper_cm", "moved_cm", "unmoved_cm", "kept", "colour"):
                writer.writerow([world, metric, *block[metric]])


def _plot(path: Path, f: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(16, 3.4))
    steps = np.arange(1, f["horizon"] + 1)
    panels = [
        ("eef_cm", "end-effector error (cm)"),
        ("moved_cm", "moved-object error (cm)"),
        ("unmoved_cm", "unmoved-object error (cm)"),
        ("kept", "objects kept (share)"),
    ]
    for ax, (key, title) in zip(axes, panels, strict=True):
        for world, style in (("model", "-"), ("copy", "--"), ("truth", ":")):
            values = [np.nan if v is None else v for v in f["states"][world][key]]
            ax.plot(
                steps,
                values,
                style,
                label={"model": "world model", "copy": "copy first", "truth": "true frames"}[world],
            )
        ax.set_title(title)
        ax.set_xlabel("step")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _mark(frame: np.ndarray, points: np.ndarray, colours: list, size: int) -> np.ndarray:
    """Draw hollow squares at pixel ``points`` ``(P, 2)`` (column, row) on a frame."""
    out = frame.copy()
    h, w = out.shape[:2]
    for (c, r), colour in zip(points, colours, strict=True):
        c, r = int(round(c)), int(round(r))
        r0, r1, c0, c1 = r - size, r + size, c - size, c + size
        for rr in range(max(r0, 0), min(r1 + 1, h)):
            for cc in (c0, c1):
                if 0 <= cc < w:
                    out[rr, cc] = colour
        for cc in range(max(c0, 0), min(c1 + 1, w)):
            for rr in (r0, r1):
                if 0 <= rr < h:
                    out[rr, cc] = colour
    return out


def _grid_gif(path: Path, videos: dict, readout, truth_states) -> None:
    """truth | world model per episode, with the read-out eef (white) and objects (in their
    colour) drawn on both, upscaled 4x."""
    from wm_env.viz import caption, grid, save_gif, upscale

    scale = 4
    tiles = []
    for e, (true, pred) in videos.items():
        spec = truth_states[e].episode_spec
        classes = episode_classes(spec)
        colours = [(255, 255, 255)] + [
            tuple(int(255 * x) for x in TASK_COLORS[cls.split(":")[1]][:3])
            for cls in classes.values()
        ]
        for video, label in ((true, "truth"), (pred, "world model")):
            read = readout.read(video)
            big = upscale(video, scale)
            marked = []
            for t in range(len(video)):
                points = [read.eef[t]] + [read.position(cls)[t] for cls in classes.values()]
                px = project_to_pixels(np.stack(points), "workspace", *video.shape[1:3]) * scale
                marked.append(_mark(big[t], px, colours, 5))
            tiles.append(caption(np.stack(marked), f"{label}: ep {e} {spec.family}"))
    if tiles:
        save_gif(path, grid(tiles, columns=2))
