"""Compile DeepSpeed's CPU ops into this environment now, rather than inside the first run that needs them.

DeepSpeed builds C++ ops on first use: CPU Adam (ZeRO offload, ~1 min on 2 cores) and, without a GPU, the
shared-memory collectives (~40 s) that every DeepSpeed launch loads. Built inside a run, they stall its first step
with no output, and on every rank of a fresh environment at once. `make install` runs this beside pip, while pip is
busy downloading; the result lands where tuneloop's runs look (TORCH_EXTENSIONS_DIR=<venv>/torch_extensions, see
tuneloop.train._init_distributed). A failure here is not fatal: the ops are then built on first use, as before.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

OPS = ("CPUAdamBuilder", "ShareMemCommBuilder")


def main() -> int:
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions"))
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator()
    failed = 0
    for name in OPS:
        start = time.monotonic()
        builder = accelerator.create_op_builder(name)
        if builder is None or not builder.is_compatible(verbose=False):
            print(f"{name}: not used by DeepSpeed's {accelerator.device_name()} accelerator here")
            continue
        try:
            builder.load(verbose=False)
        except Exception as e:  # a compiler or header missing: the first run will say so again, in context
            failed += 1
            print(f"{name}: not built ({type(e).__name__}: {e}); DeepSpeed will try again on first use")
            continue
        print(f"{name}: built in {time.monotonic() - start:.0f} s into {os.environ['TORCH_EXTENSIONS_DIR']}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
