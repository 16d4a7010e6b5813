"""Issue 20's encoder study, first columns: what each latent space carries before any dynamics.

For every latent space (the default bundle's VAE, the frozen ImageNet EfficientNet-Lite0, a
JEPA encoder pretrained here, or any bundle's encoder), frames of training episodes and of
held-out episodes are encoded, and linear (ridge) probes read out of the flattened latents:

- **state**: the robot's end-effector position and gripper opening (``observation.state``) from
  one frame's latents, R^2 per quantity;
- **inverse dynamics**: the action from two consecutive frames' latents, R^2 over the seven
  action dimensions (the paper's action-recovery probe, on true latents).

The ridge strength of each probe is chosen on a development split of the training episodes; the
figures are on the held-out dataset, which nothing was fitted or chosen on.

    python -m benchmarks.encoder_study --space vae=models/default imagenet jepa=runs/jepa/encoder

Writes ``benchmarks/results/encoder_study.{csv,md}``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

RESULTS = Path(__file__).parent / "results"
ALPHAS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)


def ridge_fit(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, ...]:
    """Standardised ridge regression ``x (N, D) -> y (N, K)``: (mean_x, std_x, mean_y, W)."""
    mean_x, std_x = x.mean(0), x.std(0) + 1e-6
    mean_y = y.mean(0)
    xs = torch.from_numpy((x - mean_x) / std_x).double()
    ys = torch.from_numpy(y - mean_y).double()
    n, d = xs.shape
    if d <= n:  # primal: (X'X + aI) W = X'Y
        gram = xs.T @ xs + alpha * n * torch.eye(d, dtype=torch.float64)
        weights = torch.linalg.solve(gram, xs.T @ ys)
    else:  # dual: W = X' (XX' + aI)^-1 Y
        gram = xs @ xs.T + alpha * n * torch.eye(n, dtype=torch.float64)
        weights = xs.T @ torch.linalg.solve(gram, ys)
    return mean_x, std_x, mean_y, weights.numpy()


def ridge_predict(model: tuple[np.ndarray, ...], x: np.ndarray) -> np.ndarray:
    mean_x, std_x, mean_y, weights = model
    return ((x - mean_x) / std_x) @ weights + mean_y


def r2(y: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Per column: 1 - SSE / SST (``(K,)``)."""
    sse = ((y - predicted) ** 2).sum(0)
    sst = ((y - y.mean(0)) ** 2).sum(0) + 1e-12
    return 1.0 - sse / sst


def probe(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, seed: int = 0
) -> tuple[np.ndarray, float]:
    """(held-out R^2 per column, chosen alpha): alpha picked on a 20% development split."""
    rng = np.random.default_rng(seed)
    dev = rng.random(len(train_x)) < 0.2
    scores = []
    for alpha in ALPHAS:
        model = ridge_fit(train_x[~dev], train_y[~dev], alpha)
        scores.append(r2(train_y[dev], ridge_predict(model, train_x[dev])).mean())
    alpha = ALPHAS[int(np.argmax(scores))]
    model = ridge_fit(train_x, train_y, alpha)
    return r2(test_y, ridge_predict(model, test_x)), alpha


def episode_arrays(dataset: str, episodes: int, seed: int) -> dict[str, np.ndarray]:
    """Frames, states, actions and step pairs of ``episodes`` random episodes of ``dataset``."""
    from wm_env.dataset.lerobot import LeRobotDataset

    data = LeRobotDataset(dataset)
    ids = np.random.default_rng(seed).permutation(data.episode_ids)[:episodes]
    arrays = data.load_arrays(episodes=sorted(ids.tolist()), progress=False)
    starts, lengths = arrays["starts"], arrays["lengths"]
    now = np.concatenate([s + np.arange(n - 1) for s, n in zip(starts, lengths, strict=True)])
    valid = arrays["action_valid"][now]
    return {**arrays, "pair_now": now[valid], "pair_next": now[valid] + 1}


def build_space(spec: str):
    """``name`` (a registered encoder), ``name=bundle_dir`` or ``jepa=encoder_dir``."""
    from wm_env.model.encoders import build_encoder

    name, _, path = spec.partition("=")
    if name == "jepa":
        return build_encoder("jepa", path=path or "runs/jepa/encoder")
    if path:
        from wm_env.bundle import read_config
        from wm_env.world_model import build_encoder_from_config

        return build_encoder_from_config(read_config(path), path)
    return build_encoder(name)


@torch.no_grad()
def encode(encoder, frames: np.ndarray, batch: int = 256) -> np.ndarray:
    """Flattened latents ``(N, tokens * dim)`` float32."""
    out = [encoder.encode(frames[i : i + batch]).flatten(1).float().numpy()
           for i in range(0, len(frames), batch)]  # fmt: skip
    return np.concatenate(out)


def study(spaces: list[str], train: dict, test: dict) -> pd.DataFrame:
    rows = []
    for spec in spaces:
        encoder = build_space(spec)
        started = time.perf_counter()
        z_train, z_test = encode(encoder, train["frames"]), encode(encoder, test["frames"])
        ms = 1000 * (time.perf_counter() - started) / (len(z_train) + len(z_test))
        state_r2, state_alpha = probe(
            z_train, train["states"][:, [0, 1, 2, 7]], z_test, test["states"][:, [0, 1, 2, 7]]
        )

        def pairs(z, arrays):
            return np.concatenate([z[arrays["pair_now"]], z[arrays["pair_next"]]], axis=1)

        action_r2, action_alpha = probe(
            pairs(z_train, train), train["actions"][train["pair_now"]],
            pairs(z_test, test), test["actions"][test["pair_now"]],
        )  # fmt: skip
        rows.append({
            "space": spec, "tokens": encoder.num_tokens, "dim": encoder.latent_dim,
            "ms_per_frame": round(ms, 2),
            "eef_r2": round(float(state_r2[:3].mean()), 3),
            "gripper_r2": round(float(state_r2[3]), 3),
            "action_r2": round(float(action_r2.mean()), 3),
            "action_r2_xyz": round(float(action_r2[:3].mean()), 3),
            "action_r2_gripper": round(float(action_r2[6]), 3),
            "alphas": f"state {state_alpha:g}, action {action_alpha:g}",
        })  # fmt: skip
        print(rows[-1], flush=True)
    return pd.DataFrame(rows)


def markdown_table(table: pd.DataFrame) -> str:
    """A GitHub markdown table of ``table`` (no extra dependency)."""
    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--space", nargs="+", default=["vae=models/default", "imagenet"])
    parser.add_argument("--train", default="data/sim64")
    parser.add_argument("--test", default="data/sim64_test")
    parser.add_argument("--train-episodes", type=int, default=200)
    parser.add_argument("--test-episodes", type=int, default=160)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train = episode_arrays(args.train, args.train_episodes, seed=0)
    test = episode_arrays(args.test, args.test_episodes, seed=0)
    table = study(args.space, train, test)
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "encoder_study.csv", index=False)
    header = (
        f"{time.strftime('%Y-%m-%d')}; linear probes on true latents; ridge fitted on "
        f"{len(train['frames'])} frames of {args.train_episodes} episodes of {args.train} (alpha "
        f"chosen on a 20% development part), R^2 on {len(test['frames'])} frames of "
        f"{args.test_episodes} held-out episodes of {args.test}.\n\n"
    )
    text = markdown_table(table)
    (args.out / "encoder_study.md").write_text(header + text)
    print(text)


if __name__ == "__main__":
    main()
