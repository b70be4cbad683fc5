"""`medseg pacs segment --resample-irregular` on a real gantry-tilted CT held by a real Orthanc: the
SEG and RTSTRUCT it stores lie on the acquisition's own tilted slices and reference its instances."""

from __future__ import annotations

import numpy as np
import pytest

import medseg.pacs
from pacs_helpers import dciodvfy_errors, part10, read_series
from medseg.cli.main import run_argv
from medseg.errors import DicomError
from medseg.io.dicom import source_grid

pytestmark = pytest.mark.slow

TILTED = ("dicom", "dicom2nifti", "failing", "gantrytilting", "001")  # 4 CT slices, 14 degrees of tilt


def test_pacs_segment_resamples_a_tilted_ct_and_stores_outputs_on_its_own_slices(orthanc, pacs_bundle, real_data, tmp_path, monkeypatch):
    uploaded = part10(read_series(real_data.joinpath(*TILTED)))
    orthanc.upload(uploaded)
    study, series = str(uploaded[0].StudyInstanceUID), str(uploaded[0].SeriesInstanceUID)
    sources = {str(ds.SOPInstanceUID) for ds in uploaded}
    monkeypatch.setenv("MEDSEG_PACS_USERNAME", orthanc.user)
    monkeypatch.setenv("MEDSEG_PACS_PASSWORD", orthanc.password)
    argv = ["pacs", "segment", "--url", orthanc.url, "--study", study, "--series", series, "--model", str(pacs_bundle),
            "--device", "cpu", "--format", "dicom-seg,rtstruct"]

    with pytest.raises(DicomError, match="--resample-irregular"):  # refused, with the hint naming an option pacs has
        run_argv(argv)
    client = medseg.pacs.Client(orthanc.url)
    assert not [s for s in client.search_series(study) if str(s.Modality) in ("SEG", "RTSTRUCT")]  # nothing stored

    run_argv(argv + ["--resample-irregular"])
    derived = {str(s.Modality): s for s in client.search_series(study) if str(s.Modality) in ("SEG", "RTSTRUCT")}
    assert set(derived) == {"SEG", "RTSTRUCT"}
    seg, rt = (client.retrieve_series(study, str(derived[m].SeriesInstanceUID)).datasets[0] for m in ("SEG", "RTSTRUCT"))
    for ds in (seg, rt):
        assert dciodvfy_errors(ds, tmp_path) == [], ds.Modality

    grid = source_grid(uploaded)  # the tilted slices, in the order medseg sorts them
    position = {str(ds.SOPInstanceUID): np.asarray(ds.ImagePositionPatient, float) for ds in grid.datasets}
    frames = seg.PerFrameFunctionalGroupsSequence
    assert len(frames) > 0
    for frame in frames:  # each frame on the source slice it derives from, at that slice's own position
        uid = str(frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        assert uid in sources
        np.testing.assert_allclose(frame.PlanePositionSequence[0].ImagePositionPatient, position[uid], atol=1e-3)

    orientation = np.asarray(uploaded[0].ImageOrientationPatient, float)
    normal = np.cross(orientation[:3], orientation[3:])
    contours = [c for roi in rt.ROIContourSequence for c in roi.ContourSequence]
    assert contours
    for contour in contours:  # every contour on the plane of the slice it references
        uid = str(contour.ContourImageSequence[0].ReferencedSOPInstanceUID)
        points = np.asarray(contour.ContourData, float).reshape(-1, 3)
        np.testing.assert_allclose((points - position[uid]) @ normal, 0, atol=1e-2)


@pytest.mark.parametrize("command", ["segment", "watch", "listen"])
def test_every_pacs_command_takes_resample_irregular(command, capsys):
    from medseg.cli.main import app

    with pytest.raises(SystemExit):
        app(args=["pacs", command, "--help"], prog_name="medseg")
    assert "--resample-irregular" in capsys.readouterr().out
