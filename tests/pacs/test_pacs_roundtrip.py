"""`medseg pacs segment` against a real Orthanc, on the real oblique MR and JPEG 2000 CT series of
../shared/data: the SEG and RTSTRUCT it pushes, fetched back over DICOMweb, pass dciodvfy,
reference the source instances, and land on the voxels of `medseg infer`'s NIfTI for the same series."""

from __future__ import annotations

import time

import numpy as np
import pydicom
import pytest

import medseg
import medseg.pacs
from pacs_helpers import dciodvfy_errors, free_port, part10, read_series
from medseg.cli.main import run_argv
from medseg.errors import InputError
from medseg.io.dicom import read_dicom_seg, read_rtstruct, source_datasets

pytestmark = pytest.mark.slow

SERIES = {"oblique MR": "tcia_mr_oblique/11_HCropVolume", "JPEG 2000 CT": "totalsegmentator/ct_series_4slices"}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


@pytest.mark.parametrize("name", list(SERIES))
def test_pacs_segment_pushes_seg_and_rtstruct_that_match_medseg_infer(name, orthanc, pacs_bundle, real_data, tmp_path, capsys):
    folder = real_data / "dicom" / SERIES[name]
    # the CT's instances lack Study/Series UIDs (a PACS could not hold them): medseg's own fill-in, as an import would
    uploaded = part10(source_datasets(read_series(folder)))
    orthanc.upload(uploaded)
    study, series = str(uploaded[0].StudyInstanceUID), str(uploaded[0].SeriesInstanceUID)
    sources = {str(ds.SOPInstanceUID) for ds in uploaded}

    config = tmp_path / "pacs.yaml"
    config.write_text(f"username: {orthanc.user}\npassword: {orthanc.password}\n")
    config.chmod(0o600)
    run_argv(["pacs", "segment", "--url", orthanc.url, "--config", str(config), "--study", study, "--series", series,
              "--model", str(pacs_bundle), "--device", "cpu", "--format", "dicom-seg,rtstruct"])
    printed = capsys.readouterr().out
    assert orthanc.password not in printed and "stored dicom-seg" in printed and "stored rtstruct" in printed

    nifti = tmp_path / "mask.nii.gz"
    run_argv(["infer", str(folder), "--model", str(pacs_bundle), "-o", str(nifti), "--device", "cpu"])
    expected = medseg.read(nifti)
    labels = np.asarray(expected.array)
    assert labels.any()

    client = medseg.pacs.Client(orthanc.url, config=config)
    derived = {str(s.Modality): s for s in client.search_series(study) if str(s.Modality) in ("SEG", "RTSTRUCT")}
    assert set(derived) == {"SEG", "RTSTRUCT"}
    fetched = {m: client.retrieve_series(study, str(s.SeriesInstanceUID)).datasets for m, s in derived.items()}
    assert [len(v) for v in fetched.values()] == [1, 1]
    seg, rt = fetched["SEG"][0], fetched["RTSTRUCT"][0]
    retrieved_sources = client.retrieve_series(study, series).datasets

    for ds in (seg, rt):
        assert dciodvfy_errors(ds, tmp_path) == [], ds.Modality
        assert ds.StudyInstanceUID == study  # same study, new series and instance
        assert ds.SeriesInstanceUID != series
        assert ds.SOPInstanceUID not in sources
        assert ds.Manufacturer == "medseg" and "medseg 0" in " ".join(ds.SoftwareVersions)
    assert seg.SeriesInstanceUID != rt.SeriesInstanceUID

    # SEG: references every source instance, each frame its own slice; the algorithm and coded labels
    referenced = {str(i.ReferencedSOPInstanceUID) for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID) == series and referenced <= sources
    frames = {str(f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID) for f in seg.PerFrameFunctionalGroupsSequence}
    assert frames <= referenced
    algorithm = medseg.pacs.algorithm_of(medseg.load_model(pacs_bundle, device="cpu"))
    for segment in seg.SegmentSequence:
        item = segment.SegmentationAlgorithmIdentificationSequence[0]
        assert (item.AlgorithmName, item.AlgorithmVersion) == (algorithm.name, algorithm.version) == ("blobs unet3d", item.AlgorithmVersion)
        assert item.AlgorithmVersion.endswith(f"medseg {medseg.__version__}")
        assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "108369006"  # the bundle's coded label (Neoplasm)
        assert segment.SegmentLabel == "blob"

    # RTSTRUCT: its contours reference source slices of the series and its frame of reference
    rt_series = rt.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert str(rt_series.SeriesInstanceUID) == series
    contour_images = {str(c.ContourImageSequence[0].ReferencedSOPInstanceUID)
                      for roi in rt.ROIContourSequence for c in roi.ContourSequence}
    assert contour_images and contour_images <= sources
    assert rt.StructureSetROISequence[0].ROIDerivationAlgorithmIdentificationSequence[0].AlgorithmVersion == algorithm.version

    # read back onto the source grid: the SEG is exactly `medseg infer`'s mask, the RTSTRUCT within contour rounding
    back, names = read_dicom_seg(seg, retrieved_sources)
    assert names == {1: "blob"}
    assert back.shape == labels.shape and np.array_equal(back, labels)
    assert dice(back == 1, labels == 1) == 1.0
    rois = read_rtstruct(rt, medseg.read(retrieved_sources))
    assert dice(rois["blob"], labels == 1) >= 0.95


def test_client_search_retrieve_and_refusals(orthanc, pacs_bundle, real_data, tmp_path):
    """QIDO finds the uploaded study; WADO gives the stored (JPEG 2000) syntax; a series spilled to a
    temporary folder past the memory limit reads the same; wrong credentials and a stopped port are one-line PacsErrors naming the URL, not the secret."""
    from medseg.pacs import PacsError, PacsUnavailable

    folder = real_data / "dicom" / "totalsegmentator" / "ct_series_4slices"
    uploaded = part10(source_datasets(read_series(folder)))
    orthanc.upload(uploaded)
    study, series = str(uploaded[0].StudyInstanceUID), str(uploaded[0].SeriesInstanceUID)
    client = medseg.pacs.Client(orthanc.url, username=orthanc.user, password=orthanc.password)
    assert study in {str(s.StudyInstanceUID) for s in client.search_studies()}
    found = client.search_series(study)
    assert [(str(s.Modality), int(s.NumberOfSeriesRelatedInstances)) for s in found if s.SeriesInstanceUID == series] == [("CT", 4)]

    with client.retrieve_series(study, series) as in_memory:
        assert in_memory.folder is None and len(in_memory.datasets) == 4
        assert str(in_memory.datasets[0].file_meta.TransferSyntaxUID) == pydicom.uid.JPEG2000Lossless  # as stored

    crop = part10(read_series(real_data / "dicom" / "tcia_mr_oblique" / "11_HCropVolume"))  # 40 x 3.4 kB of pixels
    orthanc.upload(crop)
    crop_study, crop_series = str(crop[0].StudyInstanceUID), str(crop[0].SeriesInstanceUID)
    spilling = medseg.pacs.Client(orthanc.url, username=orthanc.user, password=orthanc.password, memory_limit_mb=0.05)
    with spilling.retrieve_series(crop_study, crop_series) as spilled:
        assert spilled.folder is not None and spilled.folder.is_dir() and 0 < len(list(spilled.folder.iterdir())) <= 40
        assert len(spilled.datasets) == 40
        assert np.array_equal(medseg.read(spilled.datasets).array, medseg.read(crop).array)
        folder_used = spilled.folder
    assert not folder_used.exists()  # removed once the series is done

    wrong = medseg.pacs.Client(orthanc.url, username=orthanc.user, password="not-the-password")
    with pytest.raises(PacsError, match=r"HTTP 401; check the credentials") as err:
        wrong.search_studies()
    assert "not-the-password" not in str(err.value) and "\n" not in str(err.value)

    start = time.monotonic()
    with pytest.raises(PacsUnavailable, match=r"cannot be reached"):
        medseg.pacs.Client(f"http://127.0.0.1:{free_port()}/dicom-web").search_studies()
    assert time.monotonic() - start < 15  # three quick tries, not dicomweb-client's default 30 s of retries
    with pytest.raises(InputError, match="no MR series to segment .*found modalities: CT.*--series"):
        client.segment(study, medseg.load_model(pacs_bundle, device="cpu"))
