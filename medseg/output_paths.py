"""Where `medseg infer` writes: the output formats, and every output path of every case checked
before any work (an -o that names a file is never made a folder, no two outputs collide, none is an
input or lies inside an input DICOM folder). Used by `medseg.batch`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from medseg.errors import ConfigError, InputError, OutputError

# With several formats each gets its own name, so a SEG and an RTSTRUCT of one case never collide.
MULTI_FORMAT_NAMES = {"nifti": "{case}.nii.gz", "dicom-seg": "{case}_seg.dcm", "rtstruct": "{case}_rtstruct.dcm",
                      "instances": "{case}_instances.nii.gz", "panoptic": "{case}_panoptic.nii.gz",
                      "dicom-seg-instances": "{case}_seg_instances.dcm"}
OBJECT_FORMATS = ("instances", "panoptic")  # need the probabilities (each object's mean probability)
FILE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")

Cases = list[tuple[str, list[Path]]]
Outputs = dict[str, Path]  # format -> the file it is written to


def parse_formats(formats: str | Sequence[str]) -> list[str]:
    """["nifti", "rtstruct"] from "nifti,rtstruct" (or a list); unknown or repeated names are errors."""
    from medseg.api import FORMATS

    names = [f.strip() for f in formats.split(",")] if isinstance(formats, str) else [str(getattr(f, "value", f)) for f in formats]
    names = [n for n in names if n]
    unknown = [n for n in names if n not in FORMATS]
    if unknown or not names:
        raise ConfigError(f"--format {','.join(names) or '(empty)'}: unknown format {unknown[0] if unknown else ''!r}; "
                          f"use one or more of {', '.join(FORMATS)} separated by commas, e.g. --format nifti,dicom-seg")
    if len(set(names)) != len(names):
        raise ConfigError(f"--format {','.join(names)}: a format is named twice; name each once")
    return names


def check_formats_apply(cases: Cases, formats: list[str]) -> None:
    """DICOM outputs reference the source series: refuse non-DICOM inputs (and a missing extra) up front."""
    from medseg.data.cases import is_image_file

    if "rtstruct" in formats:
        from medseg.extras import require

        require("rt_utils")
    dicom_formats = [f for f in formats if f in ("dicom-seg", "dicom-seg-instances", "rtstruct")]
    if dicom_formats:
        non_dicom = [p for _, paths in cases for p in paths if is_image_file(p)]
        if non_dicom:
            raise InputError(
                f"{non_dicom[0]}: --format {dicom_formats[0]} needs a DICOM series as input (to reference), "
                "but this is a NIfTI/NRRD/MHA file; use --format nifti or give the DICOM folder"
            )


def plan_outputs(input: Path, cases: Cases, many: bool, output: Path | None, formats: list[str],
                 probabilities: bool) -> list[Outputs]:
    """The output file of each case and format, checked before any work.

    One scan, one format: `output` is the file (default `<case>_seg<suffix>` here). Many scans or
    several formats: `output` is a folder (default: the current folder for one scan), holding
    `<case><suffix>` (one format) or `MULTI_FORMAT_NAMES` (several). Checked: an `-o` that names a
    file (by its suffix) is never made a folder; case ids are plain names (a manifest's "../x" would
    write outside -o); no two outputs collide; no output is an input or lies inside an input DICOM folder.
    """
    from medseg.api import FORMATS, probabilities_path
    from medseg.io.atomic import check_output_dir, check_output_folder, check_plain_name, full_suffix

    into_folder = many or len(formats) > 1
    if into_folder and output is not None and full_suffix(output) in FILE_SUFFIXES:
        why = f"{len(cases)} scans" if many else f"{len(formats)} formats ({','.join(formats)})"
        raise OutputError(f"-o {output}: names a file, but {input} gives {why}, which need an output folder; "
                          f"give a folder path, e.g. -o {output.parent / 'predictions'}")
    if into_folder:
        folder = output if output is not None else Path(".")
        check_output_folder(folder, "-o")
        if many:
            for case_id, _ in cases:
                check_plain_name(case_id, "case_id", input)
        names = MULTI_FORMAT_NAMES if len(formats) > 1 else {formats[0]: "{case}" + FORMATS[formats[0]]}
        outputs = [{f: folder / names[f].format(case=case_id) for f in formats} for case_id, _ in cases]
    else:
        outputs = [{formats[0]: output or Path(f"{cases[0][0]}_seg{FORMATS[formats[0]]}")}]
        check_output_dir(outputs[0][formats[0]])

    seen: dict[str, str] = {}
    for (case_id, _), targets in zip(cases, outputs):
        for target in targets.values():
            key = os.path.realpath(target)
            if key in seen:
                raise InputError(f"{input}: cases '{seen[key]}' and '{case_id}' would both be written to {target}; give the scans distinct names")
            seen[key] = case_id
    inputs = {os.path.realpath(p) for _, paths in cases for p in paths}
    series_folders = [os.path.realpath(p) for _, paths in cases for p in paths if Path(p).is_dir()]
    for targets in outputs:
        written = list(targets.values()) + ([probabilities_path(first_output(targets))] if probabilities else [])
        for path in written:
            if os.path.realpath(path) in inputs:
                raise OutputError(f"{path}: this output is also an input scan and would be overwritten by its mask; "
                                  "choose another output path (-o) for the masks")
            inside = [f for f in series_folders if os.path.realpath(path).startswith(f + os.sep)]
            if inside:
                raise OutputError(f"{path}: this output lies inside the input DICOM folder {inside[0]}, which would then "
                                  "hold a second series; choose an output path (-o) outside it")
    return outputs


def first_output(targets: Outputs) -> Path:
    """The file the probability maps sit beside: the NIfTI mask when there is one."""
    return targets.get("nifti", next(iter(targets.values())))
