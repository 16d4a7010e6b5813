"""The ``wmgym`` command line. Each leaf command parses its own typed config dataclass (tyro).

Examples::

    wmgym demo sim --resolution 128
    wmgym data collect --family lift --episodes 100 --out data/lift
    wmgym data collect --family all --episodes 400 --quality 1.0 0.5 0.0 --out data/mixed
    wmgym data info data/lift
    wmgym train encoder --bundle models/default --data.dataset data/sim64 --optim.steps 3000
    wmgym train dynamics --bundle models/default --data.dataset data/sim64 --preset tiny
    wmgym bench leaderboard --suite benchmarks/suites/default.yaml --out outputs/leaderboard
    wmgym serve --policy random --port 8000   # OpenVLA's REST protocol: POST /act
    wmgym train probe --bundle models/default --out models/probe --data.dataset data/sim64
    wmgym judge calibrate --judge models/probe --bundle models/default --data.dataset data/sim64
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence

COMMANDS: dict[tuple[str, str], tuple[str, Callable[[list[str], str], None]]] = {}


def command(group: str, name: str, summary: str):
    """Register ``wmgym <group> <name>``."""

    def register(fn: Callable[[list[str], str], None]):
        COMMANDS[(group, name)] = (summary, fn)
        return fn

    return register


@command("demo", "sim", "the scripted experts solve one episode of each task family (GIF grid)")
def _demo_sim(args: list[str], prog: str) -> None:
    import tyro

    from wm_env.sim.demo import SimDemoConfig, run_sim_demo

    run_sim_demo(tyro.cli(SimDemoConfig, args=args, prog=prog))


@command(
    "data", "collect", "record scripted-expert sim episodes as a LeRobot v3 dataset (resumable)"
)
def _data_collect(args: list[str], prog: str) -> None:
    import tyro

    from wm_env.sim.collect import CollectConfig, collect

    config = tyro.cli(CollectConfig, args=args, prog=prog)
    dataset = collect(config)
    print(
        f"{dataset.num_episodes} episodes, {dataset.num_frames} frames at {dataset.fps:g} fps in {dataset.root}"
    )


@command("data", "info", "summarise a LeRobot v3 dataset: episodes, frames, success, instructions")
def _data_info(args: list[str], prog: str) -> None:
    import argparse

    from wm_env.dataset.info import summarize

    parser = argparse.ArgumentParser(
        prog=prog,
        description="Summarise a LeRobot v3 dataset.",
        epilog="example: wmgym data info data/sim64 --check",
    )
    parser.add_argument("root", help="dataset directory")
    parser.add_argument(
        "--check",
        action="store_true",
        help="decode every episode's rows and videos; list the ones that cannot be read (exit 1)",
    )
    parsed = parser.parse_args(args)
    print(summarize(parsed.root))
    if parsed.check:
        from wm_env.dataset.info import check_report

        report, broken = check_report(parsed.root)
        print(report)
        if broken:
            raise SystemExit(1)


@command(
    "train",
    "encoder",
    "train the from-scratch VAE (or register a pretrained encoder) into a bundle",
)
def _train_encoder(args: list[str], prog: str) -> None:
    import tyro

    from train.stage_encoder import EncoderStageConfig, run_encoder_stage

    bundle = run_encoder_stage(tyro.cli(EncoderStageConfig, args=args, prog=prog))
    print(f"encoder written to {bundle}")


@command("train", "dynamics", "train the DiT transition model (flow matching) over cached latents")
def _train_dynamics(args: list[str], prog: str) -> None:
    import tyro

    from train.stage_dynamics import DynamicsStageConfig, run_dynamics_stage

    bundle = run_dynamics_stage(tyro.cli(DynamicsStageConfig, args=args, prog=prog))
    print(f"dynamics written to {bundle}")


@command("train", "state-head", "fit a state model's state head alone, over its own rollouts")
def _train_state_head(args: list[str], prog: str) -> None:
    import tyro

    from train.stage_state_head import (
        StateHeadStageConfig,
        format_figures,
        run_state_head_stage,
    )

    config = tyro.cli(StateHeadStageConfig, args=args, prog=prog)
    print(format_figures(run_state_head_stage(config)))
    print(f"state head written to {config.bundle}")


@command("train", "jepa", "pretrain the small JEPA encoder on the sim's videos (latent prediction)")
def _train_jepa(args: list[str], prog: str) -> None:
    import tyro

    from train.stage_jepa import JEPAStageConfig, run_jepa_stage

    print(
        f"JEPA encoder written to {run_jepa_stage(tyro.cli(JEPAStageConfig, args=args, prog=prog))}"
    )


@command("train", "readout", "train the state read-out (robot and object states from frames)")
def _train_readout(args: list[str], prog: str) -> None:
    import tyro

    from train.stage_readout import ReadoutStageConfig, run_readout_stage

    print(
        f"read-out written to {run_readout_stage(tyro.cli(ReadoutStageConfig, args=args, prog=prog))}"
    )


@command("train", "pack", "encode a dataset's train/val split into one packed-latents file")
def _train_pack(args: list[str], prog: str) -> None:
    import tyro

    from train.packed import PackConfig, pack_latents

    path = pack_latents(tyro.cli(PackConfig, args=args, prog=prog))
    print(f"packed latents written to {path} ({path.stat().st_size / 2**20:.1f} MiB)")


@command("train", "adapter", "train the S-VAE / MLP adapter on frozen encoder features")
def _train_adapter(args: list[str], prog: str) -> None:
    import tyro

    from train.stage_adapter import AdapterStageConfig, run_adapter_stage

    print(
        f"adapter written to {run_adapter_stage(tyro.cli(AdapterStageConfig, args=args, prog=prog))}"
    )


@command("train", "decoder", "train the pixel decoder on frozen (adapter) latents")
def _train_decoder(args: list[str], prog: str) -> None:
    import tyro

    from train.stage_decoder import DecoderStageConfig, run_decoder_stage

    print(
        f"decoder written to {run_decoder_stage(tyro.cli(DecoderStageConfig, args=args, prog=prog))}"
    )


@command("train", "policy", "behaviour-clone the small VLA (discrete action bins, chunks)")
def _train_policy(args: list[str], prog: str) -> None:
    import tyro

    from train.stage_policy import PolicyStageConfig, run_policy_stage

    print(
        f"policy written to {run_policy_stage(tyro.cli(PolicyStageConfig, args=args, prog=prog))}"
    )


@command("train", "probe", "train the success probe (judge) on a bundle's encoder latents")
def _train_probe(args: list[str], prog: str) -> None:
    import tyro

    from train.stage_probe import ProbeStageConfig, run_probe_stage

    print(f"probe written to {run_probe_stage(tyro.cli(ProbeStageConfig, args=args, prog=prog))}")


@command(
    "judge", "calibrate", "judges' accuracy/TPR/FPR on held-out episodes and world-model replays"
)
def _judge_calibrate(args: list[str], prog: str) -> None:
    import tyro

    from judges.calibrate import CalibrateConfig, build_judges, calibrate, markdown_table

    try:
        config = tyro.cli(CalibrateConfig, args=args, prog=prog)
        judges = build_judges(config)
    except ValueError as error:  # no judge given, a path that is no judge, a URL without model
        print(f"{prog}: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    results = calibrate(config, judges)
    print(markdown_table(results["summary"]))
    print(f"written to {config.out}")


@command(
    "eval", "dynamics", "world model vs copy-last-frame on held-out episodes (PSNR, SSIM, actions)"
)
def _eval_dynamics(args: list[str], prog: str) -> None:
    import tyro

    from train.evaluate import EvalConfig, evaluate

    config = tyro.cli(EvalConfig, args=args, prog=prog)
    evaluate(config)
    print((config.out / "eval.md").read_text())
    print(f"written to {config.out}")


@command(
    "eval",
    "fidelity",
    "world-model rollouts of recorded actions read out as states: eef, objects, colours, success",
)
def _eval_fidelity(args: list[str], prog: str) -> None:
    import tyro

    from train.fidelity import FidelityConfig, evaluate_fidelity

    config = tyro.cli(FidelityConfig, args=args, prog=prog)
    evaluate_fidelity(config)
    print((config.out / "fidelity.md").read_text())
    print(f"written to {config.out}")


@command(
    "eval", "controllability", "recover actions between held-out frame pairs by CEM (per-dim error)"
)
def _eval_controllability(args: list[str], prog: str) -> None:
    import tyro

    from policies.controllability import ControllabilityConfig, evaluate_controllability

    config = tyro.cli(ControllabilityConfig, args=args, prog=prog)
    evaluate_controllability(config)
    print((config.out / "controllability.md").read_text())
    print(f"written to {config.out}")


@command(
    "bench", "leaderboard", "run a suite of policies x tasks x conditions into a CSV leaderboard"
)
def _bench_leaderboard(args: list[str], prog: str) -> None:
    import tyro

    from benchmarks.bench import LeaderboardConfig, run_leaderboard

    paths = run_leaderboard(tyro.cli(LeaderboardConfig, args=args, prog=prog))
    print((paths["leaderboard"]).read_text())
    for name, path in paths.items():
        print(f"{name:>12}: {path}")


@command(
    "serve", "", "serve a policy over OpenVLA's REST (POST /act) or openpi's websocket protocol"
)
def _serve(args: list[str], prog: str) -> None:
    import tyro

    from policies.serve import ServeConfig, serve

    serve(tyro.cli(ServeConfig, args=args, prog=prog))


@command(
    "bench", "agreement", "the same suite in the sim and the world model: do the rankings agree?"
)
def _bench_agreement(args: list[str], prog: str) -> None:
    import tyro

    from benchmarks.agreement import AgreementConfig, run_agreement

    paths = run_agreement(tyro.cli(AgreementConfig, args=args, prog=prog))
    print(paths["per_policy"].read_text())
    print(paths["summary"].read_text())
    for name, path in paths.items():
        print(f"{name:>12}: {path}")


def _usage() -> str:
    lines = [
        "usage: wmgym <group> <command> [options]   (wmgym <group> <command> --help)",
        "",
        "commands:",
    ]
    width = max(len(f"{group} {name}") for group, name in COMMANDS)
    for (group, name), (summary, _) in COMMANDS.items():
        lines.append(f"  {f'{group} {name}'.strip():<{width}}  {summary}")
    return "\n".join(lines + ["", __doc__.split("Examples::", 1)[1].rstrip()])


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``wmgym`` console script."""
    from wm_env.errors import UnknownNameError, WmGymError, unknown_name_message

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] and (argv[0], "") in COMMANDS:  # one-word commands: wmgym serve ...
        argv.insert(1, "")
    if len(argv) < 2 or argv[0] in ("-h", "--help"):
        print(_usage())
        raise SystemExit(0 if argv[:1] in (["-h"], ["--help"]) else 2)
    key = (argv[0], argv[1])
    if key not in COMMANDS:
        valid = [f"{g} {n}" for g, n in COMMANDS]
        print(unknown_name_message("command", f"{argv[0]} {argv[1]}", valid), file=sys.stderr)
        raise SystemExit(2)
    _, run = COMMANDS[key]
    prog = f"wmgym {argv[0]} {argv[1]}".rstrip()
    try:
        run(argv[2:], prog=prog)
    except UnknownNameError as exc:  # a mistyped name in an option (e.g. --family lfit)
        print(f"{prog}: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except (WmGymError, ValueError, FileNotFoundError) as exc:  # bad input: say what, not where
        if os.environ.get(DEBUG_VARIABLE):
            raise
        print(f"{prog}: error: {exc}", file=sys.stderr)
        print(f"(set {DEBUG_VARIABLE}=1 for the traceback)", file=sys.stderr)
        raise SystemExit(2) from None


DEBUG_VARIABLE = "WMGYM_DEBUG"


if __name__ == "__main__":
    main()
