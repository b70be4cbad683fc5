"""Read and check an export folder: the manifest, every file's sha256, the ONNX opset, the bundle metadata."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from medseg.bundle import BUNDLE_JSON, PLAN_JSON, Bundle
from medseg.data.manifest import sha256_of
from medseg.errors import BundleError
from medseg.export.manifest import DEFAULT_OPSET, EXPORT_VERSION, FORMATS, MANIFEST, RUNTIMES_OF


@dataclass
class ExportedModel(Bundle):
    """An export folder read as a bundle (plan, labels, codes, post-processing from its bundle.json)
    plus its manifest; it holds no torch weights, so `build_network` is refused."""

    manifest: dict = field(default_factory=dict)

    @property
    def runtimes(self) -> list[str]:
        return list(self.manifest["runtimes"])

    def build_network(self, which: str = "best", device: str = "cpu"):
        raise BundleError(f"{self.path}: an export folder holds a {self.manifest['format']} network, not torch weights; "
                          "run it through medseg.load_model / `medseg infer --model` with --runtime")


def _fail(path: Path, what: str) -> BundleError:
    return BundleError(f"{path}: {what}")


def read_manifest(root: Path) -> dict:
    path = root / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _fail(path, f"unreadable or not valid JSON ({type(exc).__name__}); the export is damaged, run `medseg export` again") from None
    need = ("export_version", "format", "model_file", "runtimes", "files", "input", "output")
    missing = [k for k in need if not isinstance(manifest, dict) or k not in manifest]
    if missing:
        raise _fail(path, f"missing keys {missing}; expected a manifest written by `medseg export`; export again")
    version = manifest["export_version"]
    if not isinstance(version, int) or version > EXPORT_VERSION:
        raise _fail(path, f"export_version {version!r} is newer than this medseg reads (<= {EXPORT_VERSION}); upgrade medseg: pip install -U medseg")
    if manifest["format"] not in FORMATS:
        raise _fail(path, f"format {manifest['format']!r} is unknown; expected one of {', '.join(FORMATS)}; export again")
    return manifest


def check_files(root: Path, manifest: dict) -> None:
    """Every file the manifest lists exists and has its sha256; the network file and bundle metadata are listed."""
    files = manifest["files"]
    for required in (manifest["model_file"], BUNDLE_JSON, PLAN_JSON):
        if required not in files:
            raise _fail(root / MANIFEST, f"lists no {required}; the manifest is damaged, run `medseg export` again")
    for name, digest in files.items():
        path = root / name
        if os.sep in name or name.startswith("."):
            raise _fail(root / MANIFEST, f"names file {name!r} outside the folder; export again")
        if not path.is_file():
            raise _fail(path, "missing; the export folder is incomplete, copy the whole folder or run `medseg export` again")
        found = sha256_of(path)
        if found != digest:
            raise _fail(path, f"sha256 {found[:12]}... differs from the manifest's {str(digest)[:12]}...; the file was changed or damaged "
                              "after export; run `medseg export` again (or re-copy the folder)")


def check_opset(root: Path, manifest: dict) -> None:
    """An ONNX network's opset is the manifest's and one the installed ONNX tooling knows.

    An opset no newer than the one this medseg writes (`DEFAULT_OPSET`) is one its runtimes run, and
    `check_files` has verified the network against the manifest's sha256: `onnx` (0.9 s to import)
    is then not needed."""
    if manifest["format"] != "onnx":
        return
    if isinstance(manifest.get("opset"), int) and manifest["opset"] <= DEFAULT_OPSET:
        return
    from medseg.extras import require

    onnx = require("onnx", "export")
    path = root / manifest["model_file"]
    model = onnx.load(str(path), load_external_data=False)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset != manifest.get("opset"):
        raise _fail(path, f"ONNX opset {opset}, but the manifest says {manifest.get('opset')}; the export is inconsistent, export again")
    known = onnx.defs.onnx_opset_version()
    if opset is None or opset > known:
        raise _fail(path, f"ONNX opset {opset}, newer than the installed onnx {onnx.__version__} and its runtimes support (<= {known}); "
                          f"re-export with `medseg export --opset {min(known, 17)}`, or upgrade: pip install -U medseg[export]")


def load_export(path: str | os.PathLike) -> ExportedModel:
    """Check an export folder (manifest, files, sha256, opset) and read its bundle metadata and plan."""
    from medseg.preprocess.plan import Plan

    root = Path(path)
    if not (root / MANIFEST).is_file():
        raise BundleError(f"{root}: no {MANIFEST}, so this is not a medseg export folder; pass the folder `medseg export` wrote")
    manifest = read_manifest(root)
    check_files(root, manifest)
    check_opset(root, manifest)
    try:
        meta = json.loads((root / BUNDLE_JSON).read_text())
        plan = Plan.load(root / PLAN_JSON)
    except Exception as exc:
        raise _fail(root, f"bundle.json or plan.json is not valid ({type(exc).__name__}); export again") from None
    if manifest["runtimes"] != [r for r in RUNTIMES_OF[manifest["format"]] if r in manifest["runtimes"]]:
        raise _fail(root / MANIFEST, f"runtimes {manifest['runtimes']} do not fit format {manifest['format']}; export again")
    exported = ExportedModel(root, meta, plan, {}, manifest)
    from medseg.models import model_head

    if exported.head != model_head(exported.model_name).name:  # its channels would be read with another head's meaning
        raise _fail(root / BUNDLE_JSON, f"the network was trained with output head '{exported.head}', but model "
                                        f"'{exported.model_name}' here has head '{model_head(exported.model_name).name}'; "
                                        "use the medseg version that exported it")
    return exported
