"""Does ``pixelwise train --resume RUN``, as the product prints it, continue the same run?

Trains one run uninterrupted, and the same run killed with SIGKILL once a given checkpoint is
committed, then resumed with exactly the printed command (no other option). Prints how many
weight tensors differ between the two and the largest difference.

    python bench/resume_equality.py                       # the command of issue 19
    python bench/resume_equality.py --kill-at e0002-b000009 --resume-threads 2

The resumed process gets ``OMP_NUM_THREADS=--resume-threads`` (a machine default other than the
run's ``--threads 1``), which is what broke bit-equality before the run recorded its threads.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

OPTIONS = [
    "--data", "digits", "--data-arg", "num_images=120", "--model", "unet_same",
    "--width", "0.25", "--epochs", "2", "--batch-size", "8", "--threads", "1",
    "--deterministic", "--amp", "off", "--save-every", "4",
]  # fmt: skip


def _run(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pixelwise", "-q", "train", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _killed_at(out: Path, tag: str, env: dict[str, str]) -> None:
    proc = _run([*OPTIONS, "--out", str(out)], env)
    marker = out / "resume.json"
    while proc.poll() is None:
        if marker.exists():
            try:
                files = json.loads(marker.read_text())["files"]
            except (ValueError, KeyError):
                files = {}
            if str(files.get("weights", "")).startswith(tag):
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return
        time.sleep(0.002)
    raise SystemExit(f"the run finished before checkpoint {tag} was seen: {proc.stderr.read()}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kill-at", default="e0002-b000009", help="checkpoint tag to kill after")
    p.add_argument("--resume-threads", default="2", help="OMP_NUM_THREADS of the resumed run")
    args = p.parse_args()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        ref, run = Path(tmp) / "A", Path(tmp) / "B"
        t0 = time.perf_counter()
        if _run([*OPTIONS, "--out", str(ref)], env).wait() != 0:
            raise SystemExit("the uninterrupted run failed")
        _killed_at(run, args.kill_at, env)
        resumed = _run(["--resume", str(run)], {**env, "OMP_NUM_THREADS": args.resume_threads})
        if resumed.wait() != 0:
            raise SystemExit(f"resume failed: {resumed.stderr.read()}")
        a, b = load_file(str(ref / "last.safetensors")), load_file(str(run / "last.safetensors"))
        differ = [k for k in a if not torch.equal(a[k], b[k])]
        diff = max(((a[k].double() - b[k].double()).abs().max().item() for k in differ), default=0)
        print(
            f"killed at {args.kill_at}, resumed with the printed command "
            f"(OMP_NUM_THREADS={args.resume_threads}): {len(differ)} of {len(a)} tensors differ, "
            f"max |diff| {diff:.3g} ({time.perf_counter() - t0:.0f} s)"
        )


if __name__ == "__main__":
    main()
