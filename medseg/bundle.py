"""A trained model as one folder: weights + plan + resolved config + labels + medseg version.

```
<bundle>/bundle.json     medseg_version, model, configuration ("2d"|"3d"), fold, model_options,
                         labels {int: name}, label_codes, activation, postprocessing, precision
<bundle>/plan.json       the Plan
<bundle>/config.yaml     the resolved training config
<bundle>/model_best.pt   state_dict (loaded with torch.load(weights_only=True))
<bundle>/model_last.pt   state_dict
<bundle>/training_state.pt  optimizer, scheduler, scaler, epoch, RNG (training only, optional)
```
`write_bundle` writes each file atomically; `load_bundle` checks the folder and says what is wrong.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medseg.errors import BundleError

BUNDLE_JSON = "bundle.json"
PLAN_JSON = "plan.json"
CONFIG_YAML = "config.yaml"
WEIGHTS = {"best": "model_best.pt", "last": "model_last.pt"}
TRAINING_STATE = "training_state.pt"
REQUIRED_KEYS = ("medseg_version", "model", "configuration", "labels")


def write_bundle(
    dir: str | os.PathLike,
    *,
    model_name: str,
    configuration: str,
    fold: int | str | None,
    model_options: dict | None,
    plan: Any,
    config: dict,
    labels: dict[int, str],
    label_codes: dict[int, dict] | None = None,
    postprocessing: list[dict] | None = None,
    precision: str | None = None,
    mlflow_run_id: str | None = None,
    state_dict_best: dict,
    state_dict_last: dict | None = None,
    training_state: dict | None = None,
) -> Path:
    """Write (or update) a bundle folder; every file is written under a temporary name, then renamed.

    plan: a `medseg.preprocess.Plan` (or its dict); labels: {0: "background", 1: ...};
    label_codes: per label {"category": [code, scheme, meaning], "type": [...]} (SNOMED CT);
    postprocessing: [{"name", "params"}] as in `medseg.postprocess`;
    mlflow_run_id: the run that trained the weights, so evaluations can be logged beside it.
    """
    import torch
    import yaml

    from medseg import __version__
    from medseg.io.atomic import atomic_output

    root = Path(dir)
    root.mkdir(parents=True, exist_ok=True)
    meta = {
        "medseg_version": __version__,
        "model": model_name,
        "configuration": configuration,
        "fold": fold,
        "model_options": dict(model_options or {}),
        "labels": {str(int(k)): str(v) for k, v in labels.items()},
        "label_codes": {str(int(k)): v for k, v in (label_codes or {}).items()},
        "activation": "softmax",
        "postprocessing": list(postprocessing or []),
        "precision": precision,
        "mlflow_run_id": mlflow_run_id,
    }
    plan_text = plan.model_dump_json(indent=2) if hasattr(plan, "model_dump_json") else json.dumps(plan, indent=2)
    files = {
        BUNDLE_JSON: json.dumps(meta, indent=2),
        PLAN_JSON: plan_text,
        CONFIG_YAML: yaml.safe_dump(config, sort_keys=False),
    }
    for name, text in files.items():
        with atomic_output(root / name) as tmp:
            tmp.write_text(text)
    tensors = {WEIGHTS["best"]: state_dict_best, WEIGHTS["last"]: state_dict_last if state_dict_last is not None else state_dict_best}
    if training_state is not None:
        tensors[TRAINING_STATE] = training_state
    for name, obj in tensors.items():
        with atomic_output(root / name) as tmp:
            torch.save(obj, tmp)
    return root


@dataclass
class Bundle:
    """A loaded bundle. `plan` is a `medseg.preprocess.Plan`; `meta` is bundle.json as a dict."""

    path: Path
    meta: dict
    plan: Any
    config: dict = field(default_factory=dict)

    @property
    def labels(self) -> dict[int, str]:
        return {int(k): v for k, v in self.meta["labels"].items()}

    @property
    def label_codes(self) -> dict[int, dict]:
        return {int(k): v for k, v in (self.meta.get("label_codes") or {}).items()}

    @property
    def model_name(self) -> str:
        return self.meta["model"]

    @property
    def configuration(self) -> str:
        return self.meta["configuration"]

    @property
    def mlflow_run_id(self) -> str | None:
        return self.meta.get("mlflow_run_id")

    @property
    def postprocessing(self) -> list[dict]:
        return list(self.meta.get("postprocessing") or [])

    @property
    def configuration_plan(self):
        configs = self.plan.configurations
        if self.configuration not in configs:
            raise BundleError(
                f"{self.path}: bundle.json names configuration '{self.configuration}' but plan.json has only "
                f"{sorted(configs)}; re-export the bundle from its training run"
            )
        return configs[self.configuration]

    def build_network(self, which: str = "best", device: str = "cpu"):
        """The network in eval mode with `model_{which}.pt` loaded (float32 weights) on `device`."""
        import torch

        from medseg.models import build_model

        if which not in WEIGHTS:
            raise BundleError(f"weights '{which}' do not exist; use one of {sorted(WEIGHTS)}")
        cfg = self.configuration_plan
        # built on the meta device and given the loaded tensors: no random initialisation and no
        # second copy of the weights (not memory-mapped: the mapping would stay resident beside
        # the channels-last copies the predictor makes)
        with torch.device("meta"):
            network = build_model(
                self.model_name,
                in_channels=len(self.plan.channel_names),
                num_classes=len(self.labels),
                features_per_stage=list(cfg.features_per_stage),
                strides=[list(s) for s in cfg.strides],
                kernel_sizes=[list(k) for k in cfg.kernel_sizes] if cfg.kernel_sizes is not None else None,
                **self.meta.get("model_options", {}),
            )
        weights = self.path / WEIGHTS[which]
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise BundleError(f"{weights}: missing; the bundle is incomplete, copy the whole bundle folder") from None
        except Exception as exc:
            raise BundleError(f"{weights}: not a readable state_dict ({type(exc).__name__}); the file is corrupt, re-copy the bundle") from None
        try:
            network.load_state_dict(state, assign=True)
        except RuntimeError as exc:
            first = str(exc).splitlines()[0]
            raise BundleError(f"{weights}: weights do not fit model '{self.model_name}' built from plan.json ({first}); the bundle is inconsistent") from None
        return network.to(device).eval()


def load_bundle(path: str | os.PathLike) -> Bundle:
    """Read and check a bundle folder; raise `BundleError` saying what is missing or corrupt."""
    import yaml

    root = Path(path)
    if not root.is_dir():
        raise BundleError(f"{root}: no such bundle folder; pass the folder that holds bundle.json (or an MLflow run id / model name)")
    meta_path = root / BUNDLE_JSON
    if not meta_path.is_file():
        raise BundleError(f"{root}: no {BUNDLE_JSON}, so this is not a medseg bundle; pass the folder written by `medseg train`")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{meta_path}: not valid JSON ({exc.__class__.__name__}); the bundle is corrupt, re-copy it") from None
    missing = [k for k in REQUIRED_KEYS if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise BundleError(f"{meta_path}: missing keys {missing}; expected {list(REQUIRED_KEYS)}; re-export the bundle")
    for required in (PLAN_JSON, WEIGHTS["best"]):
        if not (root / required).is_file():
            raise BundleError(f"{root}: {required} is missing; the bundle is incomplete, copy the whole bundle folder")
    from medseg.preprocess.plan import Plan

    try:
        plan = Plan.load(root / PLAN_JSON)
    except Exception as exc:
        raise BundleError(f"{root / PLAN_JSON}: not a valid plan ({type(exc).__name__}: {str(exc).splitlines()[0]}); re-export the bundle") from None
    config: dict = {}
    if (root / CONFIG_YAML).is_file():
        try:
            config = yaml.safe_load((root / CONFIG_YAML).read_text()) or {}
        except yaml.YAMLError:
            raise BundleError(f"{root / CONFIG_YAML}: not valid YAML; the bundle is corrupt, re-copy it") from None
    return Bundle(root, meta, plan, config)


def resolve_model_reference(ref: str | os.PathLike, dst: str | os.PathLike | None = None) -> Path:
    """A bundle folder for `ref`: a local folder, or an MLflow run id, `runs:/` URI or registered
    model name (downloaded through `medseg.tracking.download_bundle` into `dst` or a temp folder)."""
    local = Path(ref)
    if local.is_dir():
        return local
    text = str(ref)
    looks_like_path = os.sep in text and not text.startswith(("runs:/", "models:/"))
    if looks_like_path or text.endswith((".json", ".pt")):
        raise BundleError(f"{ref}: no such bundle folder; pass the folder that holds bundle.json")
    try:
        from medseg.tracking import download_bundle
    except ImportError:
        raise BundleError(f"{ref}: not a bundle folder, and MLflow references are unavailable in this install; pass a bundle folder") from None
    if dst is None:
        import tempfile

        dst = tempfile.mkdtemp(prefix="medseg-bundle-")
    try:
        return Path(download_bundle(text, Path(dst)))
    except BundleError:
        raise
    except Exception as exc:
        raise BundleError(f"{ref}: not a bundle folder, and MLflow could not resolve it as a run id, runs:/ URI or model name ({type(exc).__name__}); check the reference") from None
