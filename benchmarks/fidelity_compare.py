"""One table of several ``wmgym eval fidelity`` runs side by side (the headline figures).

    python -m benchmarks.fidelity_compare state=docs/fidelity_state \
        anchor=outputs/fidelity_anchor --out docs/fidelity_anchor/comparison.md

Each argument is ``name=directory`` (a directory holding ``fidelity.json``). Columns: the
end-effector read-out and the state the model carries (cm, steps 20 / 40), the gripper, the
unmoved and moved objects at the last step, the share of episodes losing an object, PSNR, SSIM
and LPIPS at steps 20 / 40, and the success read-out's agreement and false-success rate.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

HEADER = (
    "| run | end effector 20 / 40 (cm) | carried state 20 / 40 (cm) | gripper 20 / 40 (cm) "
    "| unmoved / moved objects, last step (cm) | episodes losing an object | PSNR 20 / 40 "
    "| SSIM 20 / 40 | LPIPS 20 / 40 | success agreement / false |"
)


def _at(values: list | None, step: int) -> float:
    if not values or len(values) < step or values[step - 1] is None:
        return math.nan
    return float(values[step - 1])


def _pair(values: list | None, digits: int) -> str:
    return f"{_at(values, 20):.{digits}f} / {_at(values, 40):.{digits}f}"


def comparison_row(name: str, figures: dict) -> str:
    """One markdown row of a run's ``fidelity.json``."""
    states, pixels, targets = (
        figures["states"]["model"],
        figures["pixels"]["model"],
        figures["targets"],
    )
    carried = figures.get("carried_state", {}).get("eef_cm")
    cells = [
        name,
        _pair(states["eef_cm"], 2),
        _pair(carried, 2) if carried else "n/a",
        _pair(states["gripper_cm"], 2),
        f"{targets['unmoved_cm@last']['value']:.2f} / {targets['moved_cm@last']['value']:.2f}",
        f"{targets['lost_episodes']['value']:.2f}",
        _pair(pixels["psnr"], 2),
        _pair(pixels["ssim"], 3),
        _pair(pixels.get("lpips"), 3),
        f"{targets['success_agreement']['value']:.2f} / {targets['false_success']['value']:.3f}",
    ]
    return "| " + " | ".join(cells) + " |"


def comparison_table(runs: dict[str, Path]) -> str:
    """The markdown table of ``runs`` (name -> fidelity directory), with a copy-first row."""
    rows, copy = [HEADER, "|" + "---|" * 10], None
    for name, folder in runs.items():
        path = Path(folder) / "fidelity.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not a `wmgym eval fidelity` output")
        figures = json.loads(path.read_text())
        rows.append(comparison_row(name, figures))
        copy = copy or figures
    p = copy["pixels"]["copy"]
    rows.append(
        f"| copy first frame | | | | | | {_pair(p['psnr'], 2)} | {_pair(p['ssim'], 3)} "
        f"| {_pair(p.get('lpips'), 3)} | |"
    )
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="name=fidelity_directory")
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = parser.parse_args(argv)
    runs = {}
    for item in args.runs:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            parser.error(f"expected name=directory; got {item!r}")
        runs[name] = Path(folder)
    table = comparison_table(runs)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table)
    return table


if __name__ == "__main__":
    main()
