"""A trained model as one folder: weights + plan + resolved config + labels + medseg version.

```
<bundle>/bundle.json     bundle_version (1), medseg_version, model, configuration ("2d"|"3d"), fold, model_options,
                         labels {int: name}, label_codes, head (the output head's name), postprocessing, precision
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
BUNDLE_VERSION = 1  # the bundle layout this code writes and the newest it reads; bundles without one are 1
# Bundles written before output heads recorded "activation" instead of "head": its value -> the head.
LEGACY_ACTIVATION_HEADS = {"softmax": "semantic_softmax"}


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
    head: str | None = None,
    state_dict_best: dict | None,
    state_dict_last: dict | None = None,
    training_state: dict | None = None,
) -> Path:
    """Write (or update) a bundle folder; every file is written under a temporary name, then renamed.

    plan: a `medseg.preprocess.Plan` (or its dict); labels: {0: "background", 1: ...};
    label_codes: per label {"category": [code, scheme, meaning], "type": [...]} (SNOMED CT);
    postprocessing: [{"name", "params"}] as in `medseg.postprocess`;
    mlflow_run_id: the run that trained the weights, so evaluations can be logged beside it;
    head: the name of the network's output head (`medseg.models.heads`; default: the model's own);
    state_dict_best None: keep the folder's model_best.pt (the last weights when it has none).
    """
    import yaml

    from medseg import __version__
    from medseg.io.atomic import atomic_output

    if head is None:
        from medseg.models import model_head

        head = model_head(model_name).name
    root = Path(dir)
    root.mkdir(parents=True, exist_ok=True)
    meta = {
        "bundle_version": BUNDLE_VERSION,
        "medseg_version": __version__,
        "model": model_name,
        "configuration": configuration,
        "fold": fold,
        "model_options": dict(model_options or {}),
        "labels": {str(int(k)): str(v) for k, v in labels.items()},
        "label_codes": {str(int(k)): v for k, v in (label_codes or {}).items()},
        "head": head,
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
    # Tensors durably (temp name, fsync, rename, folder fsync) and in this order: the training state
    # first, as it carries the last weights and is the commit point of a checkpoint; the weight files
    # after it are repaired from it by --resume if a kill comes between (medseg.training.checkpoint).
    from medseg.training.checkpoint import remove_stale_tmp, save_atomic

    remove_stale_tmp(root)  # what a killed earlier write left
    if state_dict_best is None and not (root / WEIGHTS["best"]).is_file():
        state_dict_best = state_dict_last  # None: keep the existing best; there is none yet
    if state_dict_best is None and state_dict_last is None:
        raise ValueError("write_bundle needs state_dict_best or state_dict_last")
    tensors = {}
    if training_state is not None:
        tensors[TRAINING_STATE] = training_state
    tensors[WEIGHTS["last"]] = state_dict_last if state_dict_last is not None else state_dict_best
    if state_dict_best is not None:
        tensors[WEIGHTS["best"]] = state_dict_best
    for name, obj in tensors.items():
        save_atomic(root / name, obj)
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
    def head(self) -> str:
        """The output head the network was trained with (old bundles: from their "activation")."""
        if self.meta.get("head") is not None:
            return self.meta["head"]
        return LEGACY_ACTIVATION_HEADS[self.meta.get("activation") or "softmax"]

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

        from medseg.models import build_model, model_head

        if which not in WEIGHTS:
            raise BundleError(f"weights '{which}' do not exist; use one of {sorted(WEIGHTS)}")
        registered = model_head(self.model_name).name
        if self.head != registered:  # its channels would be read with another head's meaning
            raise BundleError(
                f"{self.path / BUNDLE_JSON}: the network was trained with output head '{self.head}', but model "
                f"'{self.model_name}' here has head '{registered}'; use the medseg version that trained it ({self.meta.get('medseg_version', '?')})"
            )
        cfg = self.configuration_plan
        # built on the meta device and given the loaded tensors: no random initialisation and no
        # second copy of the weights (not memory-mapped: the mapping would stay resident beside
        # the channels-last copies the predictor makes)
        with torch.device("meta"):
            network = build_model(
                self.model_name,
                cfg,
                in_channels=self.plan.in_channels,
                num_classes=len(self.labels),
                spacing=self.plan.target_spacing,
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


def _meta_type_problem(meta: dict) -> str | None:
    """What in bundle.json has the wrong type (labels {int: name}, model_options {...}, ...), or None."""
    labels = meta["labels"]
    if not isinstance(labels, dict) or not labels or not all(isinstance(v, str) for v in labels.values()):
        return f"\"labels\" is {type(labels).__name__} {str(labels)[:60]}; expected {{\"0\": \"background\", \"1\": name, ...}}"
    if not all(str(k).strip().isdigit() for k in labels):
        return f"\"labels\" has keys {sorted(map(str, labels))[:5]}; expected non-negative integer label values"
    for key, kind in (("model", str), ("configuration", str), ("model_options", dict), ("postprocessing", list),
                      ("label_codes", dict), ("head", str)):
        value = meta.get(key)
        if value is not None and not isinstance(value, kind):
            return f"\"{key}\" is {type(value).__name__}; expected a {kind.__name__}"
    if meta.get("head") is None and (meta.get("activation") or "softmax") not in LEGACY_ACTIVATION_HEADS:
        return f"\"activation\" is {meta['activation']!r}; expected \"softmax\" (or a \"head\" name, as bundles now record)"
    return None


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
    problem = _meta_type_problem(meta)
    if problem is not None:
        raise BundleError(f"{meta_path}: {problem}; the bundle is corrupt, re-export it from its training run")
    version = meta.get("bundle_version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise BundleError(f"{meta_path}: bundle_version is {version!r}; expected a positive integer (this medseg writes {BUNDLE_VERSION}); re-export the bundle")
    if version > BUNDLE_VERSION:
        from medseg import __version__

        raise BundleError(
            f"{meta_path}: bundle_version {version}, written by medseg {meta.get('medseg_version', '?')}, is newer than this "
            f"medseg {__version__} reads (bundle_version <= {BUNDLE_VERSION}); upgrade medseg: pip install -U medseg"
        )
    for required in (PLAN_JSON, WEIGHTS["best"]):
        if not (root / required).is_file():
            raise BundleError(f"{root}: {required} is missing; the bundle is incomplete, copy the whole bundle folder")
    from medseg.preprocess.plan import Plan

    try:
        plan = Plan.load(root / PLAN_JSON)
    except Exception as exc:
        detail = str(exc).splitlines()[0].removeprefix(f"{root / PLAN_JSON}: ")  # ConfigErrors name the file already
        raise BundleError(f"{root / PLAN_JSON}: not a valid plan ({detail}); re-export the bundle") from None
    config: dict = {}
    if (root / CONFIG_YAML).is_file():
        try:
            config = yaml.safe_load((root / CONFIG_YAML).read_text()) or {}
        except yaml.YAMLError:
            raise BundleError(f"{root / CONFIG_YAML}: not valid YAML; the bundle is corrupt, re-copy it") from None
    return Bundle(root, meta, plan, config)


def resolve_model_reference(ref: str | os.PathLike, dst: str | os.PathLike | None = None, workdir: str | os.PathLike | None = None) -> Path:
    """A bundle folder for `ref`: a local folder, or an MLflow run id, `runs:/` URI or registered
    model name, downloaded through `medseg.tracking_lookup.download_bundle` into `dst` or a temp folder from
    `workdir`'s store (or MLFLOW_TRACKING_URI's); no store is created by a lookup."""
    local = Path(ref)
    if local.is_dir():
        return local
    text = str(ref)
    looks_like_path = os.sep in text and not text.startswith(("runs:/", "models:/"))
    if looks_like_path or text.endswith((".json", ".pt")):
        raise BundleError(f"{ref}: no such bundle folder; pass the folder that holds bundle.json")
    try:
        from medseg.tracking_lookup import download_bundle
    except ImportError:
        raise BundleError(f"{ref}: not a bundle folder, and MLflow references are unavailable in this install; pass a bundle folder") from None
    temporary = dst is None
    if temporary:
        import tempfile

        dst = tempfile.mkdtemp(prefix="medseg-bundle-")
    try:
        return Path(download_bundle(text, Path(dst), workdir=Path(workdir) if workdir is not None else None))
    except BaseException as exc:
        if temporary:
            import shutil

            shutil.rmtree(dst, ignore_errors=True)
        if isinstance(exc, BundleError) or not isinstance(exc, Exception):
            raise
        raise BundleError(f"{ref}: not a bundle folder, and MLflow could not resolve it as a run id, runs:/ URI or model name ({type(exc).__name__}); check the reference") from None


def parse_fold(value: Any, where: str | os.PathLike = BUNDLE_JSON) -> int | None:
    """bundle.json's "fold": 0..N (also "0"), or None / "none" (trained on every case: fold_none)."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "none"):
        return None
    if isinstance(value, bool):
        value = str(value)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise BundleError(f"{where}: \"fold\" is {value!r}; expected an integer fold (0-4) or \"none\"; fix bundle.json") from None


def bundle_fold(bundle_dir: str | os.PathLike) -> int | None:
    """The fold a bundle folder was trained on (None: fold_none / every case)."""
    meta_path = Path(bundle_dir) / BUNDLE_JSON
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        raise BundleError(f"{meta_path}: missing or not valid JSON; pass a bundle folder written by `medseg train`") from None
    if not isinstance(meta, dict):
        raise BundleError(f"{meta_path}: expected a JSON object; the bundle is corrupt, re-copy it")
    return parse_fold(meta.get("fold"), meta_path)


def parse_folds_option(text: str) -> set[int | None]:
    """--folds "0,1" -> {0, 1}; "none" names fold_none; "all" is not accepted here (it is the default)."""
    from medseg.errors import ConfigError

    wanted: set[int | None] = set()
    for part in (p.strip().lower() for p in text.split(",")):
        if not part:
            continue
        if part == "none":
            wanted.add(None)
        elif part.isdigit():
            wanted.add(int(part))
        else:
            raise ConfigError(f"--folds {text!r} is invalid; give comma-separated fold numbers such as 0,1, or 'none' for fold_none")
    if not wanted:
        raise ConfigError(f"--folds {text!r} names no fold; give e.g. 0,1 or none")
    return wanted


def select_fold_bundles(refs: list[str | os.PathLike], folds: str | None = None) -> list[Path]:
    """The bundle folders to ensemble for `--model REF...` and `--folds`.

    A REF holding bundle.json is used as given (also fold_none, when named so). A REF holding fold_*
    bundles (a BUNDLE_PARENT) expands to its cross-validation folds only; its fold_none is used when it
    is the only model there, or when `--folds` names `none`. `folds` ("0,1", "none", "0,none") then keeps
    the bundles of those folds, in the order given by REFs.
    """
    explicit: list[Path] = []  # named by the user: kept whatever their fold
    expanded: list[Path] = []  # from a BUNDLE_PARENT
    for ref in map(Path, refs):
        if (ref / BUNDLE_JSON).is_file() or not ref.is_dir():
            explicit.append(ref)
            continue
        children = sorted(c for c in ref.iterdir() if c.is_dir() and (c / BUNDLE_JSON).is_file())
        if not children:
            explicit.append(ref)  # load_bundle will say what is wrong
            continue
        expanded += children
    wanted = parse_folds_option(folds) if folds is not None else None
    chosen: list[Path] = []
    for b in explicit:
        if wanted is None or bundle_fold(b) in wanted:
            chosen.append(b)
    cross_validation = [b for b in expanded if bundle_fold(b) is not None]
    for b in expanded:
        fold = bundle_fold(b)
        if wanted is not None:
            keep = fold in wanted
        else:  # the CV folds form the ensemble; fold_none only stands in when there is nothing else
            keep = fold is not None or not cross_validation
        if keep and b not in chosen:
            chosen.append(b)
    if not chosen:
        names = ", ".join(str(b) for b in explicit + expanded)
        raise BundleError(f"no bundle for --folds {folds} among {names}; check --folds (fold numbers, or 'none' for fold_none)")
    return chosen
