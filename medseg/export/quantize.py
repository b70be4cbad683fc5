"""int8 static post-training quantisation of an ONNX export, and its accuracy gate.

Calibration: windows of the plan's patch size cut from the fold's TRAINING cases of the workdir's
cache (half centred on a random foreground voxel, as training oversamples foreground, half anywhere),
fed to onnxruntime's `quantize_static` (QDQ format, per-channel int8 weights in 7 bits, uint8 activations,
MinMax ranges). The QDQ graph runs int8 on both ONNX Runtime and OpenVINO (which reads the Q/DQ pairs
as its FakeQuantize), so one quantiser serves both runtimes.

Gate: the fold's VALIDATION cases predicted on the preprocessed grid with the same sliding window as
training validation (`predict_on_grid`), once by the float32 bundle and once per int8 runtime; the
mean Dice against the cached labels (per class over cases, then over classes: training's
val_dice_mean) must stay within `tolerance` of the float32 one, else the export is refused.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch

from medseg.errors import ConfigError, InputError

log = logging.getLogger(__name__)
# the ops with int8 kernels; norms, softmax-free activations and resampling stay float between them
QUANTIZED_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")


def fold_split(workdir: Path, fold) -> tuple[list[str], list[str]]:
    """(training ids, validation ids) of `fold` from WORKDIR/splits.json."""
    import json

    from medseg.data.splits import fold_cases

    splits_path = Path(workdir) / "splits.json"
    if not splits_path.is_file():
        raise InputError(f"{splits_path}: missing; --calibration needs the workdir the bundle was trained in (it holds splits.json "
                         "and the preprocessed cases)")
    if fold is None:
        raise ConfigError("--int8 needs a bundle of one cross-validation fold: a fold_none bundle has no validation cases to gate "
                          "the int8 masks on; export a fold_k bundle")
    train, val = fold_cases(json.loads(splits_path.read_text()), fold, [])
    if not train or not val:
        raise InputError(f"{splits_path}: fold {fold} has {len(train)} training and {len(val)} validation cases; both are needed")
    return train, val


def _window(image: np.ndarray, centre, patch) -> np.ndarray:
    """(C, *patch) crop of (C, X, Y, Z) around `centre`, zero-padded where it leaves the image."""
    out = np.zeros((image.shape[0], *patch), np.float32)
    src, dst = [], []
    for c, p, s in zip(centre, patch, image.shape[1:]):
        lo = int(c) - p // 2
        a, b = max(lo, 0), min(lo + p, s)
        src.append(slice(a, b))
        dst.append(slice(a - lo, b - lo))
    out[(slice(None), *dst)] = image[(slice(None), *src)]
    return out


def calibration_windows(workdir: Path, case_ids: list[str], config, count: int = 32, seed: int = 0) -> list[np.ndarray]:
    """`count` (1, C, *patch) float32 windows from `case_ids`' cached images (2D: one slice along the
    plan's slice axis)."""
    from medseg.preprocess.cache import load_case

    rng = np.random.default_rng(seed)
    patch = list(config.patch_size)
    axis = None
    if config.spatial_dims == 2:
        axis = config.slice_axis if config.slice_axis is not None else 2
        patch.insert(axis, 1)
    chosen = [case_ids[i] for i in rng.permutation(len(case_ids))[: min(len(case_ids), max(1, count // 2))]]
    cases = [load_case(workdir, c) for c in chosen]
    windows = []
    for n in range(count):
        case = cases[n % len(cases)]
        fg = [loc for loc in case.locations.values() if len(loc)]
        if n % 2 == 0 and fg:
            locs = fg[rng.integers(len(fg))]
            centre = locs[rng.integers(len(locs))]
        else:
            centre = [rng.integers(0, s) for s in case.image.shape[1:]]
        w = _window(np.asarray(case.image), centre, patch)
        if axis is not None:
            w = w.squeeze(1 + axis)
        windows.append(w[None])
    return windows


def quantize_onnx(fp32_path: Path, int8_path: Path, windows: list[np.ndarray]) -> dict:
    """QDQ int8 model from the fp32 one, calibrated on `windows`; returns the settings for the manifest."""
    from medseg.extras import require

    require("onnxruntime", "export")
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(windows)

        def get_next(self):
            w = next(self.items, None)
            return None if w is None else {"image": w}

    # reduce_range: 7-bit weights. Without VNNI (AVX2, most AVX-512 CPUs before it) the u8 x s8 multiply-adds
    # saturate their 16-bit sums (OpenVINO's "saturation issue", onnxruntime's reduce_range note): on this
    # AVX2 machine full-range weights took a CT model's int8 Dice from 0.63 to 0.34 on ONNX Runtime. An
    # export may run on any CPU, so it is always 7-bit; the gate measures what that costs.
    settings = dict(quant_format="QDQ", ops=list(QUANTIZED_OPS), per_channel=True, weight_type="QInt8", activation_type="QUInt8",
                    calibrate_method="MinMax", reduce_range=True)
    quantize_static(str(fp32_path), str(int8_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8, calibrate_method=CalibrationMethod.MinMax,
                    reduce_range=True, op_types_to_quantize=list(QUANTIZED_OPS))  # MinMax keeps only min/max per window
    for leftover in Path(int8_path).parent.glob("*augmented*.onnx"):  # the calibrator's scratch model
        leftover.unlink()
    return {"method": "onnxruntime.quantization.quantize_static", **settings, "calibration_windows": len(windows)}


def quantize_nncf(fp32_path: Path, xml_path: Path, windows: list[np.ndarray]) -> dict:
    """OpenVINO IR int8 model from the fp32 ONNX one with NNCF (`nncf.quantize`, its default preset:
    symmetric per-channel weights, OpenVINO's own fusions), calibrated on `windows`. On this AVX2 CPU its
    network ran 1.28x faster than the `quantize_onnx` graph on OpenVINO at the same validation Dice
    (benchmarks/bench_int8_quantisers.py), so `--format openvino --int8` uses it when nncf is installed."""
    import nncf
    import openvino as ov

    model = nncf.quantize(ov.Core().read_model(str(fp32_path)), nncf.Dataset(windows), subset_size=len(windows))
    ov.save_model(model, str(xml_path))
    return {"method": "nncf.quantize", "nncf": nncf.__version__, "preset": "performance (default)",
            "per_channel": True, "weight_type": "QInt8", "calibration_windows": len(windows)}


def mean_dice(network, workdir: Path, case_ids: list[str], plan, config, head, overlap: float = 0.5) -> float:
    """Training's val_dice_mean of `network` (a torch module or a backend) over `case_ids` (float32)."""
    from medseg.inference.predictor import predict_on_grid
    from medseg.metrics import dice_per_class
    from medseg.precision import resolve_precision
    from medseg.preprocess.cache import load_case

    precision = resolve_precision("fp32", "cpu")
    fg = list(range(1, len(plan.labels)))
    per_class: dict[int, list[float]] = {k: [] for k in fg}
    for case_id in case_ids:
        case = load_case(workdir, case_id)
        image = torch.from_numpy(np.array(case.image, dtype=np.float32))
        out = predict_on_grid(network, image, config, precision, head, num_classes=len(plan.labels), device=torch.device("cpu"),
                              overlap=overlap)
        pred = head.decode(out).numpy()
        for k, d in dice_per_class(pred, np.asarray(case.label), fg, empty=math.nan).items():
            if not math.isnan(d):
                per_class[k].append(d)
    means = [float(np.mean(v)) for v in per_class.values() if v]
    return float(np.mean(means)) if means else 1.0
