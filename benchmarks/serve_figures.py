"""Requests per second through ``wmgym serve`` and the remote-policy clients on loopback.

Usage::

    python -m benchmarks.serve_figures --requests 500

For each protocol (OpenVLA REST with :class:`policies.remote.RestPolicyClient`, openpi websocket
with :class:`policies.remote.WebsocketPolicyClient`) and image size, it starts ``wmgym serve
--policy random`` in its own process, sends one client's requests one after another (each
waits for its answer, as a policy in an env loop does) and reports requests/s and latency
percentiles. Writes ``benchmarks/results/serve_figures.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parents[1]


def start_server(protocol: str) -> tuple[subprocess.Popen, str]:
    """``wmgym serve --policy random --port 0`` in a child process; returns it and its URL."""
    process = subprocess.Popen(
        [sys.executable, "-m", "wmgym.cli", "serve", "--policy", "random", "--port", "0"]
        + ["--protocol", protocol, "--option", "seed=0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    line = process.stdout.readline()
    if " on " not in line:
        process.kill()
        raise RuntimeError(f"wmgym serve did not start: {line!r}")
    return process, line.split(" on ", 1)[1].split(" ", 1)[0]


def measure(protocol: str, size: int, requests: int, warmup: int = 20) -> dict:
    """Time ``requests`` sequential client calls; returns requests/s and latency percentiles (ms)."""
    from policies.remote import RestPolicyClient, WebsocketPolicyClient

    process, url = start_server(protocol)
    try:
        client = RestPolicyClient(url) if protocol == "rest" else WebsocketPolicyClient(url)
        rng = np.random.default_rng(0)
        obs = {
            "image": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
            "instruction": "lift the red cube",
        }
        client.reset(obs["instruction"])
        for _ in range(warmup):
            client.act(obs)
        latencies = np.empty(requests)
        start = time.perf_counter()
        for i in range(requests):
            t0 = time.perf_counter()
            client.act(obs)
            latencies[i] = time.perf_counter() - t0
        total = time.perf_counter() - start
        client.close()
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=20)
    return {
        "requests_per_s": requests / total,
        "latency_ms_p50": 1000 * float(np.percentile(latencies, 50)),
        "latency_ms_p95": 1000 * float(np.percentile(latencies, 95)),
        "requests": requests,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=500, help="timed requests per setting")
    parser.add_argument("--sizes", default="64,224", help="image sides")
    parser.add_argument("--protocols", default="rest,websocket")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    figures: dict = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d"),
        "load_average_1min": os.getloadavg()[0],  # the build machine is shared: note its load
        "policy": "random (wmgym serve --policy random), one client, sequential requests",
        "results": {},
    }
    for protocol in args.protocols.split(","):
        for size in (int(s) for s in args.sizes.split(",")):
            result = measure(protocol, size, args.requests)
            figures["results"][f"{protocol}/{size}"] = result
            print(
                f"{protocol} {size}x{size}: {result['requests_per_s']:.0f} requests/s, "
                f"p50 {result['latency_ms_p50']:.2f} ms, p95 {result['latency_ms_p95']:.2f} ms"
            )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve_figures.json").write_text(json.dumps(figures, indent=2))
    md = [
        f"Machine: {figures['machine']} (1-min load {figures['load_average_1min']:.1f} at start); "
        f"{figures['date']}; {figures['policy']}.",
        "",
        "| protocol | image | requests/s | p50 latency (ms) | p95 latency (ms) |",
        "|---|---|---|---|---|",
    ]
    for key, r in figures["results"].items():
        protocol, size = key.split("/")
        md.append(
            f"| {protocol} | {size}x{size} | {r['requests_per_s']:.0f} | "
            f"{r['latency_ms_p50']:.2f} | {r['latency_ms_p95']:.2f} |"
        )
    (args.out / "serve_figures.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
