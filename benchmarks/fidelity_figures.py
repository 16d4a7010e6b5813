"""State fidelity of one bundle under several sampling settings, side by side.

Usage::

    python -m benchmarks.fidelity_figures --bundle models/default --dataset data/sim64_test \\
        --settings t0.5 t0 t1.0 t0.5,s8 --stem fidelity_figures

Each setting runs ``wmgym eval fidelity`` (:mod:`train.fidelity`) with its overrides: ``tX``
the sampling temperature, ``sN`` the denoising steps, ``bf16`` the autocast dtype, ``dNAME`` a
named decoder (comma-separated, e.g. ``t0.5,s8``; ``default`` for the bundle's own). Each run
writes its full figures to ``<out>/<setting>/``; the comparison (the issue-22 targets per setting,
ms per frame) goes to ``benchmarks/results/<stem>.json`` and ``.md``.

Choose settings on a development dataset (for example the validation episodes of the read-out's
data, ``--dataset data/sim64_readout --split val``) and report the chosen one on held-out
episodes: a setting picked on the figures it reports is tuned on its test set.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def parse_setting(text: str) -> dict:
    """``"t0.5,s8,bf16"`` -> :class:`wm_env.options.WorldModelOptions` settings."""
    overrides: dict = {}
    if text == "default":
        return overrides
    for part in text.split(","):
        if part == "bf16":
            overrides["dtype"] = "bf16"
        elif part.startswith("t"):
            overrides["temperature"] = float(part[1:])
        elif part.startswith("s"):
            overrides["num_steps"] = int(part[1:])
        elif part.startswith("d"):
            overrides["decoder"] = part[1:]
        else:
            raise ValueError(f"unknown setting part {part!r} in {text!r} (tX, sN, bf16, dNAME)")
    return overrides


def main(argv: list[str] | None = None) -> dict:
    from train.fidelity import FidelityConfig, evaluate_fidelity
    from wm_env.dataset.split import DataConfig
    from wm_env.options import WorldModelOptions

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=Path("models/default"))
    parser.add_argument("--readout", type=Path, default=Path("models/state_readout"))
    parser.add_argument("--dataset", type=Path, default=Path("data/sim64_test"))
    parser.add_argument("--split", default="all", choices=["all", "val"])
    parser.add_argument("--settings", nargs="+", default=["default"])
    parser.add_argument("--max-episodes", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("outputs/fidelity_figures"))
    parser.add_argument("--stem", default="fidelity_figures")
    parser.add_argument("--no-lpips", action="store_true")
    args = parser.parse_args(argv)

    rows = {}
    for setting in args.settings:
        started = time.perf_counter()
        config = FidelityConfig(
            bundle=args.bundle,
            readout=args.readout,
            data=DataConfig(dataset=args.dataset),
            split=args.split,
            out=args.out / setting,
            max_episodes=args.max_episodes,
            lpips=not args.no_lpips,
            wm=WorldModelOptions(**parse_setting(setting)),
        )
        figures = evaluate_fidelity(config)
        rows[setting] = {
            "targets": figures["targets"],
            "episodes": figures["episodes"],
            "minutes": round((time.perf_counter() - started) / 60, 1),
            "success": figures["states"]["model"]["success"],
            "ms_per_frame": figures["ms_per_frame"],
        }
        print(f"{setting}: {(config.out / 'fidelity.md')}")
    result = {
        "bundle": str(args.bundle),
        "dataset": str(args.dataset),
        "split": args.split,
        "settings": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.stem}.json").write_text(json.dumps(result, indent=2))
    (RESULTS / f"{args.stem}.md").write_text(markdown(result, args))
    print((RESULTS / f"{args.stem}.md").read_text())
    return result


def markdown(result: dict, args) -> str:
    settings = list(result["settings"])
    keys = list(next(iter(result["settings"].values()))["targets"])
    lines = [
        f"`python -m benchmarks.fidelity_figures --bundle {args.bundle} --dataset {args.dataset} "
        f"--split {args.split} --settings {' '.join(settings)}`"
        + (f" `--max-episodes {args.max_episodes}`" if args.max_episodes else ""),
        "",
        f"{next(iter(result['settings'].values()))['episodes']} episodes. Figures per setting "
        f"(met targets marked); full tables in `{args.out}/<setting>/fidelity.md`.",
        "",
        "| target | bound | " + " | ".join(settings) + " |",
        "|---|---|" + "---|" * len(settings),
    ]
    for key in keys:
        first = result["settings"][settings[0]]["targets"][key]
        cells = []
        for s in settings:
            t = result["settings"][s]["targets"][key]
            value = "n/a" if t["value"] is None else f"{t['value']:.3f}"
            cells.append(f"{value}{' ok' if t['met'] else ''}")
        sign = "<=" if first["kind"] == "max" else ">="
        lines.append(f"| {key} | {sign} {first['bound']:g} | " + " | ".join(cells) + " |")
    lines.append(
        "| ms per frame | | "
        + " | ".join(str(result["settings"][s]["ms_per_frame"]) for s in settings)
        + " |"
    )
    lines.append(
        "| minutes (2 cores) | | "
        + " | ".join(str(result["settings"][s]["minutes"]) for s in settings)
        + " |"
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
