"""What each label is, in DICOM's coded terms (SNOMED CT, scheme "SCT"), for SEG and RTSTRUCT.

A `LabelCode` holds the segmented property category and type (CID 7150 / 7151), an optional type
modifier (e.g. laterality, CID 244) and an optional RT ROI Interpreted Type. Codes are
`[code value, coding scheme designator, code meaning]`, e.g. `["10200004", "SCT", "Liver"]`.

Where codes come from, first match wins (`resolve_label_codes`):
1. declared per label: `label_codes` in dataset.json / a JSON manifest / configs/preprocess.yaml;
2. a user table (`label_code_table:` in configs/preprocess.yaml, YAML or JSON, keyed by name);
3. the built-in table below, keyed by label name. Its codes are not typed in here: they are
   looked up in pydicom's offline copy of the DICOM code dictionaries (`pydicom.sr.codedict`).
Labels found in none of them get `GENERIC` in the SEG and a warning naming them.

Name matching ignores case, "_", "-" and a "left"/"right" word (which becomes the type modifier),
so "Kidney_Left", "left kidney" and "kidney left" all match "kidney" with modifier Left. A name
not found alone is also tried after the dataset's name ("Anterior" in dataset "Hippocampus" ->
"hippocampus anterior").
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from medseg.errors import BundleError, ConfigError, InputError, MedsegError, first_validation_problem

log = logging.getLogger(__name__)

Code = tuple[str, str, str]  # (code value, coding scheme designator, code meaning)

# RT ROI Interpreted Type (3006,00A4): the defined terms of DICOM PS3.3 C.8.8.8.
RT_ROI_INTERPRETED_TYPES = frozenset({
    "EXTERNAL", "PTV", "CTV", "GTV", "TREATED_VOLUME", "IRRAD_VOLUME", "BOLUS", "AVOIDANCE", "ORGAN",
    "MARKER", "REGISTRATION", "ISOCENTER", "CONTRAST_AGENT", "CAVITY", "BRACHY_CHANNEL",
    "BRACHY_ACCESSORY", "BRACHY_SRC_APP", "BRACHY_CHNL_SHLD", "SUPPORT", "FIXATION", "DOSE_REGION",
    "CONTROL", "DOSE_MEASUREMENT",
})


class LabelCode(BaseModel):
    """Coded meaning of one label. Each code: [value, scheme, meaning] or {value, scheme, meaning}."""

    model_config = ConfigDict(extra="forbid")

    category: Code
    type: Code
    modifier: Code | None = None
    rt_type: str | None = Field(default=None, description="RT ROI Interpreted Type; ORGAN for anatomy when unset")

    @field_validator("category", "type", "modifier", mode="before")
    @classmethod
    def _code(cls, value):
        if isinstance(value, dict):
            missing = [k for k in ("value", "scheme", "meaning") if not value.get(k)]
            if missing:
                raise ValueError(f"code needs 'value', 'scheme' and 'meaning'; {', '.join(missing)} missing")
            value = (value["value"], value["scheme"], value["meaning"])
        if isinstance(value, (list, tuple)):  # YAML reads a bare 10200004 as an int
            return tuple(str(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value)
        return value

    @field_validator("category", "type", "modifier")
    @classmethod
    def _filled(cls, value):
        if value is not None:
            if not all(str(v).strip() for v in value):
                raise ValueError("code value, scheme and meaning must all be non-empty")
            if len(value[0]) > 16 or len(value[1]) > 16 or len(value[2]) > 64:
                raise ValueError("code value and scheme hold at most 16 characters, the meaning 64")
        return value

    @field_validator("rt_type")
    @classmethod
    def _rt_type(cls, value):
        if value is not None and value not in RT_ROI_INTERPRETED_TYPES:
            raise ValueError(f"rt_type {value!r} is not a DICOM RT ROI Interpreted Type; use one of {', '.join(sorted(RT_ROI_INTERPRETED_TYPES))}")
        return value

    def interpreted_type(self) -> str:
        """RT ROI Interpreted Type: as declared, else ORGAN for anatomical structures, else empty."""
        if self.rt_type:
            return self.rt_type
        return "ORGAN" if self.category[0] == ANATOMICAL_STRUCTURE[0] else ""

    def as_json(self) -> dict:
        return self.model_dump(mode="json", exclude_none=True)


ANATOMICAL_STRUCTURE: Code = ("91723000", "SCT", "Anatomical Structure")
GENERIC = LabelCode(category=("85756007", "SCT", "Tissue"), type=("85756007", "SCT", "Tissue"))
"""Used for labels without a known code: says nothing more than "some tissue" (3D Slicer's default)."""


# --- the built-in table ------------------------------------------------------------------------
# name -> (category in CID 7150, type in CID 7151 (CID 7166 for tissues), modifier); the names are
# pydicom.sr.codedict keywords.
_ANATOMY, _ABNORMAL, _TISSUE = "AnatomicalStructure", "MorphologicallyAbnormalStructure", "Tissue"
_BUILTIN: dict[str, tuple[str, str, str | None]] = {
    # neuro
    "brain": (_ANATOMY, "Brain", None),
    "hippocampus": (_ANATOMY, "Hippocampus", None),
    "hippocampus anterior": (_ANATOMY, "Hippocampus", "Anterior"),
    "anterior hippocampus": (_ANATOMY, "Hippocampus", "Anterior"),
    "hippocampus posterior": (_ANATOMY, "Hippocampus", "Posterior"),
    "posterior hippocampus": (_ANATOMY, "Hippocampus", "Posterior"),
    "cerebellum": (_ANATOMY, "Cerebellum", None),
    "brainstem": (_ANATOMY, "BrainStem", None),
    "brain stem": (_ANATOMY, "BrainStem", None),
    "white matter": (_ANATOMY, "WhiteMatter", None),
    "gray matter": (_ANATOMY, "GrayMatter", None),
    "grey matter": (_ANATOMY, "GrayMatter", None),
    "csf": (_ANATOMY, "CerebrospinalFluid", None),
    "cerebrospinal fluid": (_ANATOMY, "CerebrospinalFluid", None),
    "lateral ventricle": (_ANATOMY, "LateralVentricle", None),
    "spinal cord": (_ANATOMY, "SpinalCord", None),
    # thorax and abdomen
    "lung": (_ANATOMY, "Lung", None),
    "lungs": (_ANATOMY, "Lung", None),
    "heart": (_ANATOMY, "Heart", None),
    "aorta": (_ANATOMY, "Aorta", None),
    "pulmonary artery": (_ANATOMY, "PulmonaryArtery", None),
    "trachea": (_ANATOMY, "Trachea", None),
    "esophagus": (_ANATOMY, "Esophagus", None),
    "oesophagus": (_ANATOMY, "Esophagus", None),
    "liver": (_ANATOMY, "Liver", None),
    "spleen": (_ANATOMY, "Spleen", None),
    "kidney": (_ANATOMY, "Kidney", None),
    "kidneys": (_ANATOMY, "Kidney", None),
    "adrenal gland": (_ANATOMY, "AdrenalGland", None),
    "pancreas": (_ANATOMY, "Pancreas", None),
    "gallbladder": (_ANATOMY, "Gallbladder", None),
    "stomach": (_ANATOMY, "Stomach", None),
    "duodenum": (_ANATOMY, "Duodenum", None),
    "small bowel": (_ANATOMY, "SmallIntestine", None),
    "small intestine": (_ANATOMY, "SmallIntestine", None),
    "colon": (_ANATOMY, "Colon", None),
    "rectum": (_ANATOMY, "Rectum", None),
    "inferior vena cava": (_ANATOMY, "InferiorVenaCava", None),
    "portal vein": (_ANATOMY, "PortalVein", None),
    # pelvis
    "bladder": (_ANATOMY, "Bladder", None),
    "urinary bladder": (_ANATOMY, "Bladder", None),
    "prostate": (_ANATOMY, "Prostate", None),
    "uterus": (_ANATOMY, "Uterus", None),
    # musculoskeletal and other
    "vertebra": (_ANATOMY, "Vertebra", None),
    "femur": (_ANATOMY, "Femur", None),
    "rib": (_ANATOMY, "Rib", None),
    "sternum": (_ANATOMY, "Sternum", None),
    "skull": (_ANATOMY, "Skull", None),
    "thyroid": (_ANATOMY, "Thyroid", None),
    "thyroid gland": (_ANATOMY, "Thyroid", None),
    "eye": (_ANATOMY, "Eye", None),
    "bone": (_TISSUE, "BoneTissue", None),
    "muscle": (_TISSUE, "MuscleTissue", None),
    "fat": (_TISSUE, "AdiposeTissue", None),
    "adipose tissue": (_TISSUE, "AdiposeTissue", None),
    # abnormal structures (BraTS: necrotic core, oedema, enhancing tumour)
    "tumor": (_ABNORMAL, "Neoplasm", None),
    "tumour": (_ABNORMAL, "Neoplasm", None),
    "neoplasm": (_ABNORMAL, "Neoplasm", None),
    "cancer": (_ABNORMAL, "Neoplasm", None),
    "enhancing tumor": (_ABNORMAL, "Neoplasm", None),
    "enhancing tumour": (_ABNORMAL, "Neoplasm", None),
    "non enhancing tumor": (_ABNORMAL, "Neoplasm", None),
    "non enhancing tumour": (_ABNORMAL, "Neoplasm", None),
    "tumor core": (_ABNORMAL, "Neoplasm", None),
    "whole tumor": (_ABNORMAL, "Neoplasm", None),
    "lesion": (_ABNORMAL, "Lesion", None),
    "mass": (_ABNORMAL, "Mass", None),
    "nodule": (_ABNORMAL, "Nodule", None),
    "cyst": (_ABNORMAL, "Cyst", None),
    "edema": (_ABNORMAL, "Edema", None),
    "oedema": (_ABNORMAL, "Edema", None),
    "peritumoral edema": (_ABNORMAL, "Edema", None),
    "necrosis": (_ABNORMAL, "Necrosis", None),
    "necrotic core": (_ABNORMAL, "Necrosis", None),
    "necrotic tumor core": (_ABNORMAL, "Necrosis", None),
    "hemorrhage": (_ABNORMAL, "Hemorrhage", None),
    "haemorrhage": (_ABNORMAL, "Hemorrhage", None),
}
_SIDES = {"left": "Left", "right": "Right"}


def normalized_name(name: str) -> str:
    """'Kidney_Left' -> 'kidney left': lower case, words separated by one space."""
    return " ".join(re.split(r"[^0-9a-z]+", str(name).lower())).strip()


def _pydicom_code(keyword: str, cid: bool = False) -> Code:
    from pydicom.sr.codedict import codes

    c = getattr(codes.cid7150, keyword) if cid else getattr(codes.SCT, keyword)
    return (str(c.value), str(c.scheme_designator), str(c.meaning))


def builtin_code(name: str, context: str | None = None) -> LabelCode | None:
    """The built-in code for a label name (see the module docstring), or None."""
    return _lookup(name, context, None)


def _lookup(name: str, context: str | None, table: dict[str, LabelCode] | None) -> LabelCode | None:
    full = normalized_name(name)
    sides = {w for w in full.split() if w in _SIDES}
    bare = " ".join(w for w in full.split() if w not in _SIDES)
    side = _SIDES[sides.pop()] if len(sides) == 1 else None
    candidates = [(full, None)] + ([(bare, side)] if bare and bare != full else [])
    for word in normalized_name(context or "").split():  # "Task04_Hippocampus" + "Anterior"
        candidates += [(f"{word} {c}", s) for c, s in candidates[:2]]
    for candidate, side in candidates:
        if table and candidate in table:
            code = table[candidate]
            if side and code.modifier is None:
                code = code.model_copy(update={"modifier": _pydicom_code(side)})
            return code
    for candidate, side in candidates:
        if candidate in _BUILTIN:
            category, type_, modifier = _BUILTIN[candidate]
            modifier = modifier or side
            return LabelCode(
                category=_pydicom_code(category, cid=True),
                type=_pydicom_code(type_),
                modifier=_pydicom_code(modifier) if modifier else None,
            )
    return None


# --- reading declared codes ----------------------------------------------------------------------


def parse_label_codes(raw, labels: dict[int, str], source: str, error: type[MedsegError] = InputError) -> dict[int, LabelCode]:
    """`label_codes` as declared in a dataset.json, manifest or config: keys are label values ("1")
    or label names. Raises `error` (one line naming `source` and the entry) when one is malformed.
    """
    if raw in (None, {}):
        return {}
    if not isinstance(raw, dict):
        raise error(f"{source}: label_codes must map labels to codes, found {type(raw).__name__}; see data_manifest/README.md")
    by_name = {normalized_name(v): int(k) for k, v in labels.items()}
    out: dict[int, LabelCode] = {}
    for key, value in raw.items():
        text = str(key).strip()
        if re.fullmatch(r"-?\d+", text):
            value_key = int(text)
        elif normalized_name(text) in by_name:
            value_key = by_name[normalized_name(text)]
        else:
            known = ", ".join(f"{k} ({v})" for k, v in sorted(labels.items())) or "none declared"
            raise error(f"{source}: label_codes entry {key!r} is neither a label value nor a label name; labels: {known}")
        if labels and value_key not in labels:
            raise error(f"{source}: label_codes gives a code for label {value_key}, which is not among the declared labels {sorted(labels)}")
        out[value_key] = _validated(value, f"{source}: label_codes[{key!r}]", error)
    return out


def _validated(value, where: str, error: type[MedsegError] = ConfigError) -> LabelCode:
    if isinstance(value, LabelCode):
        return value
    try:
        return LabelCode.model_validate(value)
    except ValidationError as exc:
        raise error(
            f"{where}: {first_validation_problem(exc)}; expected {{\"category\": [value, scheme, meaning], \"type\": [...], \"modifier\": [...]}}"
        ) from None


def load_code_table(path: str | os.PathLike) -> dict[str, LabelCode]:
    """A user table (YAML or JSON) {label name: {category, type, modifier?, rt_type?}} that extends
    the built-in one; names are matched as in `builtin_code`."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) if path.suffix.lower() in (".yaml", ".yml") else json.loads(path.read_text())
    except (OSError, yaml.YAMLError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the label code table ({str(exc).splitlines()[0]}); give a YAML or JSON file") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the label code table must map label names to codes, found {type(data).__name__}")
    return {normalized_name(k): _validated(v, f"{path}: entry {k!r}") for k, v in data.items()}


def resolve_label_codes(
    labels: dict[int, str],
    declared: dict[int, LabelCode] | None = None,
    table: dict[str, LabelCode] | None = None,
    context: str | None = None,
) -> dict[int, LabelCode]:
    """Codes for the foreground labels: declared, else the user table, else the built-in table.

    Labels found nowhere are left out (writers then use `GENERIC`) and named in one warning.
    """
    declared = declared or {}
    out, unknown = {}, []
    for k, name in sorted(labels.items()):
        if int(k) == 0:
            continue
        code = declared.get(int(k)) or _lookup(name, context, table)
        if code is None:
            unknown.append(f"{k} ({name})")
        else:
            out[int(k)] = code
    if unknown:
        log.warning(
            "no label code known for label(s) %s: DICOM SEG segments will say 'Tissue'; declare label_codes in the dataset "
            "(see data_manifest/README.md)", ", ".join(unknown)
        )
    return out


def codes_for_writing(labels: dict[int, str], given: dict | None, what: str) -> dict[int, LabelCode]:
    """Codes for a SEG/RTSTRUCT writer: `given` (e.g. a bundle's label_codes, as JSON dicts), then
    the built-in table by name; every label still without one gets `GENERIC` and a one-line warning."""
    given = {int(k): _validated(v, f"{what}: label code of label {k}", BundleError) for k, v in (given or {}).items()}
    out, unknown = {}, []
    for k, name in sorted(labels.items()):
        if int(k) == 0:
            continue
        code = given.get(int(k)) or builtin_code(name)
        if code is None:
            unknown.append(f"{k} ({name})")
            code = GENERIC
        out[int(k)] = code
    if unknown:
        log.warning("%s: no label code for label(s) %s; written as generic 'Tissue'", what, ", ".join(unknown))
    return out
