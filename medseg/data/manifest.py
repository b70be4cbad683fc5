"""Dataset manifests: which images and labels make up each case (schema: data_manifest/).

`load_manifest(path)` accepts
- an MSD or nnU-Net v2 folder: `dataset.json` + `imagesTr/` (+ `labelsTr/`); nnU-Net's channel
  suffixes `_0000`, `_0001`, ... become one case with several channels;
- a CSV file: columns `case_id`, `image` (or `image_0`, `image_1`, ... one per channel),
  optional `label`, `split`, `modality` (one per channel, separated by ';');
- a JSON file holding a `Manifest` (see data_manifest/schema.json).
Image entries may be files or DICOM series folders; relative paths are relative to the manifest.
Every path in the returned `Manifest` is absolute.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from medseg.errors import InputError, first_validation_problem
from medseg.label_codes import LabelCode, parse_label_codes

MANIFEST_VERSION = 1
_CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
_IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")


class ManifestCase(BaseModel):
    """One case: one path per channel (file or DICOM folder), optional label."""

    model_config = ConfigDict(extra="forbid")

    case_id: str = Field(min_length=1)
    images: list[str] = Field(min_length=1)
    label: str | None = None
    split: str | None = None  # e.g. "train", "test"; free text
    modality: list[str] | None = None  # per channel, overrides the manifest's modalities
    sha256: dict[str, str] | None = None  # path -> hash, filled in the resolved manifest


class Manifest(BaseModel):
    """A dataset: channel names/modalities, declared labels (0 included) and its cases."""

    model_config = ConfigDict(extra="forbid")

    version: int = MANIFEST_VERSION
    name: str = "dataset"
    channel_names: list[str] = Field(default_factory=list)
    modalities: list[str] = Field(default_factory=list)
    labels: dict[int, str] = Field(default_factory=dict)  # empty: taken from the data
    label_codes: dict[int, LabelCode] = Field(default_factory=dict)  # DICOM codes per label (medseg.label_codes)
    things: list[int] | None = None  # countable labels (values or names in the file), for instance outputs; None: every foreground label
    border_of: dict[int, int] = Field(default_factory=dict)  # "borders": border label -> its thing label (border/core models)
    cases: list[ManifestCase]


def load_manifest(path: str | os.PathLike) -> Manifest:
    """Read an MSD/nnU-Net folder, a CSV or a JSON manifest into a `Manifest` with absolute paths."""
    path = Path(path)
    if path.is_dir():
        if not (path / "dataset.json").is_file():
            raise InputError(f"{path}: folder without dataset.json; give an MSD/nnU-Net folder or a .csv/.json manifest")
        manifest = _load_dataset_folder(path)
    elif path.suffix.lower() == ".csv":
        manifest = _load_csv(path)
    elif path.suffix.lower() == ".json":
        data = _read_json(path)
        if "cases" not in data and "training" in data or "channel_names" in data and "file_ending" in data:
            manifest = _load_dataset_folder(path.parent, data)
        else:
            manifest = _validate(data, path)
            manifest = _absolute(manifest, path.parent)
    elif not path.exists():
        raise InputError(f"{path}: no such file or folder; give an MSD/nnU-Net folder or a .csv/.json manifest")
    else:
        raise InputError(f"{path}: unknown dataset format '{path.suffix}'; expected a folder, .csv or .json")
    if not manifest.cases:
        raise InputError(f"{path}: the manifest lists no case; add cases (see data_manifest/README.md)")
    ids = [c.case_id for c in manifest.cases]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise InputError(f"{path}: case_id(s) {', '.join(dupes[:5])} appear more than once; make case ids unique")
    n = len(manifest.cases[0].images)
    if any(len(c.images) != n for c in manifest.cases):
        raise InputError(f"{path}: cases have different numbers of image channels; give every case the same channels")
    if not manifest.channel_names:
        manifest.channel_names = [f"channel_{i}" for i in range(n)]
    if not manifest.modalities:
        first = manifest.cases[0].modality
        manifest.modalities = list(first) if first else ["MR"] * n
    if len(manifest.channel_names) != n or len(manifest.modalities) != n:
        raise InputError(f"{path}: {n} image channel(s) per case but channel_names/modalities list a different number; make them match")
    return manifest


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not readable JSON ({exc}); fix the file") from None


def _validate(data: dict, path: Path) -> Manifest:
    data = dict(data)
    codes = data.pop("label_codes", None)  # keyed by label value or name: parsed once the labels are known
    things = data.pop("things", None)
    borders = data.pop("borders", None)
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as exc:
        raise InputError(f"{path}: {first_validation_problem(exc)}; see data_manifest/README.md") from None
    manifest.label_codes = parse_label_codes(codes, manifest.labels, str(path))
    manifest.things = parse_things(things, manifest.labels, str(path))
    manifest.border_of = parse_borders(borders, manifest.labels, str(path))
    return manifest


def parse_borders(borders, labels: dict[int, str], source: str) -> dict[int, int]:
    """`"borders": {"lesion_border": "lesion"}` (values or names) -> {border value: thing value}: the
    labels a border/core model is trained with (`medseg.instances.border_core_targets`)."""
    if not borders:
        return {}
    if not isinstance(borders, dict):
        raise InputError(f"{source}: 'borders' must map a border label to its object label, e.g. \"borders\": {{\"2\": 1}}; found {borders!r}")
    out = {}
    for border, thing in borders.items():
        b, t = (parse_things([v], labels, source)[0] for v in (border, thing))
        if b == t or b in out.values() or t in out:
            raise InputError(f"{source}: 'borders' entry {border!r}: {thing!r} must pair two different labels, each used once")
        out[b] = t
    return out


def parse_things(things, labels: dict[int, str], source: str) -> list[int] | None:
    """The countable ("thing") labels of a manifest or dataset.json as sorted label values.

    things: None, or a list of label values or names (`"things": [1, "lesion"]`); every entry must be
    a declared foreground label (when labels are declared). The other labels are "stuff".
    """
    if things is None:
        return None
    if not isinstance(things, list):
        raise InputError(f"{source}: 'things' must be a list of label values or names, e.g. \"things\": [1, 2]; found {things!r}")
    by_name = {name: value for value, name in labels.items()}
    values = []
    for entry in things:
        value = by_name.get(entry) if isinstance(entry, str) and not entry.lstrip("-").isdigit() else int(entry)
        if value is None or value == 0 or (labels and value not in labels):
            known = ", ".join(f"{v}={n}" for v, n in labels.items() if v != 0)
            raise InputError(f"{source}: 'things' entry {entry!r} is not a foreground label; use label values or names of: {known}")
        values.append(value)
    return sorted(set(values))


def _absolute(manifest: Manifest, root: Path) -> Manifest:
    def fix(p: str) -> str:
        q = Path(p).expanduser()
        return str(q if q.is_absolute() else (root / q).resolve())

    for case in manifest.cases:
        case.images = [fix(p) for p in case.images]
        case.label = fix(case.label) if case.label else None
    return manifest


def split_channel_suffix(stem: str) -> tuple[str, int] | None:
    """nnU-Net's channel naming: "CASE_0001" -> ("CASE", 1); None for a name without it."""
    m = _CHANNEL_SUFFIX.match(stem)
    return (m["case"], int(m["channel"])) if m else None


def _strip_suffix(name: str) -> str:
    lower = name.lower()
    for s in _IMAGE_SUFFIXES:
        if lower.endswith(s):
            return name[: -len(s)]
    return name


def _load_dataset_folder(root: Path, data: dict | None = None) -> Manifest:
    """MSD (`modality`, `labels` {"0": name}, `training` list) or nnU-Net v2 (`channel_names`,
    `labels` {name: int}, `file_ending`; cases found in imagesTr/ by their _0000 suffix)."""
    data = data if data is not None else _read_json(root / "dataset.json")
    channels = data.get("channel_names") or data.get("modality") or {"0": "MR"}
    order = sorted(channels, key=int)
    modalities = [str(channels[k]) for k in order]
    raw_labels = data.get("labels", {})
    labels: dict[int, str] = {}
    for k, v in raw_labels.items():
        if str(k).lstrip("-").isdigit():
            labels[int(k)] = str(v)
        elif isinstance(v, int):  # nnU-Net v2: {name: value}
            labels[v] = str(k)
        else:
            raise InputError(f"{root / 'dataset.json'}: label entry {k!r}: {v!r} is not an integer label; use {{\"1\": \"liver\"}}")
    ending = data.get("file_ending", ".nii.gz")
    images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
    if not images_dir.is_dir():
        raise InputError(f"{root}: no imagesTr/ folder; an MSD/nnU-Net dataset keeps its training images there")
    channel_files: dict[str, dict[int, Path]] = {}
    plain: dict[str, Path] = {}
    for f in sorted(images_dir.iterdir()):
        if f.name.startswith(".") or not f.name.lower().endswith(ending):
            continue
        stem = _strip_suffix(f.name)
        split = split_channel_suffix(stem)
        if split:
            channel_files.setdefault(split[0], {})[split[1]] = f
        else:
            plain[stem] = f
    if data.get("training"):
        ids = [_strip_suffix(Path(e["image"]).name) for e in data["training"]]
    else:
        ids = sorted(set(channel_files) | set(plain))
    cases = []
    for cid in ids:
        if cid in channel_files:
            images = [str(channel_files[cid][c]) for c in sorted(channel_files[cid])]
        elif cid in plain:
            images = [str(plain[cid])]
        else:  # listed in dataset.json but absent: validation reports the missing file
            images = [str(images_dir / f"{cid}{ending}")]
        label = labels_dir / f"{cid}{ending}"
        cases.append(ManifestCase(case_id=cid, images=images, label=str(label) if labels_dir.is_dir() else None, split="train"))
    return Manifest(
        name=str(data.get("name", root.name)),
        channel_names=[str(channels[k]) for k in order],
        modalities=modalities,
        labels=labels,
        label_codes=parse_label_codes(data.get("label_codes"), labels, str(root / "dataset.json")),
        things=parse_things(data.get("things"), labels, str(root / "dataset.json")),
        border_of=parse_borders(data.get("borders"), labels, str(root / "dataset.json")),
        cases=cases,
    )


def _load_csv(path: Path) -> Manifest:
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a readable CSV file ({exc}); fix the file") from None
    if not rows:
        raise InputError(f"{path}: no rows; add a header `case_id,image,label` and one row per case")
    columns = list(rows[0].keys())
    image_cols = [c for c in columns if c == "image" or re.fullmatch(r"image_\w+", c or "")]
    if "case_id" not in columns or not image_cols:
        raise InputError(f"{path}: columns {columns}; expected case_id, image (or image_0, image_1, ...) and optional label, split, modality")
    cases = []
    for row in rows:
        modality = [m.strip() for m in row["modality"].split(";")] if row.get("modality") else None
        cases.append(
            ManifestCase(
                case_id=row["case_id"].strip(),
                images=[row[c].strip() for c in image_cols],
                label=(row.get("label") or "").strip() or None,
                split=(row.get("split") or "").strip() or None,
                modality=modality,
            )
        )
    names = ["image" if c == "image" else c[len("image_"):] for c in image_cols]
    return _absolute(Manifest(name=path.stem, channel_names=names, cases=cases), path.parent)


def sha256_of(path: str | os.PathLike) -> str:
    """sha256 of a file, or of a folder (sorted relative names and contents of all its files)."""
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode() + b"\0")
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()
