"""``wmgym eval dynamics``: how well a bundle predicts held-out episodes, against copying frames.

Measured on the validation episodes of the training split:

- one step ahead: from ``history`` true frames and the true action, the next frame;
- an ``horizon``-step autoregressive rollout from a true start with the true actions;
- both against the baseline of copying the last true frame, and against the autoencoder
  ceiling (a true frame encoded and decoded), in PSNR and SSIM;
- action faithfulness: from the same start, the recorded actions (A) and the actions of another
  episode (B) are rolled out in the world model, and B is also replayed in the ground-truth sim
  from the recorded start state. The world model "moves the way the actions say" when its
  rollout under A is closer to the sim's frames under A than under B, and vice versa.

Writes ``eval.json``, ``eval.md`` and a GIF (truth | prediction | copy baseline) to ``--out``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from train.metrics import psnr, ssim
from wm_env.dataset.lerobot import LeRobotDataset
from wm_env.dataset.split import DataConfig, split_episodes
from wm_env.options import WorldModelOptions
from wm_env.viz import caption, grid, save_gif, upscale


@dataclass(frozen=True)
class EvalConfig:
    """Evaluate a world-model bundle on held-out episodes.

    Attributes:
        bundle: the model bundle directory.
        out: where eval.json, eval.md and the GIF go.
        horizon: rollout length (steps).
        max_episodes: held-out episodes used (rollouts start at their first frame).
        one_step_starts: one-step predictions per held-out episode (evenly spaced).
        counterfactual: run the action-faithfulness test (needs the sim).
        wm: how the world model runs (device, denoising steps, temperature, dtype, decoder:
            :class:`wm_env.options.WorldModelOptions`; on the command line ``--wm.num-steps``).
        seed: sampling seed.
    """

    bundle: Path = Path("models/default")
    data: DataConfig = field(default_factory=DataConfig)
    out: Path = Path("outputs/eval")
    horizon: int = 20
    max_episodes: int = 16
    one_step_starts: int = 8
    counterfactual: bool = True
    seed: int = 0
    wm: WorldModelOptions = field(default_factory=WorldModelOptions)


def _metrics(pred: np.ndarray, true: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p, t = torch.from_numpy(pred), torch.from_numpy(true)
    return psnr(p, t).numpy(), ssim(p, t).numpy()


def _rollout(model, starts: np.ndarray, actions: np.ndarray, seed: int) -> np.ndarray:
    """uint8 ``(B, T, H, W, 3)`` frames of rollouts from history frames ``(B, l, H, W, 3)``."""
    model.reset(starts, seed=seed)
    return np.stack([model.step(actions[:, t]) for t in range(actions.shape[1])], axis=1)


def evaluate(config: EvalConfig) -> dict:
    """Run the evaluation; return (and write) the figures."""
    from wm_env.world_model import WorldModel

    model = WorldModel.from_pretrained(config.bundle, config.wm)
    dataset = LeRobotDataset(config.data.dataset)
    _, val_ids = split_episodes(
        dataset.num_episodes, config.data.val_fraction, config.data.split_seed
    )
    episodes = [int(dataset.episode_ids[i]) for i in val_ids]
    history, horizon = model.history, config.horizon
    episodes = [e for e in episodes if dataset.length(e) > horizon + 1][: config.max_episodes]
    if not episodes:
        raise ValueError(f"no held-out episode is longer than the horizon {horizon}")
    frames = {e: dataset.frames(e, config.data.camera) for e in episodes}
    actions = {e: dataset.actions(e) for e in episodes}

    # one step ahead, many starts per episode, batched
    starts, histories, next_actions, targets, copies = [], [], [], [], []
    for e in episodes:
        for t in np.linspace(0, len(frames[e]) - 2, config.one_step_starts).astype(int):
            idx = np.clip(np.arange(t - history + 1, t + 1), 0, None)
            histories.append(frames[e][idx])
            next_actions.append(actions[e][t])
            targets.append(frames[e][t + 1])
            copies.append(frames[e][t])
            starts.append((e, int(t)))
    histories, next_actions = np.stack(histories), np.stack(next_actions)
    targets, copies = np.stack(targets), np.stack(copies)
    truth = np.stack([frames[e][: horizon + 1] for e in episodes])  # (B, T+1, H, W, 3)
    recorded = np.stack([actions[e][:horizon] for e in episodes])  # (B, T, 7)

    def predict(residual_decoding: bool) -> tuple[np.ndarray, np.ndarray]:
        """One-step predictions (N, H, W, 3) and rollouts (B, T, H, W, 3), one decoding."""
        model.residual_decoding = residual_decoding
        model.reset(histories, seed=config.seed)
        one = model.step(next_actions)
        return one, _rollout(model, truth[:, :1], recorded, config.seed)

    residual_decoding = model.residual_decoding
    one_step, predicted = predict(residual_decoding)  # the bundle's runtime default
    plain_one, plain_roll = predict(False) if residual_decoding else (one_step, predicted)
    model.residual_decoding = residual_decoding
    one_psnr, one_ssim = _metrics(one_step, targets)
    plain_one_psnr, plain_one_ssim = _metrics(plain_one, targets)
    copy_psnr, copy_ssim = _metrics(copies, targets)
    ceiling = model.decode(model.encode(targets))
    ceil_psnr, ceil_ssim = _metrics(ceiling, targets)

    # rollouts from each episode's first frame with its recorded actions
    roll_psnr, roll_ssim = _metrics(predicted, truth[:, 1:])
    plain_roll_psnr, plain_roll_ssim = _metrics(plain_roll, truth[:, 1:])
    copy_roll_psnr, copy_roll_ssim = _metrics(
        np.broadcast_to(truth[:, :1], truth[:, 1:].shape).copy(), truth[:, 1:]
    )

    figures = {
        "bundle": str(config.bundle),
        "temperature": model.temperature,
        "num_steps": model.num_steps,
        "dtype": config.wm.dtype or "fp32",
        "decoder": config.wm.decoder or "default",
        "residual_decoding": residual_decoding,
        "episodes": len(episodes),
        "one_step": {
            "clips": len(targets),
            "model_psnr": float(one_psnr.mean()),
            "copy_psnr": float(copy_psnr.mean()),
            "model_ssim": float(one_ssim.mean()),
            "copy_ssim": float(copy_ssim.mean()),
            "plain_decoding_psnr": float(plain_one_psnr.mean()),
            "plain_decoding_ssim": float(plain_one_ssim.mean()),
            "autoencoder_psnr": float(ceil_psnr.mean()),
            "autoencoder_ssim": float(ceil_ssim.mean()),
        },
        "rollout": {
            "horizon": horizon,
            "model_psnr": float(roll_psnr.mean()),
            "copy_psnr": float(copy_roll_psnr.mean()),
            "model_ssim": float(roll_ssim.mean()),
            "copy_ssim": float(copy_roll_ssim.mean()),
            "plain_decoding_psnr": float(plain_roll_psnr.mean()),
            "plain_decoding_ssim": float(plain_roll_ssim.mean()),
            "model_psnr_per_step": roll_psnr.mean(0).round(2).tolist(),
            "copy_psnr_per_step": copy_roll_psnr.mean(0).round(2).tolist(),
            "model_ssim_per_step": roll_ssim.mean(0).round(3).tolist(),
            "copy_ssim_per_step": copy_roll_ssim.mean(0).round(3).tolist(),
        },
        "generation_ms_per_frame": round(1000 * model.last_step_seconds / len(episodes), 2),
    }
    if config.counterfactual:
        figures["counterfactual"] = _counterfactual(
            model, dataset, episodes, truth, recorded, predicted, config
        )

    config.out.mkdir(parents=True, exist_ok=True)
    (config.out / "eval.json").write_text(json.dumps(figures, indent=2))
    (config.out / "eval.md").write_text(_markdown(figures))
    videos = []
    for b in range(min(4, len(episodes))):
        row = [truth[b, 1:], predicted[b], np.broadcast_to(truth[b, :1], truth[b, 1:].shape)]
        labels = ["truth", "world model", "copy first"]
        videos += [
            caption(upscale(v, 2), f"{name}: ep {episodes[b]}")
            for v, name in zip(row, labels, strict=True)
        ]
    save_gif(config.out / "rollouts.gif", grid(videos, columns=3))
    return figures


def _counterfactual(model, dataset, episodes, truth, recorded, predicted, config) -> dict:
    """World-model rollouts under other actions, checked against the sim replaying them."""
    import gymnasium as gym

    import wm_env

    other = np.roll(recorded, 1, axis=0)  # B: the actions of the next held-out episode
    predicted_b = _rollout(model, truth[:, :1], other, config.seed)
    sim_b = []
    envs: dict[str, gym.Env] = {}
    for b, e in enumerate(episodes):
        meta = dataset.episode_meta(e)
        family = meta["family"]
        if family not in envs:
            h = truth.shape[2]
            envs[family] = gym.make(
                wm_env.sim_env_id(family), resolution=h, max_episode_steps=10**6
            )
        env = envs[family]
        env.reset(options={"start": meta["start"]})
        sim_b.append(np.stack([env.step(a)[0]["image"] for a in other[b]]))
    sim_b = np.stack(sim_b)
    sim_a = truth[:, 1:]

    def dist(x, y):
        return _metrics(x, y)[0].mean(axis=1)  # mean PSNR over the rollout, per episode

    a_correct = dist(predicted, sim_a) > dist(predicted, sim_b)
    b_correct = dist(predicted_b, sim_b) > dist(predicted_b, sim_a)
    differs = np.abs(predicted.astype(int) - predicted_b.astype(int)).mean(axis=(1, 2, 3, 4))
    return {
        "pairs": len(episodes),
        "matched_own_actions": float(np.mean(np.concatenate([a_correct, b_correct]))),
        "mean_abs_pixel_difference_between_action_sequences": float(differs.mean()),
        "sim_mean_abs_pixel_difference": float(
            np.abs(sim_a.astype(int) - sim_b.astype(int)).mean()
        ),
    }


def _markdown(f: dict) -> str:
    o, r = f["one_step"], f["rollout"]
    lines = [
        f"Held-out episodes: {f['episodes']} ({o['clips']} one-step clips); {f['num_steps']} denoising steps, "
        f"{f.get('dtype', 'fp32')}, {f.get('decoder', 'default')} decoder, temperature {f['temperature']:g}, {'residual' if f.get('residual_decoding') else 'plain'} decoding "
        "(the runtime default; the plain column decodes the same latents without the start frame's residual).",
        "",
        "| | world model | world model, plain decoding | copy last frame | autoencoder ceiling |",
        "|---|---|---|---|---|",
        f"| one step PSNR (dB) | {o['model_psnr']:.2f} | {o['plain_decoding_psnr']:.2f} | {o['copy_psnr']:.2f} | {o['autoencoder_psnr']:.2f} |",
        f"| one step SSIM | {o['model_ssim']:.3f} | {o['plain_decoding_ssim']:.3f} | {o['copy_ssim']:.3f} | {o['autoencoder_ssim']:.3f} |",
        f"| {r['horizon']}-step rollout PSNR (dB) | {r['model_psnr']:.2f} | {r['plain_decoding_psnr']:.2f} | {r['copy_psnr']:.2f} | |",
        f"| {r['horizon']}-step rollout SSIM | {r['model_ssim']:.3f} | {r['plain_decoding_ssim']:.3f} | {r['copy_ssim']:.3f} | |",
    ]
    if "counterfactual" in f:
        c = f["counterfactual"]
        lines += [
            "",
            f"Action faithfulness: over {c['pairs']} start states, the world-model rollout matched the sim "
            f"rollout of its own action sequence (not the other one) in {100 * c['matched_own_actions']:.0f}% of cases; "
            f"the two action sequences changed the model's frames by {c['mean_abs_pixel_difference_between_action_sequences']:.1f} "
            f"grey levels on average (the sim's: {c['sim_mean_abs_pixel_difference']:.1f}).",
        ]
    return "\n".join(lines) + "\n"
