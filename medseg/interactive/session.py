"""`medseg.InteractiveSession`: click, box, undo; each interaction answered on a zoom window.

    s = InteractiveSession(medseg.load_model("work/models/interactive3d"), volume)
    s.add_point([12.5, -30.0, 8.0])            # RAS mm (space="LPS" or "voxel" too)
    s.add_point([14.0, -31.0, 9.0], positive=False)
    s.undo()
    mask = s.mask()                            # Volume, uint8 0/1, on the scan's own grid

The scan is preprocessed once (the bundle's plan: RAS, crop, resample, normalise). The network takes
the image channels plus `prompts.PROMPT_CHANNELS` prompt channels and is run on a window around the
object only: the bounding box of the prompts and the current mask, at least one patch, grown by
`grow` until the prediction no longer touches a window side that is not the image's (nnInteractive's
AutoZoom). Outside the window the previous mask is kept.
"""

from __future__ import annotations

import copy
from typing import Callable

import numpy as np

from medseg.interactive.prompts import Box, ObjectPrompts, Point, encode
from medseg.volume import Volume

PredictFn = Callable[[np.ndarray], np.ndarray]  # (C + PROMPT_CHANNELS, *window) float32 -> (*window) bool


class InteractiveSession:
    def __init__(self, model, volume: Volume | list[Volume], *, radius_mm: float = 2.0, grow: float = 1.5,
                 seed: Volume | None = None, plan=None, predict_fn: PredictFn | None = None):
        """model: a `Predictor` (`medseg.load_model`) of a promptable bundle, or None with `plan` and
        `predict_fn` (tests, other runtimes). seed: a first-pass mask on the scan's grid (e.g. a semantic
        bundle's prediction, any non-zero voxel is the object) that clicks then refine."""
        from medseg.preprocess.case import preprocess_case

        self.volumes = [volume] if isinstance(volume, Volume) else list(volume)
        self.plan = plan if plan is not None else model.bundle.plan
        self.predict_fn = predict_fn or _network_predictor(model)
        self.radius_mm, self.grow = radius_mm, grow
        labels = self.volumes[0].with_array((np.asarray(seed.array) > 0).astype(np.uint8)) if seed is not None else None
        if labels is not None and self.plan.label_values != [0, 1]:
            raise ValueError("a promptable plan has labels {0: background, 1: object}")
        case = preprocess_case(self.volumes, self.plan, label=labels)
        self.image, self.properties = case.image, case.properties
        self.grid_shape = tuple(self.image.shape[1:])
        self.grid_affine = np.asarray(self.properties.resampled_affine)
        self.patch = tuple(self.plan.configurations["3d"].patch_size)
        self.prompts = ObjectPrompts(space="RAS")
        self.current = case.label == 1 if case.label is not None else np.zeros(self.grid_shape, bool)
        self.history: list[tuple[ObjectPrompts, np.ndarray]] = []
        self.last_window: tuple[slice, ...] | None = None

    # --- interactions ---------------------------------------------------------------------------

    def add_point(self, xyz, positive: bool = True, space: str = "RAS") -> None:
        self._interact(lambda p: p.points.append(Point(tuple(map(float, xyz)), positive)), space)

    def add_box(self, lo, hi, space: str = "RAS") -> None:
        self._interact(lambda p: setattr(p, "box", Box(tuple(map(float, lo)), tuple(map(float, hi)))), space)

    def add_prompts(self, prompts: ObjectPrompts) -> None:
        """Every prompt of one object (points and box, in their own space) as one interaction."""
        def change(p: ObjectPrompts) -> None:
            p.points.extend(Point(tuple(map(float, q.xyz)), q.positive) for q in prompts.points)
            if prompts.box is not None:
                p.box = Box(tuple(map(float, prompts.box.min)), tuple(map(float, prompts.box.max)))

        self._interact(change, prompts.space)

    def reset(self) -> None:
        """A new object: no prompts, an empty mask, no history (the preprocessed scan is kept)."""
        self.prompts = ObjectPrompts(space="RAS")
        self.current = np.zeros(self.grid_shape, bool)
        self.history.clear()

    def undo(self) -> None:
        """Back to the prompts and mask before the last interaction, exactly."""
        if not self.history:
            return
        self.prompts, self.current = self.history.pop()

    def mask(self) -> Volume:
        """The current mask on the scan's original grid: (X, Y, Z) uint8 0/1, the scan's affine."""
        from medseg.inference.invert import channels_on_original

        return channels_on_original(self.current.astype(np.uint8), self.properties)

    # --- the zoom window ------------------------------------------------------------------------

    def _interact(self, change, space: str) -> None:
        before = (copy.deepcopy(self.prompts), self.current.copy())
        prompts = copy.deepcopy(self.prompts)
        if prompts.points or prompts.box is not None:
            prompts = _in_space(prompts, space, self._original_affine())
        prompts.space = space
        change(prompts)
        channels = encode(prompts, self._original_affine(), self.properties.original_shape, self.grid_affine,
                          self.grid_shape, radius_mm=self.radius_mm, previous=self.current, source="prompt")
        extent = (channels[0] > 0) | (channels[1] > 0) | (channels[2] > 0) | self.current
        self.current = self._predict(channels, extent)
        self.prompts = prompts
        self.history.append(before)

    def _predict(self, channels: np.ndarray, extent: np.ndarray) -> np.ndarray:
        """Run the network on a window around `extent`, grown until the object does not touch an inner side."""
        where = np.argwhere(extent)
        lo, hi = where.min(0), where.max(0) + 1
        size = np.maximum(hi - lo, self.patch)
        while True:
            centre = (lo + hi) / 2
            start = np.clip(np.round(centre - size / 2).astype(int), 0, None)
            stop = np.minimum(start + size.astype(int), self.grid_shape)
            start = np.maximum(stop - size.astype(int), 0)
            window = tuple(slice(a, b) for a, b in zip(start, stop))
            inputs = np.concatenate([self.image[(slice(None),) + window], channels[(slice(None),) + window]])
            prediction = np.asarray(self.predict_fn(inputs), bool)
            if not _touches_inner_side(prediction, start, stop, self.grid_shape) or np.all(stop - start >= self.grid_shape):
                break
            size = np.minimum(np.ceil(size * self.grow), self.grid_shape).astype(int)
        out = self.current.copy()
        out[window] = prediction
        self.last_window = window
        return out

    def _original_affine(self) -> np.ndarray:
        return np.asarray(self.properties.original_affine)


def _touches_inner_side(prediction: np.ndarray, start, stop, shape) -> bool:
    """Whether the mask reaches a window side that is not also the image's side."""
    for axis in range(prediction.ndim):
        first = np.take(prediction, 0, axis=axis)
        last = np.take(prediction, -1, axis=axis)
        if (start[axis] > 0 and first.any()) or (stop[axis] < shape[axis] and last.any()):
            return True
    return False


def _in_space(prompts: ObjectPrompts, space: str, affine: np.ndarray) -> ObjectPrompts:
    """Earlier prompts converted to `space`, so one ObjectPrompts holds one space."""
    from medseg.interactive.prompts import LPS_TO_RAS, to_grid, to_ras

    if prompts.space == space:
        return prompts

    def convert(xyz):
        ras = to_ras(xyz, prompts.space, affine)
        if space == "RAS":
            return tuple(ras)
        if space == "LPS":
            return tuple(LPS_TO_RAS @ ras)
        return tuple(to_grid(ras, affine))

    points = [Point(convert(p.xyz), p.positive) for p in prompts.points]
    box = Box(convert(prompts.box.min), convert(prompts.box.max)) if prompts.box else None
    return ObjectPrompts(prompts.label, points, box, space)


def _network_predictor(model) -> PredictFn:
    """The promptable bundle's networks as a window predictor: object = the head's channel 1."""
    import torch

    def predict(inputs: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = model.logits_to_probabilities(torch.from_numpy(inputs), num_classes=2)
        return model.head.decode(out.cpu()).numpy() == 1

    return predict


def segment_with_prompts(predictor, scan, objects: list[ObjectPrompts], source: str = "prompts"):
    """`medseg infer --prompt`: each object's prompts as one interaction on a promptable bundle ->
    a `Segmentation` on the scan's grid, object k written with its `label` (later objects win
    where two overlap)."""
    from medseg.inference.segmentation import Segmentation

    session = InteractiveSession(predictor, scan.volumes)
    labels = None
    for obj in objects:
        session.reset()
        session.add_prompts(obj)
        mask = session.mask()
        if labels is None:
            dtype = np.uint16 if max(o.label for o in objects) > 255 else np.uint8
            labels = np.zeros(mask.spatial_shape, dtype)
        labels[np.asarray(mask.array) > 0] = obj.label
    names = {0: "background", **{o.label: f"object {o.label}" for o in objects}}
    return Segmentation(mask.with_array(labels), None, names, {}, scan.datasets, predictor.bundle.model_name)
