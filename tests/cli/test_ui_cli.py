"""`medseg ui WORKDIR`: serves the workdir's store; a run logged by `medseg evaluate` is listed over REST."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import urllib.request

import pytest

from medseg.cli.main import main
from mlflow_test_helpers import free_port, post_json, stop_group, wait_for_http, write_cases


@pytest.mark.slow
def test_ui_serves_the_workdir_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    workdir = tmp_path / "work"
    write_cases(tmp_path / "pred", tmp_path / "ref", n=2)
    # success returns (exit code 0 from the console script); errors raise SystemExit(1)
    main(["evaluate", "--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"),
          "-o", str(tmp_path / "m.csv"), "--workdir", str(workdir)])  # fmt: skip
    run_id = re.search(r"MLflow run ([0-9a-f]{32})", capsys.readouterr().out).group(1)
    assert (workdir / "mlruns.db").is_file()

    port = free_port()
    ui = subprocess.Popen(
        [sys.executable, "-m", "medseg", "ui", str(workdir), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(url + "/health", ui)
        for line in ui.stdout:  # the URL line, printed once `medseg ui` sees the server up (MLflow's log shares the pipe)
            if f"MLflow UI at {url}" in line:
                break
        else:
            pytest.fail("medseg ui exited without printing its URL")
        with urllib.request.urlopen(url + "/", timeout=10) as response:
            assert response.status == 200
        experiments = post_json(url + "/api/2.0/mlflow/experiments/search", {"max_results": 100})["experiments"]
        ids = [e["experiment_id"] for e in experiments if e["name"] == "medseg-evaluate"]
        runs = post_json(url + "/api/2.0/mlflow/runs/search", {"experiment_ids": ids})["runs"]
        assert [r["info"]["run_id"] for r in runs] == [run_id]
        assert any(m["key"] == "dice_mean" for m in runs[0]["data"]["metrics"])
        # SIGTERM to `medseg ui` alone stops the server it started
        ui.send_signal(signal.SIGTERM)
        ui.wait(timeout=30)
        with pytest.raises(OSError):
            urllib.request.urlopen(url + "/health", timeout=2)
    finally:
        stop_group(ui)


def test_ui_refuses_a_folder_that_is_not_a_workdir(tmp_path, monkeypatch, capsys):
    from medseg.cli.main import main

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(SystemExit) as info:
        main(["ui", str(tmp_path)])
    err = capsys.readouterr().err
    assert info.value.code == 1 and "not a medseg workdir" in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []  # no mlruns.db made by a server started there
