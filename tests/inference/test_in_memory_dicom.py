"""A DICOM series' in-memory Datasets through a trained bundle to a SEG Dataset, with every file write
refused (a DICOMweb / PACS worker's path: nothing staged on disk)."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from medseg.inference.predictor import Predictor
from medseg.io import read_volume
from medseg.io.dicom import build_dicom_seg, read_dicom_seg


@pytest.mark.slow
def test_datasets_to_predicted_seg_dataset_without_the_file_system(real_data, tiny_bundle, forbid_file_writes):
    folder = real_data / "dicom" / "tcia_mr_oblique" / "11-T1post-18670"
    datasets = [pydicom.dcmread(f) for f in sorted(folder.iterdir())][::-1]  # any order
    volume = read_volume(datasets)
    predictor = Predictor([tiny_bundle], device="cpu", precision="fp32")
    labels = predictor.predict([volume]).labels
    assert labels.spatial_shape == volume.spatial_shape and np.array_equal(labels.affine, volume.affine)
    assert np.asarray(labels.array).any(), "the blob model found nothing; the SEG check below would be vacuous"

    seg = build_dicom_seg(labels, datasets, predictor.labels, predictor.bundle.label_codes, model_name=predictor.bundle.model_name)
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "108369006"  # the bundle's code
    back, names = read_dicom_seg(seg, datasets)
    assert names == {1: "blob"}
    assert np.array_equal(back, np.asarray(labels.array))
    assert forbid_file_writes == []
