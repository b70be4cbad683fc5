"""`--runtime auto`: the fastest runtime for an export on this CPU, by a short micro-benchmark.

`measure` times one plan-sized window (batch 1) per runtime the export can run on: one warm-up call,
then the median of `repeats` calls. `medseg export` stores the result in the manifest with the CPU's
signature; `choose_runtime` uses it when the signature is this CPU's, and measures again (in memory,
the manifest is not rewritten) when the export was made elsewhere.
"""

from __future__ import annotations

import logging
import statistics
import time

import torch

from medseg.export.manifest import cpu_signature

log = logging.getLogger(__name__)
_MEASURED: dict[tuple[str, str], str] = {}  # (export folder, precision) -> runtime, once per process


def time_backend(backend, window: torch.Tensor, repeats: int = 3) -> float:
    """Median milliseconds of `backend(window)` after one warm-up call."""
    backend(window)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        backend(window)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def measure(export_dir, manifest: dict, patch_size, in_channels: int, *, precision: str = "fp32", repeats: int = 3) -> dict:
    """{"cpu", "window", "threads", "ms_per_window": {runtime: ms}, "fastest"} for the export's runtimes."""
    from medseg.inference.backends import open_backend

    window = torch.randn(1, in_channels, *[int(p) for p in patch_size], generator=torch.Generator().manual_seed(0))
    timings = {}
    for runtime in manifest["runtimes"]:
        backend = open_backend(export_dir, manifest, runtime, precision=precision)
        with torch.inference_mode():
            timings[runtime] = round(time_backend(backend, window, repeats), 2)
        del backend
    fastest = min(timings, key=timings.get)
    return {"cpu": cpu_signature(), "window": [int(p) for p in patch_size], "threads": torch.get_num_threads(),
            "precision": precision, "ms_per_window": timings, "fastest": fastest}


def choose_runtime(exported, precision: str = "fp32") -> str:
    """The runtime `auto` means for `exported` (an `ExportedModel`) on this CPU."""
    runtimes = exported.runtimes
    if len(runtimes) == 1:
        return runtimes[0]
    stored = exported.manifest.get("benchmark") or {}
    if stored.get("cpu") == cpu_signature() and stored.get("fastest") in runtimes and stored.get("precision", "fp32") == precision:
        return stored["fastest"]
    key = (str(exported.path.resolve()), precision)
    if key not in _MEASURED:
        cfg = exported.configuration_plan
        result = measure(exported.path, exported.manifest, cfg.patch_size, exported.plan.in_channels, precision=precision)
        log.info("runtime auto: measured on this CPU (the export's timing was made elsewhere): %s -> %s",
                 result["ms_per_window"], result["fastest"])
        _MEASURED[key] = result["fastest"]
    return _MEASURED[key]
