"""`medseg evaluate` against a real MLflow server on a loopback port, read back with MlflowClient."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from medseg.cli.main import main
from mlflow_test_helpers import free_port, stop_group, wait_for_http, write_cases

MLFLOW = os.path.join(os.path.dirname(sys.executable), "mlflow")


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    server = subprocess.Popen(
        [MLFLOW, "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{root}/db", "--default-artifact-root", str(root / "art"), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        wait_for_http(f"http://127.0.0.1:{port}/health", server)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_group(server)


def run_cli(args, uri, cwd):
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    result = subprocess.run([sys.executable, "-m", "medseg", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result


@pytest.mark.slow
def test_evaluate_logs_to_a_real_server(mlflow_server, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    write_cases(tmp_path / "pred", tmp_path / "ref")
    result = run_cli(["evaluate", "--pred", "pred", "--ref", "ref", "-o", "metrics.csv", "--experiment", "toy"], mlflow_server, tmp_path)
    run_id = re.search(r"MLflow run ([0-9a-f]{32})", result.stdout).group(1)
    assert "mIoU" in result.stdout

    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    client = MlflowClient(tracking_uri=mlflow_server)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "toy"
    for label in ("1", "2"):
        expected = np.mean([float(r["dice"]) for r in rows if r["label"] == label])
        assert run.data.metrics[f"dice_{label}"] == pytest.approx(expected)
    assert run.data.metrics["dice_mean"] == pytest.approx(np.mean([run.data.metrics["dice_1"], run.data.metrics["dice_2"]]))
    assert "miou" in run.data.metrics and "hd95_1" in run.data.metrics
    assert run.data.params["evaluate.tolerance_mm"] == "1.0"
    files = {a.path for a in client.list_artifacts(run_id, "evaluation")}
    assert files == {"evaluation/metrics.csv", "evaluation/metrics.json", "evaluation/plots"}
    plots = {a.path.rsplit("/", 1)[1] for a in client.list_artifacts(run_id, "evaluation/plots")}
    assert {"boxplot_label_1.png", "boxplot_label_2.png", "worst_1_case2.png"} <= plots

    # --run adds the evaluation to an existing run (e.g. the training run) under eval_* names
    # (in-process this time: one subprocess already proved the console entry point)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    # success returns (exit code 0 from the console script); errors raise SystemExit(1)
    main(["evaluate", "--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"), "-o", str(tmp_path / "again.csv"), "--run", run_id])
    metrics = client.get_run(run_id).data.metrics
    assert metrics["eval_dice_1"] == pytest.approx(metrics["dice_1"])


def test_bad_options_are_one_line_errors(tmp_path, capsys):
    write_cases(tmp_path / "pred", tmp_path / "ref", n=1)
    common = ["evaluate", "--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"), "-o", str(tmp_path / "m.csv")]
    for extra, message in (
        (["--run", "0" * 32, "--experiment", "x"], "exclude each other"),
        (["--labels", "one,two"], "comma-separated integers"),
    ):
        with pytest.raises(SystemExit) as info:
            main(common + extra)
        assert info.value.code == 1
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1


def test_without_workdir_or_tracking_uri_nothing_is_logged_and_no_store_appears(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    write_cases(tmp_path / "pred", tmp_path / "ref", n=1)
    monkeypatch.chdir(tmp_path)
    # success returns (exit code 0 from the console script); errors raise SystemExit(1)
    main(["evaluate", "--pred", "pred", "--ref", "ref", "-o", "m.csv"])
    assert "not logged to MLflow" in capsys.readouterr().err
    assert (tmp_path / "m.csv").is_file()
    assert not (tmp_path / "mlruns.db").exists() and not (tmp_path / "mlartifacts").exists()
