"""Peak memory of the training process: CUDA allocator peak on GPU, peak resident set size on CPU."""
from __future__ import annotations

import resource
import sys

import torch


def reset_peak_memory(device: torch.device | str) -> None:
    """Reset the CUDA peak counter (CPU peak RSS cannot be reset; it is process-wide)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_rss_bytes() -> int:
    """Peak resident set size of this process in bytes (``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def peak_memory_bytes(device: torch.device | str) -> dict:
    """``{"peak_memory_bytes": ..., "peak_memory_kind": "cuda_max_allocated" | "cpu_peak_rss"}`` for ``device``."""
    device = torch.device(device)
    if device.type == "cuda":
        return {"peak_memory_bytes": int(torch.cuda.max_memory_allocated(device)),
                "peak_memory_kind": "cuda_max_allocated"}
    return {"peak_memory_bytes": peak_rss_bytes(), "peak_memory_kind": "cpu_peak_rss"}
