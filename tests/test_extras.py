"""Optional dependencies: a missing extra is one line naming the `pip install` that adds it.

A missing package is simulated with `sys.modules[name] = None`, which makes `import name` raise
ModuleNotFoundError as if it were not installed.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from medseg.errors import MedsegError
from medseg.extras import MissingExtraError, available, missing_message, require
from medseg.volume import Volume


def _missing(monkeypatch, *names):
    for name in names:
        monkeypatch.setitem(sys.modules, name, None)


def _assert_one_line(exc_info, expected: str):
    msg = str(exc_info.value)
    assert msg == expected and "\n" not in msg
    assert isinstance(exc_info.value, MedsegError)  # the CLI prints it as one line and exits 1


def test_require_names_the_pip_install_of_each_extra(monkeypatch):
    expected = {
        "mlflow": "mlflow is not installed; `pip install medseg[tracking]` adds it",
        "matplotlib": "matplotlib is not installed; `pip install medseg[plots]` adds it",
        "rt_utils": "rt-utils is not installed; `pip install medseg[rtstruct]` adds it",
        "cv2": "opencv-python is not installed; `pip install medseg[rtstruct]` adds it",
        "skimage": "scikit-image is not installed; `pip install medseg[rtstruct]` adds it",
        "SimpleITK": "SimpleITK is not installed; `pip install medseg[itk]` adds it",
        "safetensors": "safetensors is not installed; `pip install medseg[hf]` adds it",
    }
    for module, message in expected.items():
        assert available(module)  # installed here (make installs medseg[all])
        with monkeypatch.context() as m:
            _missing(m, module)
            with pytest.raises(MissingExtraError) as info:
                require(module)
            _assert_one_line(info, message)
            assert not available(module)
        assert missing_message(module) == message


def test_a_missing_package_needed_by_an_extra_is_named(monkeypatch):
    # rt-utils imports opencv: without it, the message names opencv, not a traceback inside rt_utils
    require("rt_utils")  # imported once, so every rt_utils module is put back after the test
    for name in [n for n in sys.modules if n == "rt_utils" or n.startswith("rt_utils.")]:
        monkeypatch.delitem(sys.modules, name)
    _missing(monkeypatch, "cv2")
    with pytest.raises(MissingExtraError) as info:
        require("rt_utils")
    _assert_one_line(info, "opencv-python is not installed; `pip install medseg[rtstruct]` adds it")


def test_nrrd_without_simpleitk(monkeypatch, tmp_path):
    from medseg.io import read_volume

    path = tmp_path / "scan.nrrd"
    path.write_bytes(b"NRRD0004\n")  # never parsed: the import guard comes first
    _missing(monkeypatch, "SimpleITK")
    with pytest.raises(MissingExtraError) as info:
        read_volume(path)
    _assert_one_line(info, "SimpleITK is not installed; `pip install medseg[itk]` adds it")


def test_rtstruct_without_rt_utils_or_scikit_image(monkeypatch):
    from medseg.io.dicom.rtstruct import build_rtstruct, read_rtstruct

    mask = Volume(np.zeros((4, 4, 2), np.uint8), np.eye(4))
    with monkeypatch.context() as m:
        _missing(m, "rt_utils", "rt_utils.ds_helper")
        with pytest.raises(MissingExtraError) as info:
            build_rtstruct(mask, [], {0: "background", 1: "organ"})  # the guard runs before the sources are checked
        _assert_one_line(info, "rt-utils is not installed; `pip install medseg[rtstruct]` adds it")
    _missing(monkeypatch, "skimage", "skimage.measure")  # the writer traces contours with it; the reader needs neither
    with pytest.raises(MissingExtraError) as info:
        build_rtstruct(mask, [], {0: "background", 1: "organ"})
    _assert_one_line(info, "scikit-image is not installed; `pip install medseg[rtstruct]` adds it")
    with pytest.raises(MedsegError, match="unused.dcm: no such file"):  # not a missing extra
        read_rtstruct("unused.dcm", mask)


def test_evaluation_plots_without_matplotlib(monkeypatch, tmp_path):
    from medseg.cli.main import run_argv
    from medseg.evaluation import evaluate, plot_boxplots
    from medseg.io import write_volume

    mask = np.zeros((8, 8, 8), np.uint8)
    mask[2:5, 2:5, 2:5] = 1
    for folder in ("pred", "ref"):
        (tmp_path / folder).mkdir()
        write_volume(Volume(mask, np.eye(4)), tmp_path / folder / "case.nii.gz")
    report = evaluate(tmp_path / "pred", tmp_path / "ref")
    _missing(monkeypatch, "matplotlib", "matplotlib.pyplot")
    with pytest.raises(MissingExtraError) as info:
        plot_boxplots(report, tmp_path / "plots")
    _assert_one_line(info, "matplotlib is not installed; `pip install medseg[plots]` adds it")
    # `medseg evaluate` still scores; only the plots are left out
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_argv(["evaluate", "--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"), "-o", str(tmp_path / "metrics.csv")])
    assert "case" in (tmp_path / "metrics.csv").read_text() and not (tmp_path / "metrics_plots").exists()


def test_a_model_by_run_id_without_mlflow(monkeypatch, tmp_path):
    from medseg.tracking_lookup import download_bundle

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "mlruns.db").touch()  # a workdir with a store: only the missing package stops the lookup
    _missing(monkeypatch, "mlflow", "mlflow.artifacts")
    with pytest.raises(MissingExtraError) as info:
        download_bundle("0123456789abcdef0123456789abcdef", tmp_path / "dst", workdir=tmp_path)
    _assert_one_line(info, "mlflow is not installed; `pip install medseg[tracking]` adds it")


def test_open_tracker_without_mlflow_warns_once_and_records_nothing(monkeypatch, tmp_path, caplog):
    from medseg import tracking

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(tracking, "_warned", False)
    _missing(monkeypatch, "mlflow")
    with caplog.at_level("WARNING", logger="medseg.tracking"):
        first = tracking.open_tracker(tmp_path, "Tiny", run_name="a")
        second = tracking.open_tracker(tmp_path, "Tiny", run_name="b")
    assert not first.active and not second.active and first.run_id is None
    first.log_metrics({"loss": 1.0})  # a no-op, as for a dead server
    warnings = [r.getMessage() for r in caplog.records if "pip install medseg[tracking]" in r.getMessage()]
    assert len(warnings) == 1
    assert not (tmp_path / "mlruns.db").exists()
