"""Helpers of the architecture-search tests: a tiny per-trial budget and the `convrnn search` command.

Importable as ``search_helpers`` from the tests beside it (pytest's "prepend" import mode).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# A trial in a few seconds: a 1/8-width rgc_shallow, 32 px, 6 steps, 12 optimizer steps of 32 images.
TINY = {
    "data": "clutter",
    "max-steps": 12,
    "batch-size": 32,
    "image-size": 32,
    "width": 0.125,
    "times": 6,
    "train-size": 256,
    "val-size": 64,
    "threads": 1,
}
# Fast failure detection for the tests: heartbeat every second, dead after 4 s of silence.
FAST = {"heartbeat": 1, "grace": 4, "startup-trials": 2, "prune-every": 4}


def search_args(study: str, out: Path, trials: int, workers: int = 1, storage: str | None = None, **extra) -> list[str]:
    args = {"study": study, "out": out, "trials": trials, "workers": workers} | FAST | TINY | extra
    if storage is not None:
        args["storage"] = storage
    out_args = ["search"]
    for k, v in args.items():
        out_args += [f"--{k}", str(v)]
    return out_args


def env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def run_cli(args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "convrnn.cli", *args], env=env(), capture_output=True, text=True, timeout=timeout
    )


def popen_cli(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "convrnn.cli", *args],
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
