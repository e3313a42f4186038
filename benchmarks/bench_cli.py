"""Start-up time of the command line: the median wall time of ``pdmtrack --help`` and
``pdmtrack propagate --help`` over N runs, each in a fresh interpreter, beside that of
``python -c "import torch"`` for comparison.

    python benchmarks/bench_cli.py             # 10 runs each
    python benchmarks/bench_cli.py --runs 20
    PYTHONPATH=/path/to/other/checkout python benchmarks/bench_cli.py   # time another checkout
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMANDS = {
    "pdmtrack --help": ["-c", "from pdmtrack.cli import main; main()", "--help"],
    "pdmtrack propagate --help": ["-c", "from pdmtrack.cli import main; main()", "propagate", "--help"],
    'python -c "import torch"': ["-c", "import torch"],
}


def median_seconds(args: list[str], runs: int, env: dict[str, str], cwd: str) -> float:
    """Median wall time of ``python ARGS`` over ``runs`` fresh interpreters started in ``cwd``."""
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        subprocess.run([sys.executable, *args], check=True, stdout=subprocess.DEVNULL, env=env, cwd=cwd)
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="runs per command")
    runs = parser.parse_args().runs
    env = {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", str(Path(__file__).resolve().parents[1]))}
    print(f"pdmtrack from {env['PYTHONPATH']}; median of {runs} runs")
    with tempfile.TemporaryDirectory() as empty:  # python -c puts its folder first on sys.path: an empty one
        for name, args in COMMANDS.items():
            print(f"{name:28s} {median_seconds(args, runs, env, empty):6.3f} s")


if __name__ == "__main__":
    main()
