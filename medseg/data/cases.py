"""Which scans an inference input names: one scan, a folder of scans, or a list/manifest of them.

`discover_cases(input)` -> ([(case id, one path per channel)], many). The `_0000` channel grouping is
the manifest's (`medseg.data.manifest.split_channel_suffix`), so a folder of nnU-Net channel files
groups the same way for `medseg preprocess` and `medseg infer`.
"""

from __future__ import annotations

from pathlib import Path

from medseg.errors import InputError

Cases = list[tuple[str, list[Path]]]


def is_image_file(path: Path) -> bool:
    """A file with an image suffix medseg reads (NIfTI, NRRD, MetaImage), not a DICOM file or folder."""
    from medseg.io import is_readable_image_path

    return path.is_file() and is_readable_image_path(path)


def case_id_of(path: Path) -> str:
    """The file name without its (full) suffix; a folder's name as it is."""
    from medseg.io.atomic import full_suffix

    suffix = full_suffix(path) if path.is_file() else ""
    return path.name[: len(path.name) - len(suffix)] if suffix else path.name


def discover_cases(input: str | Path) -> tuple[Cases, bool]:
    """The cases behind INPUT as (case id, one path per channel), and whether it names many.

    INPUT: a scan or DICOM folder (one case); a folder of scans (nnU-Net's CASE_0000, CASE_0001
    channel files are grouped into one case) or of DICOM series folders; a manifest in the
    data_manifest format (.csv/.json) or a .txt list with one path per line.
    """
    from medseg.data.manifest import load_manifest

    input = Path(input)
    if not input.exists():
        raise InputError(f"{input}: no such file or folder; check the path")
    suffix = input.suffix.lower()
    if input.is_file() and suffix in (".csv", ".json"):
        manifest = load_manifest(input)
        return [(c.case_id, [Path(p) for p in c.images]) for c in manifest.cases], True
    if input.is_file() and suffix == ".txt":
        entries = [line.strip() for line in input.read_text().splitlines() if line.strip() and not line.startswith("#")]
        if not entries:
            raise InputError(f"{input}: the list names no scans; put one path per line")
        paths = [p if p.is_absolute() else input.parent / p for p in map(Path, entries)]
        return [(case_id_of(p), [p]) for p in paths], True
    if input.is_dir():
        children = sorted(input.iterdir())
        images = [c for c in children if is_image_file(c)]
        if images:
            refuse_mixed_folder(input, images, children)
            return group_channels(images), True
        subdirs = [c for c in children if c.is_dir()]
        if subdirs and not any(c.is_file() and not c.name.startswith(".") and c.suffix.lower() not in (".md", ".txt", ".json") for c in children):
            return [(c.name, [c]) for c in subdirs], True
    return [(case_id_of(input), [input])], False


def looks_like_dicom(path: Path) -> bool:
    """A file with the DICOM preamble ("DICM" at byte 128), whatever its name."""
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError:
        return False


def refuse_mixed_folder(folder: Path, images: list[Path], children: list[Path]) -> None:
    """InputError (one line, both kinds listed) when a folder of scans also holds a DICOM series:
    taking only the NIfTI/NRRD files (some of which may be masks) would silently drop the series."""
    dicom = [c for c in children if c.is_file() and not is_image_file(c) and looks_like_dicom(c)]
    if not dicom:
        return
    names = ", ".join(p.name for p in images[:3]) + (", ..." if len(images) > 3 else "")
    raise InputError(
        f"{folder}: holds both DICOM files ({len(dicom)}, e.g. {dicom[0].name}) and {len(images)} other scan(s) ({names}); "
        "expected one kind; move the DICOM series into its own folder and give that folder, or the scans"
    )


def group_channels(images: list[Path]) -> Cases:
    """nnU-Net naming (CASE_0000.nii.gz, CASE_0001.nii.gz) -> one case per CASE, channels in order;
    any other naming (or a folder where not every file has it) -> one single-channel case per file."""
    from medseg.data.manifest import split_channel_suffix

    splits = [split_channel_suffix(case_id_of(p)) for p in images]
    if not all(splits):
        return [(case_id_of(p), [p]) for p in images]
    cases: dict[str, list[tuple[int, Path]]] = {}
    for (case, channel), p in zip(splits, images):
        cases.setdefault(case, []).append((channel, p))
    return [(case, [p for _, p in sorted(channels)]) for case, channels in sorted(cases.items())]
