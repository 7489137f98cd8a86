"""Test-session setup.

Without a GPU, Triton kernels can only run on Triton's CPU interpreter, and Triton decides between
interpreter and compiler when a kernel module is first imported. Whichever test imports a kernel
module first (directly or through the backend registry), it must already be in interpreter mode, so
the variable is set here, before any test module loads.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
