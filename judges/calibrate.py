"""How far each judge can be trusted: accuracy, TPR, FPR against the sim's labels.

``wmgym judge calibrate --judge models/probe --data.dataset data/sim64 --bundle models/default``

On the held-out episodes of a labelled dataset (the split every training stage uses:
``--data.val-fraction``, ``--data.split-seed``), each judge gives a verdict on

- ``real``: the recorded episode (its frames as the sim rendered them), and
- ``replay``: the world model's replay of the same episode's actions: the model starts from the
  episode's first frame (as ``wm_env/WorldModel-v0`` does) and is stepped with its recorded
  actions, one generated frame per action; the judge sees the start frame as the model
  reconstructs it and the generated frames.

Both are scored against the recorded episode's label (the sim's predicate at its last frame), so the
replay figures mix the judge's errors with the world model's: they are what a leaderboard in the
world model would see. A judge that reads the world model's latents (a probe with
``inputs="latents"``, as a leaderboard runs it) judges the replays on the model's own latents,
replayed without decoding (cached beside the pixel replays), as the leaderboard hands them over.
Reported per judge and source: verdicts, abstentions, accuracy, TPR and FPR over the verdicts that
did not abstain, and seconds per verdict. With two or more judges, their majority
(:func:`judges.ensemble.combine`) is scored too and their agreement (Cohen's / Fleiss' kappa)
reported.

Outputs in ``--out``: ``verdicts.csv`` (one row per judge, source and episode), ``summary.csv``,
``calibration.json`` (everything, with each judge's name and prompt hash) and ``calibration.md``.
Replays are cached in ``--out`` (keyed by the bundle hash, episodes and sampling settings).
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from judges.base import Verdict, describe_judge
from wm_env.dataset.split import DataConfig
from wm_env.options import WorldModelOptions

SOURCES = ("real", "replay")


@dataclass(frozen=True)
class CalibrateConfig:
    """Score judges against ground-truth labels on held-out episodes and their world-model replays.

    Attributes:
        judge: one or more judges: a probe directory, a state read-out directory (the state
            judge), a local VLM checkpoint directory, or an http(s) URL of an
            OpenAI-compatible server (give ``served_model``).
        bundle: the world model that replays the episodes' actions.
        replay: also judge world-model replays (else only the recorded episodes).
        episodes: judge only the first N held-out episodes (0: all of them).
        served_model: model name for URL judges.
        num_samples: samples per verdict of VLM / URL judges (0: their default).
        device: torch device of the judges.
        wm: how the world model runs (:class:`wm_env.options.WorldModelOptions`: device,
            denoising steps, temperature, dtype; ``--wm.num-steps`` on the command line).
        replay_batch: episodes replayed per batched world-model call.
        seed: world-model noise seed (episode i uses seed + i).
        out: output directory.
        save: store each local judge's replay TPR and FPR in its directory
            (``calibration.json``, for this bundle), where leaderboards find them to correct
            their success rates (:mod:`judges.correction`). Use held-out episodes the judge
            was not trained on: another ``--data.dataset`` (e.g. ``data/sim64_test``) with
            ``--data.val-fraction`` 0.5 or more.
    """

    judge: tuple[str, ...]
    data: DataConfig = field(default_factory=DataConfig)
    bundle: Path = Path("models/default")
    replay: bool = True
    episodes: int = 0
    served_model: str = ""
    num_samples: int = 0
    device: str = "cpu"
    wm: WorldModelOptions = field(default_factory=WorldModelOptions)
    replay_batch: int = 16
    seed: int = 0
    out: Path = Path("outputs/judge_calibration")
    save: bool = False

    def __post_init__(self) -> None:
        if not self.judge:
            raise ValueError("give at least one --judge (probe dir, VLM checkpoint dir or URL)")
        if self.episodes < 0 or self.num_samples < 0 or self.replay_batch < 1:
            raise ValueError(
                f"need episodes >= 0, num_samples >= 0, replay_batch >= 1; got {self.episodes}, {self.num_samples}, {self.replay_batch}"
            )


# ---------------------------------------------------------------------- metrics
def binary_metrics(predicted, labels) -> dict[str, float]:
    """Accuracy, TPR, FPR of yes/no predictions against labels (nan where undefined).

    Returns:
        ``n``, ``positives``, ``negatives``, ``accuracy``, ``tpr`` (recall on successes),
        ``fpr`` (share of failures called successes).
    """
    predicted, labels = np.asarray(predicted, bool), np.asarray(labels, bool)
    if predicted.shape != labels.shape:
        raise ValueError(f"{predicted.shape} predictions for {labels.shape} labels")
    pos, neg = int(labels.sum()), int((~labels).sum())

    def share(hits: int, total: int) -> float:
        return hits / total if total else float("nan")

    return {
        "n": int(len(labels)),
        "positives": pos,
        "negatives": neg,
        "true_positives": int((predicted & labels).sum()),
        "false_positives": int((predicted & ~labels).sum()),
        "accuracy": share(int((predicted == labels).sum()), len(labels)),
        "tpr": share(int((predicted & labels).sum()), pos),
        "fpr": share(int((predicted & ~labels).sum()), neg),
    }


def score_verdicts(verdicts: list[Verdict], labels, seconds: list[float]) -> dict[str, Any]:
    """:func:`binary_metrics` over the verdicts that did not abstain, plus abstentions and timing."""
    labels = np.asarray(labels, bool)
    decided = np.array([v.success is not None for v in verdicts], bool)
    predicted = np.array([bool(v.success) for v in verdicts], bool)
    metrics = binary_metrics(predicted[decided], labels[decided])
    return {
        **metrics,
        "episodes": len(verdicts),
        "abstained": int((~decided).sum()),
        "seconds_per_verdict": float(np.mean(seconds)) if seconds else float("nan"),
    }


# ---------------------------------------------------------------------- replays
def replay_actions(
    wm,
    first_frames: np.ndarray,
    actions: list[np.ndarray],
    seed: int = 0,
    batch: int = 16,
    progress: bool = False,
    latents: bool = False,
    states: np.ndarray | None = None,
) -> list[np.ndarray]:
    """World-model replays: episode ``i`` starts from ``first_frames[i]`` and follows ``actions[i]``.

    Args:
        wm: a :class:`wm_env.world_model.WorldModel`.
        first_frames: uint8 ``(E, H, W, 3)``.
        actions: ``E`` float32 arrays ``(T_i, 7)``.
        latents: return the model's latents (in the encoder's own units, as
            :meth:`benchmarks.lazy_frames.LazyFrames.raw_latents` gives them) instead of frames;
            nothing is decoded.
    Returns:
        ``E`` uint8 arrays ``(T_i + 1, H', W', 3)``: the start frame as the model sees it, then
        one generated frame per action (with ``latents``: float32 ``(T_i + 1, L, D)``, the start
        frame's encoding first). Episodes are batched (shorter ones step on zero actions past
        their end; those frames are dropped); episode ``i`` uses noise seed ``seed + i``.
        ``progress`` shows a bar over episodes.
        states: float ``(E, S)`` the robot's start states, for models that condition on them.
    """
    if len(first_frames) != len(actions):
        raise ValueError(f"{len(first_frames)} start frames for {len(actions)} action sequences")
    out: list[np.ndarray] = []
    bar = tqdm(total=len(actions), desc="world-model replays", disable=not progress)

    def latest() -> np.ndarray:  # (b, L, D) in the encoder's units
        return wm.unnormalize(wm.latest_latents).float().cpu().numpy()

    for lo in range(0, len(actions), batch):
        chunk = actions[lo : lo + batch]
        steps = max(len(a) for a in chunk)
        padded = np.zeros((len(chunk), steps, 7), np.float32)
        for i, a in enumerate(chunk):
            padded[i, : len(a)] = a
        shown = wm.reset(
            first_frames[lo : lo + len(chunk)],
            seed=[seed + lo + i for i in range(len(chunk))],
            states=None if states is None else states[lo : lo + len(chunk)],
        )
        frames = [latest() if latents else shown]
        for t in range(steps):
            shown = wm.step(padded[:, t], decode=not latents)
            frames.append(latest() if latents else shown)
        stacked = np.stack(frames, axis=1)  # (b, steps + 1, H, W, 3) or (b, steps + 1, L, D)
        out.extend(stacked[i, : len(a) + 1] for i, a in enumerate(chunk))
        bar.update(len(chunk))
    bar.close()
    return out


def cached_replays(
    path: Path,
    bundle: Path,
    dataset: Path,
    episodes: list[int],
    first_frames: np.ndarray,
    actions: list[np.ndarray],
    *,
    seed: int = 0,
    wm: WorldModelOptions | None = None,
    batch: int = 16,
    progress: bool = True,
    latents: bool = False,
    states: np.ndarray | None = None,
) -> list[np.ndarray]:
    """:func:`replay_actions` with ``bundle``'s world model, cached in the npz file ``path``.

    The cache is keyed by the bundle's hash, the dataset, the episode ids, the seed, the
    sampling settings (``wm``) and whether it holds latents; any change replays again.
    """
    from wm_env.bundle import bundle_sha256
    from wm_env.world_model import WorldModel

    wm = wm or WorldModelOptions()
    key = json.dumps(
        {
            "bundle": bundle_sha256(bundle),
            "episodes": episodes,
            "dataset": str(Path(dataset).resolve()),
            "seed": seed,
            "num_steps": wm.num_steps,
            "temperature": wm.temperature,
            # set only when used, so that caches made before these options keep their key
            **({"latents": True} if latents else {}),
            **({"dtype": wm.dtype} if wm.dtype else {}),
        },
        sort_keys=True,
    )
    if path.exists():
        with np.load(path, allow_pickle=False) as cached:
            if str(cached["key"]) == key:
                return [cached[f"e{i}"] for i in range(len(episodes))]
    model = WorldModel.from_pretrained(bundle, wm)
    start = time.perf_counter()
    replays = replay_actions(
        model, first_frames, actions, seed=seed, batch=batch, progress=progress, latents=latents,
        states=states if model.uses_states else None,
    )  # fmt: skip
    if progress:
        frames = sum(len(r) - 1 for r in replays)
        print(
            f"replayed {len(replays)} episodes ({frames} frames) in {time.perf_counter() - start:.1f} s"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.npz")
    np.savez_compressed(tmp, key=np.array(key), **{f"e{i}": r for i, r in enumerate(replays)})
    tmp.replace(path)
    return replays


# ---------------------------------------------------------------------- the calibration run
def held_out_episodes(data: DataConfig, limit: int = 0) -> list[dict[str, Any]]:
    """The held-out episodes of ``data``'s split: frames, real actions, instruction, label."""
    from wm_env.dataset.lerobot import LeRobotDataset
    from wm_env.dataset.split import split_episodes

    dataset = LeRobotDataset(data.dataset)
    _, val_ids = split_episodes(dataset.num_episodes, data.val_fraction, data.split_seed)
    ids = dataset.episode_ids[val_ids]
    if limit:
        ids = ids[:limit]
    if len(ids) == 0:
        raise ValueError(
            f"no held-out episodes in {data.dataset} (val_fraction={data.val_fraction})"
        )
    with_states = "observation.state" in dataset.info.get("features", {})
    episodes = []
    for ep in ids.tolist():
        label = dataset.success(ep)
        if label is None:
            raise ValueError(f"{data.dataset}: episode {ep} has no success label")
        valid = dataset.action_valid(ep)
        episodes.append(
            {
                "episode": int(ep),
                "frames": dataset.frames(ep, data.camera),
                "actions": dataset.actions(ep)[valid][:, :7],
                "instruction": dataset.instruction(ep),
                "label": bool(label),
                "state": dataset.states(ep)[0] if with_states else None,  # (S,) the robot's
            }
        )
    return episodes


class ReplayLatents:
    """One world-model replay as a latent-reading judge gets it in a leaderboard: the model's
    latents of its frames (the start frame's encoding first, in the encoder's own units), read
    through ``raw_latents`` as :class:`benchmarks.lazy_frames.LazyFrames` offers them.

    Args:
        latents: float32 ``(T + 1, L, D)``.
        latent_space: the SHA-256s of the encoder (and adapter) the latents are in.
    """

    def __init__(self, latents: np.ndarray, latent_space: list[str]) -> None:
        self.latents, self.latent_space = latents, list(latent_space)

    def __len__(self) -> int:
        return len(self.latents)

    def raw_latents(self, index) -> torch.Tensor:
        """float ``(m, L, D)`` the latents of frames ``index``."""
        return torch.from_numpy(self.latents[np.arange(len(self))[index]])

    def __getitem__(self, index):
        raise ValueError(
            "this replay holds the world model's latents only; a judge of another latent space "
            "needs the pixel replay"
        )


def reads_latents(judge: Any) -> bool:
    """Whether ``judge`` reads a world model's latents when it is handed them (as a leaderboard
    does): a probe with ``inputs="latents"``."""
    return getattr(judge, "inputs", "frames") == "latents" and hasattr(judge, "reads_latents_of")


def episode_replays(
    config: CalibrateConfig, episodes: list[dict[str, Any]], progress: bool, latents: bool
) -> list[np.ndarray]:
    """``config.bundle``'s replays of ``episodes`` (frames, or ``latents``), cached in
    ``config.out``."""
    return cached_replays(
        config.out / ("replays_latents.npz" if latents else "replays.npz"),
        config.bundle,
        config.data.dataset,
        [e["episode"] for e in episodes],
        np.stack([e["frames"][0] for e in episodes]),
        [e["actions"] for e in episodes],
        states=start_states(episodes),
        seed=config.seed,
        wm=config.wm,
        batch=config.replay_batch,
        progress=progress,
        latents=latents,
    )


def latent_replays(
    config: CalibrateConfig, episodes: list[dict[str, Any]], progress: bool
) -> list[ReplayLatents]:
    """The world model's replays of ``episodes`` in its latents (cached in ``config.out``)."""
    from wm_env.bundle import latent_space_hashes, read_config

    space = latent_space_hashes(read_config(config.bundle))
    return [ReplayLatents(r, space) for r in episode_replays(config, episodes, progress, True)]


def start_states(episodes: list[dict[str, Any]]) -> np.ndarray | None:
    """``(E, S)`` the episodes' start states, or None when the dataset records none."""
    if any(e["state"] is None for e in episodes):
        return None
    return np.stack([e["state"] for e in episodes])


def build_judges(config: CalibrateConfig) -> list[Any]:
    """The judges of ``config.judge`` with the options that apply to each kind."""
    from judges.registry import detect_kind, load_judge

    judges = []
    for spec in config.judge:
        kind = detect_kind(spec)
        options: dict[str, Any] = {}
        if kind in ("probe", "vlm", "state"):
            options["device"] = config.device
        if kind == "openai":
            if not config.served_model:
                raise ValueError(f"--served-model is needed for the URL judge {spec}")
            options["model"] = config.served_model
        if kind in ("vlm", "openai") and config.num_samples:
            options["num_samples"] = config.num_samples
        judges.append(load_judge(spec, **options))
    return judges


def calibrate(
    config: CalibrateConfig, judges: list[Any] | None = None, progress: bool = True
) -> dict[str, Any]:
    """Run the calibration (see the module docstring); write the outputs; return the results."""
    from judges.ensemble import agreement, combine

    judges = build_judges(config) if judges is None else judges
    names = [describe_judge(j)["name"] for j in judges]
    if len(set(names)) != len(names):
        raise ValueError(f"judges need distinct names; got {names}")
    episodes = held_out_episodes(config.data, config.episodes)
    labels = [e["label"] for e in episodes]
    videos = {"real": [e["frames"] for e in episodes]}
    if config.replay:
        videos["replay"] = episode_replays(config, episodes, progress, latents=False)
        if any(reads_latents(j) for j in judges):
            videos["replay_latents"] = latent_replays(config, episodes, progress)
    rows, summary, agreements = [], {}, {}
    for source in (s for s in SOURCES if s in videos):
        verdicts: dict[str, list[Verdict]] = {}
        for judge, name in zip(judges, names, strict=True):
            verdicts[name], seconds = [], []
            clips = videos[source]
            latent = videos.get("replay_latents") if source == "replay" else None
            if latent and judge.reads_latents_of(latent[0]):
                clips = latent
            bar = tqdm(clips, desc=f"{name} on {source}", disable=not progress)
            for episode, clip in zip(episodes, bar, strict=True):
                start = time.perf_counter()
                verdict = judge.judge(clip, episode["instruction"])
                seconds.append(time.perf_counter() - start)
                verdicts[name].append(verdict)
                rows.append(_row(name, source, episode, verdict, seconds[-1]))
            summary[f"{name}|{source}"] = {
                "judge": name,
                "source": source,
                **score_verdicts(verdicts[name], labels, seconds),
            }
        if len(judges) > 1:
            combined = [combine({n: verdicts[n][i] for n in names}) for i in range(len(episodes))]
            ensemble = f"majority({','.join(names)})"
            for episode, verdict in zip(episodes, combined, strict=True):
                rows.append(_row(ensemble, source, episode, verdict, float("nan")))
            summary[f"{ensemble}|{source}"] = {
                "judge": ensemble,
                "source": source,
                **score_verdicts(combined, labels, []),
            }
            agreements[source] = agreement(verdicts)
    results = {
        "config": json.loads(json.dumps(asdict(config), default=str)),
        "judges": [describe_judge(j) for j in judges],
        "episodes": [e["episode"] for e in episodes],
        "summary": list(summary.values()),
        "agreement": agreements,
    }
    write_outputs(config.out, results, rows)
    if config.save:
        if not config.replay:
            raise ValueError("--save stores replay error rates: run with --replay")
        results["saved"] = save_replay_calibrations(config, judges, summary)
    return results


def save_replay_calibrations(config: CalibrateConfig, judges: list, summary: dict) -> list[str]:
    """Store each local judge's replay counts as a :class:`judges.correction.JudgeCalibration`
    in its directory; returns the files written."""
    from judges.correction import JudgeCalibration, save_calibration
    from wm_env.bundle import run_config_sha256

    bundle_sha = run_config_sha256(config.bundle, None)
    written = []
    for judge, spec in zip(judges, config.judge, strict=False):
        described = describe_judge(judge)
        directory = Path(spec)
        if not directory.is_dir() or not described["prompt_hash"]:
            continue  # a served judge: nowhere to store it
        scores = summary[f"{described['name']}|replay"]
        calibration = JudgeCalibration(
            judge=described["name"],
            judge_sha256=described["prompt_hash"],
            bundle_sha256=bundle_sha,
            true_positives=scores["true_positives"],
            positives=scores["positives"],
            false_positives=scores["false_positives"],
            negatives=scores["negatives"],
            source=(
                f"{scores['n']} replays of held-out episodes of "
                f"{config.data.dataset} (val_fraction {config.data.val_fraction}, split seed "
                f"{config.data.split_seed})"
            ),
        )
        written.append(str(save_calibration(directory, calibration)))
    return written


def _row(name: str, source: str, episode: dict, verdict: Verdict, seconds: float) -> dict:
    return {
        "judge": name,
        "source": source,
        "episode": episode["episode"],
        "label": episode["label"],
        "success": verdict.success,
        "score": round(verdict.score, 6),
        "seconds": round(seconds, 6),
        "rationale": verdict.rationale,
    }


# ---------------------------------------------------------------------- outputs
def _json_safe(value: Any) -> Any:
    """NaN -> None (strict JSON), recursively."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def markdown_table(summary: list[dict[str, Any]]) -> str:
    """The summary as a Markdown table (one row per judge and source)."""
    lines = [
        "| judge | episodes | source | abstained | accuracy | TPR | FPR | s / verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        lines.append(
            f"| {s['judge']} | {s['episodes']} ({s['positives']}+ / {s['negatives']}-) | {s['source']} | {s['abstained']} "
            f"| {_fmt(s['accuracy'])} | {_fmt(s['tpr'])} | {_fmt(s['fpr'])} | {_fmt(s['seconds_per_verdict'], 4)} |"
        )
    return "\n".join(lines)


def write_outputs(out: Path, results: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """``verdicts.csv``, ``summary.csv``, ``calibration.json``, ``calibration.md`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / "verdicts.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    summary = results["summary"]
    with (out / "summary.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(summary[0]))
        writer.writeheader()
        writer.writerows(summary)
    (out / "calibration.json").write_text(json.dumps(_json_safe(results), indent=2))
    md = [markdown_table(summary)]
    for source, stats in results["agreement"].items():
        pairs = ", ".join(
            f"{pair}: {_fmt(p['agreement'], 2)} agree, kappa {_fmt(p['cohen_kappa'], 2)}"
            for pair, p in stats["pairs"].items()
        )
        md.append(
            f"\nAgreement on {source}: {pairs}; Fleiss kappa {_fmt(stats['fleiss_kappa'], 2)}."
        )
    (out / "calibration.md").write_text("\n".join(md) + "\n")
