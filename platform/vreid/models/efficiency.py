"""Efficiency figures of a re-id model, as in SSBVER Table 1 (parameters, ms per image, memory, dims).

Parameters are counted without the classifier and the DINO head (they do not run at inference).
Speed: mean wall time of a batch-1 forward (``ms_per_image_b1``) and images per second at
``batch_size``, after warm-up, in eval mode under ``torch.no_grad()``.
Memory (``peak_mem_mb``): on CUDA ``torch.cuda.max_memory_allocated`` during a batch-1 forward (weights
included, as the paper's GPU figure). On CPU there is no allocator counter: we report the weights' size
plus the rise of the process's peak resident memory (``VmHWM``, reset through ``/proc/self/clear_refs``)
over a batch-1 forward; memory the allocator already holds is reused without showing, so this is an
approximate lower bound. Where ``/proc`` is unavailable the weights' size alone is reported.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn

from vreid.models.reid_model import count_parameters


def _vm_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if hasattr(model, "extract"):
        return model.extract(x)
    out = model(x)
    return out["feat"] if isinstance(out, dict) else out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def measure_efficiency(model: nn.Module, image_size: Sequence[int] | int, batch_size: int = 32,
                       device: str | torch.device = "cpu", repeats: int = 5, warmup: int = 2) -> dict[str, Any]:
    """Measure ``model`` on random inputs of ``image_size`` ((h, w) or an int).

    Returns ``dict(params_m, ms_per_image_b1, images_per_s, peak_mem_mb, feat_dim, device, batch_size,
    image_size)``; see the module docstring for what each figure means.
    """
    h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(int(v) for v in image_size)
    device = torch.device(device)
    was_training = model.training
    model.eval().to(device)
    try:
        x1 = torch.randn(1, 3, h, w, device=device)
        xb = torch.randn(int(batch_size), 3, h, w, device=device)
        for _ in range(max(warmup, 1)):
            feat = _forward(model, x1)
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(repeats):
            _forward(model, x1)
        _sync(device)
        ms_b1 = (time.perf_counter() - t0) / repeats * 1000.0

        _forward(model, xb)
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(max(repeats // 2, 1)):
            _forward(model, xb)
        _sync(device)
        ips = max(repeats // 2, 1) * int(batch_size) / (time.perf_counter() - t0)

        weights_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
        weights_mb += sum(b.numel() * b.element_size() for b in model.buffers()) / 2**20
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            _forward(model, x1)
            _sync(device)
            peak = torch.cuda.max_memory_allocated(device) / 2**20
        else:
            before = _vm_kb("VmRSS")
            if before is not None and _reset_peak_rss():
                _forward(model, x1)
                after = _vm_kb("VmHWM") or before
                peak = weights_mb + max(after - before, 0) / 1024.0
            else:
                peak = weights_mb
        params = count_parameters(model, exclude_classifier=True, exclude_dino=True)
        return {
            "params_m": params / 1e6,
            "ms_per_image_b1": ms_b1,
            "images_per_s": ips,
            "peak_mem_mb": peak,
            "feat_dim": int(feat.shape[1]),
            "device": str(device),
            "batch_size": int(batch_size),
            "image_size": [h, w],
        }
    finally:
        model.train(was_training)
