"""Compile DeepSpeed's CPU ops into this environment now, rather than inside the first run that needs them.

DeepSpeed builds C++ ops on first use: CPU Adam (ZeRO offload, ~1 min on 2 cores) and, without a GPU, the
shared-memory collectives (~40 s) that every DeepSpeed launch loads. Built inside a run, they stall its first step
with no output, and on every rank of a fresh environment at once. `make install` runs this beside pip, while pip is
busy installing the extras; the result lands where tuneloop's runs look (TORCH_EXTENSIONS_DIR=<venv>/torch_extensions,
see tuneloop.train._init_distributed). The ops build in one process each, side by side: each compile is mostly one
g++ process. A failure here is not fatal: the ops are then built on first use, as before.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

OPS = ("CPUAdamBuilder", "ShareMemCommBuilder")


def build(name: str) -> int:
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions"))
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator()
    start = time.monotonic()
    builder = accelerator.create_op_builder(name)
    if builder is None or not builder.is_compatible(verbose=False):
        print(f"{name}: not used by DeepSpeed's {accelerator.device_name()} accelerator here")
        return 0
    try:
        builder.load(verbose=False)
    except Exception as e:  # a compiler or header missing: the first run will say so again, in context
        print(f"{name}: not built ({type(e).__name__}: {e}); DeepSpeed will try again on first use")
        return 1
    print(f"{name}: built in {time.monotonic() - start:.0f} s into {os.environ['TORCH_EXTENSIONS_DIR']}")
    return 0


def main() -> int:
    builds = [
        subprocess.Popen([sys.executable, __file__, name], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for name in OPS
    ]
    failed = 0
    for proc in builds:
        out, _ = proc.communicate()
        lines = out.strip().splitlines() or [f"exit status {proc.returncode}"]
        print("\n".join(lines[-1:] if proc.returncode == 0 else lines[-5:]))
        failed += proc.returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(build(sys.argv[1]) if len(sys.argv) > 1 else main())
