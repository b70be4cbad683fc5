"""An existing trained model is never overwritten silently: a new run into its folder is refused
before any work, unless --overwrite; --epochs extends it; 3 cases train with --fold none."""

from __future__ import annotations

import json
import time

import pytest

from conftest import _make_workdir
from medseg.errors import ConfigError
from medseg.training.config import load_train_config
from medseg.training.loop import train

TINY = {"epochs": 1, "iterations_per_epoch": 2, "validate_every": 1, "num_workers": 0, "precision": "fp32"}


@pytest.mark.slow
def test_existing_bundle_is_kept_unless_overwrite_and_epochs_extends(tmp_path):
    workdir = _make_workdir(tmp_path / "work", n_cases=3)  # 3 cases: too few for 5 folds, fine for --fold none
    config = load_train_config("configs/unet3d_cpu.yaml", TINY)
    first = train(workdir, config, preset_name="p", fold=None)
    bundle = first.bundle_dir / "bundle.json"
    stamp = bundle.stat().st_mtime_ns
    weights = first.weights_sha256

    started = time.monotonic()
    with pytest.raises(ConfigError, match=r"fold_none: a trained model is already there .*--resume .*--overwrite"):
        train(workdir, config, preset_name="p", fold=None)
    assert time.monotonic() - started < 5  # refused before any work
    assert bundle.stat().st_mtime_ns == stamp

    extended = train(workdir, config, preset_name="p", fold=None, epochs=2)  # --epochs: continues the run
    assert extended.epochs_done == 2 and len(extended.train_losses) == 2

    replaced = train(workdir, config.model_copy(update={"seed": 7}), preset_name="p", fold=None, overwrite=True)
    assert replaced.epochs_done == 1 and replaced.weights_sha256 != weights
    assert json.loads(bundle.read_text())["model"]


def test_cli_refuses_in_one_line_and_names_the_options(tmp_path, capsys):
    from medseg.cli.main import main

    workdir = _make_workdir(tmp_path / "work", n_cases=3)
    folder = workdir / "models" / "unet3d_cpu" / "fold_none"
    folder.mkdir(parents=True)
    (folder / "bundle.json").write_text("{}")
    with pytest.raises(SystemExit) as exc:
        main(["train", str(workdir), "--config", "configs/unet3d_cpu.yaml", "--fold", "none"])
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--overwrite" in err[0] and "Traceback" not in err[0]
    assert (folder / "bundle.json").read_text() == "{}"
