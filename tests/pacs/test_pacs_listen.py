"""`medseg pacs listen`: a series sent with dcmtk's storescu is grouped, segmented once it settles,
and its SEG and RTSTRUCT are pushed to Orthanc over STOW-RS."""

from __future__ import annotations

import subprocess
import time

import numpy as np
import pytest

import medseg
import medseg.pacs
from pacs_helpers import free_port, part10, read_series, renamed_series
from medseg.cli.main import run_argv
from medseg.errors import ConfigError
from medseg.io.dicom import read_dicom_seg

pytestmark = pytest.mark.slow


def test_storescu_series_gets_its_seg_pushed(orthanc, pacs_bundle, real_data, tmp_path):
    from medseg.pacs.listen import Listener, sender_for

    datasets = renamed_series(part10(read_series(real_data / "dicom" / "tcia_mr_oblique" / "11_HCropVolume")), "listen")
    files = []
    for i, ds in enumerate(datasets):
        files.append(tmp_path / f"{i:03d}.dcm")
        ds.save_as(files[-1], enforce_file_format=True)
    series_uid = str(datasets[0].SeriesInstanceUID)
    predictor = medseg.load_model(pacs_bundle, device="cpu")
    client = medseg.pacs.Client(orthanc.url, username=orthanc.user, password=orthanc.password)
    port = free_port()
    listener = Listener(predictor, client, port=port, ae_title="MEDSEG", host="127.0.0.1", settle=1.0)
    listener.start()
    try:
        half = len(files) // 2  # two associations: the series is still grouped into one
        for chunk in (files[:half], files[half:]):
            subprocess.run(["storescu", "-aet", "SCANNER", "-aec", "MEDSEG", "127.0.0.1", str(port), *map(str, chunk)],
                           check=True, capture_output=True, timeout=60)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not orthanc.derived_for(series_uid, "RTSTRUCT"):
            time.sleep(0.2)
    finally:
        listener.stop()
    segs = orthanc.derived_for(series_uid, "SEG")
    assert len(segs) == 1 and len(orthanc.derived_for(series_uid, "RTSTRUCT")) == 1 and len(listener.sent) == 1
    seg = segs[0]
    referenced = {str(i.ReferencedSOPInstanceUID) for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced <= {str(ds.SOPInstanceUID) for ds in datasets}
    back, _ = read_dicom_seg(seg, datasets)
    assert np.array_equal(back, predictor.segment(datasets).labels.array)  # all 40 instances made it into the one series

    # results can go back by C-STORE instead (--send-to AET@HOST:PORT): here to Orthanc's DICOM port
    sender = sender_for(f"ORTHANC@127.0.0.1:{orthanc.dicom_port}", "MEDSEG")
    sender.store([seg])
    assert len(orthanc.derived_for(series_uid, "SEG")) == 1  # the same SOP instance: stored again, not duplicated
    copy = renamed_series(datasets[:1], "c-store")
    sender.store(copy)
    assert any(s["MainDicomTags"]["SeriesInstanceUID"] == copy[0].SeriesInstanceUID for s in orthanc.series("MR"))


def test_listen_refuses_a_bad_destination_in_one_line(pacs_bundle):
    with pytest.raises(ConfigError, match=r"--send-to 'nowhere': expected a DICOMweb URL .* or AET@HOST:PORT"):
        run_argv(["pacs", "listen", "--model", str(pacs_bundle), "--send-to", "nowhere", "--device", "cpu"])
