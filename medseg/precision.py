"""Numeric precision for training and inference: `--precision auto|fp32|bf16|fp16`.

`auto` picks, in order: mixed precision on CUDA (bf16 where the GPU supports it, else fp16 with a
grad scaler); bf16 autocast on CPUs with bf16 hardware (Intel AMX, AVX512-BF16), which runs
convolutions 2x (AVX512-BF16) to 6-10x (AMX) faster than float32; float32 elsewhere, so `auto` is
never slower than fp32 on a CPU without bf16 hardware. Weights and optimizer state stay float32 in
every mode; only the autocast region runs in low precision.

On the CPU every precision runs with channels-last tensors: oneDNN's convolutions are faster on
them in float32 too (docs/benchmarks.md, "Training: what dominates after bf16"), now that instance norm keeps
that layout (`medseg.models.common.InstanceNorm3d`). On CUDA only the mixed precisions use it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from dataclasses import dataclass
from enum import Enum

log = logging.getLogger(__name__)


class Precision(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


@dataclass(frozen=True)
class PrecisionPlan:
    """What `resolve_precision` decided, and how to apply it."""

    requested: Precision
    resolved: Precision  # never `auto`
    device_type: str  # "cpu" or "cuda"
    channels_last: bool
    reason: str

    @property
    def autocast_dtype(self):
        import torch

        return {Precision.bf16: torch.bfloat16, Precision.fp16: torch.float16}.get(self.resolved)

    def autocast(self):
        """Context manager running the forward pass in the chosen precision."""
        import torch

        dtype = self.autocast_dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=dtype)

    @property
    def use_grad_scaler(self) -> bool:
        return self.resolved is Precision.fp16 and self.device_type == "cuda"

    def memory_format(self, spatial_dims: int):
        """torch memory format for (B, C, *spatial) tensors and for the model's weights."""
        import torch

        if not self.channels_last:
            return torch.contiguous_format
        return torch.channels_last_3d if spatial_dims == 3 else torch.channels_last

    def describe(self) -> str:
        layout = ", channels-last" if self.channels_last else ""
        return f"{self.resolved.value} on {self.device_type}{layout} ({self.reason})"


@functools.lru_cache(maxsize=1)
def cpu_bf16_units() -> str | None:
    """The bf16 hardware of this CPU: "AMX", "AVX512-BF16", "oneDNN" (where there is no /proc/cpuinfo to
    read and oneDNN reports bf16 support), or None. AMX runs a bf16 3D convolution several times faster
    than AVX512-BF16, which runs it about twice as fast as float32 (docs/benchmarks.md)."""
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    if flags:
        return "AMX" if "amx_bf16" in flags else "AVX512-BF16" if "avx512_bf16" in flags else None
    try:  # no /proc/cpuinfo (macOS, Windows): ask oneDNN
        import torch

        return "oneDNN" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else None
    except Exception:
        return None


def cpu_has_bf16() -> bool:
    """True when this CPU computes bf16 in hardware (AMX or AVX512-BF16)."""
    return cpu_bf16_units() is not None


def resolve_precision(requested: Precision | str, device_type: str) -> PrecisionPlan:
    """Turn the user's request into a concrete precision for `device_type` ("cpu"/"cuda")."""
    requested = Precision(requested)
    if device_type == "cuda":
        import torch

        if requested is Precision.auto:
            if torch.cuda.is_bf16_supported():
                return PrecisionPlan(requested, Precision.bf16, "cuda", True, "auto: GPU supports bf16")
            return PrecisionPlan(requested, Precision.fp16, "cuda", True, "auto: GPU mixed precision")
        return PrecisionPlan(requested, requested, "cuda", requested is not Precision.fp32, "requested")
    if requested is Precision.auto:
        if cpu_has_bf16():
            return PrecisionPlan(requested, Precision.bf16, "cpu", True, f"auto: CPU has bf16 hardware ({cpu_bf16_units() or 'detected'})")
        return PrecisionPlan(requested, Precision.fp32, "cpu", True, "auto: CPU has no bf16 hardware")
    if requested is not Precision.fp32 and not cpu_has_bf16():
        log.warning("%s requested on a CPU without bf16 hardware: it will be emulated and slow", requested.value)
    return PrecisionPlan(requested, requested, "cpu", True, "requested")
