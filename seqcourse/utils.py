"""Device selection, seeding and plotting helpers shared by every chapter."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

DEVICE_ENV = "SEQCOURSE_DEVICE"


def get_device(prefer: str | None = None) -> torch.device:
    """Pick the device to compute on.

    Order: an explicit ``prefer`` argument, then the ``SEQCOURSE_DEVICE``
    environment variable, then CUDA, then Apple's MPS, then the CPU.

    Args:
        prefer: a device string such as ``"cpu"``, ``"cuda"`` or ``"cuda:1"``.
    """
    choice = prefer or os.environ.get(DEVICE_ENV)
    if choice:
        device = torch.device(choice)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(
                f"device {choice!r} was requested but CUDA is not available; "
                f"unset {DEVICE_ENV} or pass prefer='cpu'"
            )
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise ValueError(
                f"device {choice!r} was requested but MPS is not available; "
                f"unset {DEVICE_ENV} or pass prefer='cpu'"
            )
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int, deterministic: bool = False) -> torch.Generator:
    """Seed Python's ``random``, NumPy and PyTorch (CPU and every GPU).

    Args:
        seed: a non-negative integer.
        deterministic: also ask PyTorch for deterministic kernels, turn off
            cuDNN autotuning and TF32, so that repeated runs agree bit for bit
            (slower on a GPU).

    Returns:
        A ``torch.Generator`` seeded with ``seed``, for code that wants its own
        stream of random numbers.
    """
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    if deterministic:
        # cuBLAS needs this workspace setting to be deterministic.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    return torch.Generator().manual_seed(seed)


def use_book_style() -> None:
    """Set the matplotlib style used for the book's figures (explicit call)."""
    import matplotlib as mpl

    mpl.rcParams.update(
        {
            "figure.figsize": (6.0, 3.6),
            "figure.dpi": 100,
            "axes.grid": True,
            "grid.alpha": 0.3,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "font.size": 10,
        }
    )


def count_parameters(module: torch.nn.Module) -> int:
    """Number of trainable scalars in ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
