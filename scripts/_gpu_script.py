"""What each GPU developer script in this folder does first: ``-h`` / ``--help`` prints its docstring, and on a
machine without a CUDA device it stops with one line (exit status 2) instead of a traceback from inside torch."""

from __future__ import annotations

import sys
from pathlib import Path


def start(doc: str | None, *, cpu_flag: str | None = None) -> None:
    """Call before anything touches the GPU; ``cpu_flag`` names the option that runs the script on the CPU."""
    args = sys.argv[1:]
    if "-h" in args or "--help" in args:
        print((doc or "").strip())
        raise SystemExit(0)
    if cpu_flag is not None and cpu_flag in args:
        return
    import torch

    if not torch.cuda.is_available():
        hint = f"; {cpu_flag} runs it on the CPU" if cpu_flag else ""
        print(f"{Path(sys.argv[0]).name}: needs a CUDA GPU, and torch sees none{hint} (--help says what it does)",
              file=sys.stderr)
        raise SystemExit(2)
