"""Bundle(s) -> masks on the scan's original grid.

`Predictor` loads one or more bundles (folds of one training, or of several configurations of one
plan: 2D and 3D) once, then for each case: preprocess with the bundles' plan (the same
`preprocess_case` as training) -> per fold, the model's output head stitches the sliding windows
(optionally mirrored) and activates them (semantic head: Gaussian-weighted logits, softmax) -> the
head's ensemble over the folds of each configuration, then over the configurations (each weighs the
same, as nnU-Net's `nnUNetv2_ensemble`) -> inverted to the original grid
-> the head's decode (argmax) -> channel k to the plan's k-th label value -> post-processing steps
(whose `classes` name label values).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from medseg.bundle import Bundle
from medseg.errors import BundleError, ConfigError, InputError
from medseg.inference.backends import load_networks
from medseg.inference.invert import labels_on_original, probabilities_on_original
from medseg.inference.sliding_window import sliding_window_predict, sliding_window_predict_2d
from medseg.inference.tta import mirrored
from medseg.models import model_head
from medseg.models.heads import OutputHead, softmax_  # noqa: F401  (softmax_: the semantic head's, kept importable here)
from medseg.precision import PrecisionPlan, resolve_precision
from medseg.volume import Volume

log = logging.getLogger(__name__)


@dataclass
class Prediction:
    """labels: (X, Y, Z) label values (uint8, uint16 when a value is >= 256) on the input's grid, after
    post-processing; probabilities: (K, X, Y, Z) float32 or None, channel k = the k-th label value."""

    labels: Volume
    probabilities: Volume | None = None
    timings: dict[str, float] = field(default_factory=dict)


def accumulation_device(device: torch.device, spatial_shape, num_classes: int, dtype: torch.dtype,
                        free_bytes: int | None = None) -> torch.device:
    """Where the sliding window's (K, *S) logit sum lives: on the GPU when it and its weight map take
    at most half the GPU's free memory (the rest is for the network's activations), else on the CPU.
    `free_bytes` defaults to what CUDA reports free now."""
    if device.type != "cuda":
        return device
    if free_bytes is None:
        free_bytes = torch.cuda.mem_get_info(device)[0]
    voxels = math.prod(int(s) for s in spatial_shape)
    need = voxels * (num_classes * torch.finfo(dtype).bits // 8 + 4)  # + the float32 weight sum
    if need <= free_bytes // 2:
        return device
    log.info("the %.1f GB logit buffer does not fit beside the network on the GPU; accumulating on the CPU", need / 1e9)
    return torch.device("cpu")


@torch.inference_mode()
def predict_on_grid(networks, image: torch.Tensor, config, precision: PrecisionPlan, head: OutputHead, *,
                    num_classes: int, device: torch.device, overlap: float = 0.5, batch_size: int = 1,
                    tta: bool = False, accumulate_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The network-grid prediction of `Predictor` and of training validation: (C, X, Y, Z)
    preprocessed image -> (C_out, X, Y, Z) activated output on the same grid, each network's windows
    stitched and activated as `head` says and combined over `networks` (folds) by `head.ensemble`.

    networks: one network or several (eval mode, on `device`); image: on any device (windows move
    to `device`); config: the plan's configuration (patch size, spatial dims, slice axis);
    num_classes: the plan's classes (background included), for the buffer's size.
    The (C_out, *S) sum lives where `accumulation_device` says (on the GPU when it fits, else the
    CPU). `head.decode` of the result gives channel indices on the preprocessed grid."""
    if not isinstance(networks, (list, tuple)):
        networks = [networks]
    spatial_dims = config.spatial_dims
    channels = head.out_channels(num_classes)
    accumulate_on = accumulation_device(device, image.shape[1:], channels, accumulate_dtype)
    kwargs = dict(overlap=overlap, batch_size=batch_size, precision=precision, device=device,
                  accumulate_device=accumulate_on, accumulate_dtype=accumulate_dtype)

    def fold_output(network) -> torch.Tensor:
        net = mirrored(network, spatial_dims) if tta else network

        def run_windows(gaussian: bool = True) -> torch.Tensor:
            if spatial_dims == 3:
                return sliding_window_predict(image, net, config.patch_size, gaussian=gaussian, **kwargs)
            axis = config.slice_axis if config.slice_axis is not None else 2
            return sliding_window_predict_2d(image, net, config.patch_size, slice_axis=axis, gaussian=gaussian, **kwargs)

        return head.activate(head.stitch(run_windows))

    return head.ensemble(fold_output(network) for network in networks)


def preprocessing_of(bundle: Bundle) -> dict:
    """What turns a raw case into network input (the plan less its network configurations): bundles
    that agree on it see the same preprocessed grid and can be ensembled."""
    return bundle.plan.model_dump(exclude={"configurations"})


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but no CUDA GPU is visible to torch; use --device cpu or auto")
    return torch.device(device)


class Predictor:
    """Load bundles once; `predict` many cases.

    bundle_paths: bundle folders of one plan: folds of one training, and/or other configurations
        (2D beside 3D) preprocessed the same way; their preprocessing, labels and heads must agree.
    precision: "auto" | "fp32" | "bf16" | "fp16" (see medseg.precision).
    tta: average over all mirrorings of the spatial axes.
    accumulate_dtype: float16 halves the logit sum's buffer (for very large volumes on a GPU); the
        buffer sits on the GPU when it fits (`accumulation_device`), else on the CPU.
    batch_size: windows per forward pass; default 1 on the CPU (batching gains at most 7% there and
        costs a full set of activations per window: docs/benchmarks.md, "Inference: what was
        tried"), min(plan batch, 4) on CUDA.
    postprocess: run the bundle's post-processing steps; extra_steps run after them.
    crf: refine the probabilities with MONAI's CRF on the preprocessed grid before inversion
        (None: off; a dict of `medseg.postprocess.crf.crf_refine` keyword arguments: on).
    read_options: keyword arguments of `read_scan` for paths and Datasets (resample_irregular, volume).
    """

    read_options: dict = {}  # set per instance by medseg.load_model

    def __init__(
        self,
        bundle_paths: list[str | os.PathLike],
        device: str = "auto",
        precision: str = "auto",
        tta: bool = False,
        overlap: float = 0.5,
        batch_size: int | None = None,
        postprocess: bool = True,
        extra_steps: list[dict] | None = None,
        accumulate_dtype: torch.dtype = torch.float32,
        crf: dict | None = None,
        runtime: str = "auto",
    ):
        if not bundle_paths:
            raise BundleError("no model given; pass at least one bundle with --model")
        if not 0 <= overlap < 1:
            raise ConfigError(f"overlap {overlap} is out of range; expected a value in [0, 1), e.g. 0.5")
        self.device = resolve_device(device)
        self.precision: PrecisionPlan = resolve_precision(precision, self.device.type)
        # bundles run in torch; export folders on `runtime` (medseg.inference.backends)
        loaded = [load_networks(p, runtime, device=self.device, precision=self.precision) for p in bundle_paths]
        self.bundles: list[Bundle] = [b for b, _ in loaded]
        first = self.bundles[0]
        for other in self.bundles[1:]:
            if preprocessing_of(other) != preprocessing_of(first) or other.labels != first.labels:
                raise BundleError(
                    f"{other.path}: its preprocessing or labels differ from {first.path}'s; "
                    "ensemble only folds and configurations trained on the same plan"
                )
        heads = {model_head(b.model_name).name for b in self.bundles}
        if len(heads) > 1:
            raise BundleError(f"the bundles' models have different output heads ({', '.join(sorted(heads))}); ensemble models of one kind")
        self.head: OutputHead = model_head(first.model_name)  # how windows are stitched and outputs decoded
        # the networks of each configuration (its folds), in the bundles' order: [(ConfigurationPlan, [network, ...]), ...]
        self.groups: list[tuple] = []
        for bundle, (_, network) in zip(self.bundles, loaded):
            config = bundle.configuration_plan
            for group_config, networks in self.groups:
                if group_config == config:
                    networks.append(network)
                    break
            else:
                self.groups.append((config, [network]))
        self.config = self.groups[0][0]  # the first bundle's configuration (promptable sessions use one)
        self.spatial_dims = max(config.spatial_dims for config, _ in self.groups)
        self.tta = tta
        self.overlap = overlap
        plan_batch = min(config.batch_size for config, _ in self.groups)
        self.batch_size = batch_size or (max(1, min(plan_batch, 4)) if self.device.type == "cuda" else 1)
        self.accumulate_dtype = accumulate_dtype
        self.crf = crf  # None, or keyword arguments of medseg.postprocess.crf.crf_refine
        self.steps = (list(first.postprocessing) if postprocess else []) + list(extra_steps or [])
        self.networks = [network for _, network in loaded]  # torch modules or `Backend`s: called alike
        if len(self.groups) > 1:
            log.info("ensembling %d configurations: %s", len(self.groups),
                     ", ".join(f"{len(nets)} x {config.spatial_dims}D" for config, nets in self.groups))

    @property
    def bundle(self) -> Bundle:
        return self.bundles[0]

    @property
    def labels(self) -> dict[int, str]:
        return self.bundle.labels

    def check_input(self, images: list[Volume]) -> None:
        expected = len(self.bundle.plan.channel_names)
        channels = sum(v.num_channels for v in images)
        if channels != expected:
            raise InputError(
                f"the input has {channels} channel(s) but the model expects {expected} "
                f"({', '.join(self.bundle.plan.channel_names)}); give one image per channel in that order"
            )
        for i, v in enumerate(images):
            if np.issubdtype(v.array.dtype, np.floating) and not np.isfinite(v.array).all():
                raise InputError(
                    f"input image {i} holds NaN or Inf voxels; expected finite intensities; "
                    "repair the image (e.g. replace NaN with 0) before inference"
                )
        if self.spatial_dims == 3:
            for v in images:
                if min(v.spatial_shape) == 1:
                    raise InputError(
                        f"the input is a 2D image (shape {v.spatial_shape}) but the model is 3D; "
                        "give a volume, or use a bundle trained with the 2d configuration"
                    )

    @torch.inference_mode()
    def logits_to_probabilities(self, image: torch.Tensor, num_classes: int | None = None) -> torch.Tensor:
        """(C, X, Y, Z) preprocessed image -> (C_out, X, Y, Z) float32 activated output, combined over
        the folds of each configuration, then over configurations, as the head says (semantic head:
        softmax probabilities averaged). num_classes: the output's classes, default the labels'."""
        num_classes = num_classes or len(self.labels)

        def per_configuration():
            for config, networks in self.groups:
                yield predict_on_grid(networks, image, config, self.precision, self.head, device=self.device,
                                      overlap=self.overlap, batch_size=self.batch_size, tta=self.tta,
                                      accumulate_dtype=self.accumulate_dtype, num_classes=num_classes)

        if len(self.groups) == 1:
            return next(per_configuration())
        return self.head.ensemble(per_configuration())

    def segment(self, inputs, *, series: str | None = None, probabilities: bool = False):
        """One case -> `Segmentation` on its original grid (labels, optional probabilities, names,
        codes, and the source DICOM headers when the input was DICOM).

        inputs: a Volume, a path (scan file or DICOM folder), a list of them (one per channel, in
        the model's channel order), pydicom Datasets of one series, or a `Scan` (see
        `medseg.inference.segmentation.read_scan`). series: DICOM, which series of a folder.
        """
        from medseg.inference.segmentation import Segmentation, check_channels, read_scan

        if self.bundle.plan.prompt_channels:
            raise ConfigError(f"{self.bundle.path}: a promptable model segments from prompts; use medseg infer --prompt "
                              "PROMPTS.json or medseg.InteractiveSession")
        scan = read_scan(inputs, series=series, **self.read_options)
        check_channels(scan, self.bundle.plan.channel_names)
        result = self.predict(scan.volumes, probabilities=probabilities)
        names = self.labels
        if any(step["name"] == "instances" for step in self.steps):  # instance ids, not label values (which may be uint16)
            names = {int(v): f"instance {int(v)}" for v in sorted(set(np.unique(result.labels.array).tolist()) | {0})}
        segmentation = Segmentation(result.labels, result.probabilities, names, self.bundle.label_codes, scan.datasets,
                                    self.bundle.model_name, result.timings, things=self.bundle.plan.things)
        if self.bundle.plan.border_of:
            from medseg.instances import merge_borders

            segmentation = merge_borders(segmentation, self.bundle.plan.border_of, self.bundle.plan.label_values)
        return segmentation

    def predict(self, images: list[Volume], probabilities: bool = False) -> Prediction:
        """Channel volumes of one case (same grid) -> Prediction on that grid."""
        import time

        from medseg.postprocess import apply_steps
        from medseg.preprocess.case import preprocess_case

        self.check_input(images)
        t0 = time.perf_counter()
        case = preprocess_case(images, self.bundle.plan)
        t1 = time.perf_counter()
        probs = self.logits_to_probabilities(torch.from_numpy(case.image)).cpu()
        if self.crf is not None:
            from medseg.postprocess.crf import crf_refine

            probs = crf_refine(probs, torch.from_numpy(case.image), **self.crf)
        t2 = time.perf_counter()
        prob_volume = None
        if probabilities:
            original = probabilities_on_original(probs, case.properties)
            channels = self.head.decode(torch.from_numpy(original.array)).numpy()
            labels = Volume(self.bundle.plan.to_values(channels), original.affine, images[0].meta)
            prob_volume = Volume(original.array, original.affine, images[0].meta)
        else:  # streamed: no full-resolution float array per class (large CT)
            inverted = labels_on_original(probs, case.properties, label_values=self.bundle.plan.label_values, decode=self.head.decode)
            labels = Volume(inverted.array, inverted.affine, images[0].meta)
        del probs
        if self.steps:
            labels = apply_steps(labels, self.steps)
        t3 = time.perf_counter()
        return Prediction(labels, prob_volume, {"preprocess": t1 - t0, "network": t2 - t1, "invert": t3 - t2})
