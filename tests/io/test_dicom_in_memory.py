"""DICOM in memory: a series' pydicom Datasets read like its folder, and a SEG / RTSTRUCT built from
them as Datasets without touching the file system (what a DICOMweb or PACS worker needs)."""

from __future__ import annotations

import copy
import random

import numpy as np
import pydicom
import pytest

from medseg.errors import DicomError, InputError
from medseg.io import read_volume
from medseg.io.dicom import (
    build_dicom_seg,
    build_rtstruct,
    list_series,
    load_dicom_series,
    read_dicom_seg,
    read_rtstruct,
    write_dicom_seg,
)
from test_dicom_seg import asymmetric_mask

OBLIQUE = "tcia_mr_oblique/11-T1post-18670"


def read_datasets(folder, shuffle_seed=0) -> list:
    """Every file of `folder` read in full into memory, in a shuffled order."""
    datasets = [pydicom.dcmread(f) for f in sorted(folder.iterdir())]
    random.Random(shuffle_seed).shuffle(datasets)
    return datasets


@pytest.mark.parametrize("series", [OBLIQUE, "totalsegmentator/ct_series_4slices", "multiframe/eCT_Supplemental.dcm"])
def test_datasets_read_exactly_like_the_files(real_data, series):
    source = real_data / "dicom" / series
    from_files = load_dicom_series(source)
    datasets = read_datasets(source) if source.is_dir() else pydicom.dcmread(source)  # a list, or one multi-frame Dataset
    from_memory = load_dicom_series(datasets)
    assert from_memory.volume.array.dtype == from_files.volume.array.dtype
    assert np.array_equal(from_memory.volume.array, from_files.volume.array)
    assert np.array_equal(from_memory.volume.affine, from_files.volume.affine)
    assert from_memory.volume.meta == from_files.volume.meta
    # the kept headers are the given objects, in k order (the same instances as the files' headers)
    given = datasets if isinstance(datasets, list) else [datasets]
    assert all(any(ds is g for g in given) for ds in from_memory.datasets)
    assert [ds.SOPInstanceUID for ds in from_memory.datasets] == [ds.SOPInstanceUID for ds in from_files.datasets]
    # medseg.io.read_volume takes the Datasets too
    assert np.array_equal(read_volume(datasets).array, from_files.volume.array)
    assert [s.num_slices for s in list_series(datasets)] == [from_files.volume.spatial_shape[2]]


def test_bad_in_memory_input_is_one_line(real_data):
    folder = real_data / "dicom" / "tcia_mr_oblique" / "11_HCropVolume"
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in sorted(folder.iterdir())]
    with pytest.raises(DicomError, match=r"holds no pixel data.*pydicom.dcmread without stop_before_pixels") as err:
        read_volume(headers)
    assert "\n" not in str(err.value)
    with pytest.raises(InputError, match="item 1 is a str, not a pydicom Dataset"):
        read_volume([headers[0], "slice.dcm"])
    with pytest.raises(DicomError, match="empty list of Datasets"):
        load_dicom_series([])
    with pytest.raises(InputError, match="got a int; expected a folder or file path, a pydicom Dataset"):
        load_dicom_series(3)


# the CT series lacks UIDs and type-2 tags that the writers fill in (on copies, not on the caller's Datasets)
@pytest.mark.parametrize("series", [OBLIQUE, "totalsegmentator/ct_series_4slices"])
def test_series_datasets_to_seg_and_rtstruct_without_the_file_system(real_data, forbid_file_writes, series):
    """Datasets in memory -> Volume -> SEG Dataset -> labels back, with every file write refused;
    the read-back lands on the mask's voxels; the caller's Datasets are left as they were."""
    datasets = read_datasets(real_data / "dicom" / series)  # reading is allowed
    before = copy.deepcopy(datasets)
    series = load_dicom_series(datasets)
    labels = asymmetric_mask(series.volume.spatial_shape)
    mask = series.volume.with_array(labels)

    seg = build_dicom_seg(mask, datasets, {0: "background", 1: "first", 2: "second"}, model_name="tiny")
    assert isinstance(seg, pydicom.Dataset) and seg.Modality == "SEG"
    back, names = read_dicom_seg(seg, datasets)
    assert names == {1: "first", 2: "second"}
    assert np.array_equal(back, labels)
    # a plain pydicom Dataset (e.g. as received over DICOMweb) reads back the same
    plain = pydicom.Dataset()
    plain.update(seg)
    plain.file_meta = seg.file_meta
    assert np.array_equal(read_dicom_seg(plain, series.datasets)[0], labels)
    uids = {str(ds.file_meta.MediaStorageSOPInstanceUID) for ds in datasets}
    assert {f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
            for f in seg.PerFrameFunctionalGroupsSequence} <= uids

    rt = build_rtstruct(mask, datasets, {0: "background", 1: "first", 2: "second"})
    assert isinstance(rt, pydicom.Dataset) and rt.Modality == "RTSTRUCT"
    rois = read_rtstruct(rt, series.volume)
    for value, name in ((1, "first"), (2, "second")):
        truth = labels == value
        assert 2 * (rois[name] & truth).sum() / (rois[name].sum() + truth.sum()) >= 0.95

    assert forbid_file_writes == []
    assert datasets == before  # nothing filled in or replaced in the caller's objects
    # the guard is real: the file writer trips it
    with pytest.raises(AssertionError, match="file system write attempted"):
        write_dicom_seg(mask, datasets, "seg.dcm", {0: "background", 1: "first", 2: "second"})
    assert forbid_file_writes
    forbid_file_writes.clear()
