import pytest

from medseg.commands import parse_folds as _parse_folds
from medseg.errors import ConfigError


def test_fold_choices():
    assert _parse_folds("all") == [0, 1, 2, 3, 4]  # the five folds one after another
    assert _parse_folds("none") == [None]  # every case, no validation: the final model
    assert _parse_folds("3") == [3]
    assert _parse_folds("0,2") == [0, 2]


@pytest.mark.parametrize("bad", ["5", "every", "0,x", ""])
def test_bad_fold_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="--fold"):
        _parse_folds(bad)


# --- which bundles `medseg infer --model ... [--folds ...]` ensembles (medseg.bundle.select_fold_bundles)

import json  # noqa: E402

from medseg.bundle import select_fold_bundles  # noqa: E402
from medseg.errors import BundleError  # noqa: E402


def fake_parent(root, folds=(0, 1, 2, 3, 4), none=True, none_value="none"):
    """A BUNDLE_PARENT: fold_k/bundle.json for each fold (only "fold" matters here) and fold_none."""
    for k in folds:
        (root / f"fold_{k}").mkdir(parents=True)
        (root / f"fold_{k}" / "bundle.json").write_text(json.dumps({"fold": k}))
    if none:
        (root / "fold_none").mkdir(parents=True)
        (root / "fold_none" / "bundle.json").write_text(json.dumps({"fold": none_value}))
    (root / "validation").mkdir(parents=True, exist_ok=True)  # not a bundle: never picked
    return root


def names(paths):
    return [p.name for p in paths]


def test_parent_gives_the_cross_validation_folds_only(tmp_path):
    parent = fake_parent(tmp_path / "m")
    assert names(select_fold_bundles([parent])) == [f"fold_{k}" for k in range(5)]


@pytest.mark.parametrize("none_value", ["none", None])
def test_fold_none_when_it_is_the_only_model_or_named(tmp_path, none_value):
    only = fake_parent(tmp_path / "only", folds=(), none_value=none_value)
    assert names(select_fold_bundles([only])) == ["fold_none"]
    parent = fake_parent(tmp_path / "m", none_value=none_value)
    assert names(select_fold_bundles([parent], "none")) == ["fold_none"]  # --folds none
    assert names(select_fold_bundles([parent / "fold_none"])) == ["fold_none"]  # its folder given
    assert names(select_fold_bundles([parent], "0,none")) == ["fold_0", "fold_none"]
    assert names(select_fold_bundles([parent], "1, 3")) == ["fold_1", "fold_3"]


def test_explicit_bundles_are_kept_and_filtered_by_folds(tmp_path):
    parent = fake_parent(tmp_path / "m")
    given = [parent / "fold_2", parent / "fold_none"]
    assert names(select_fold_bundles(given)) == ["fold_2", "fold_none"]
    assert names(select_fold_bundles(given, "2")) == ["fold_2"]


def test_bad_folds_and_bad_fold_values_are_one_line_errors(tmp_path):
    parent = fake_parent(tmp_path / "m", folds=(0, 1))
    with pytest.raises(BundleError, match=r"--folds 4"):
        select_fold_bundles([parent], "4")
    with pytest.raises(ConfigError, match="--folds"):
        select_fold_bundles([parent], "zero")
    (parent / "fold_1" / "bundle.json").write_text(json.dumps({"fold": "first"}))
    with pytest.raises(BundleError, match=r"fold_1.*\"fold\" is 'first'.*fix bundle.json"):
        select_fold_bundles([parent])


# --- post-processing chosen on the validation of every fold after `medseg train --fold all`


@pytest.mark.slow
def test_fold_all_chooses_postprocessing_on_the_pooled_validation(tiny_workdir, tmp_path, monkeypatch):
    import yaml
    from mlflow.tracking import MlflowClient

    from medseg.bundle import load_bundle
    from medseg.cli.main import run_argv
    from medseg.tracking import tracking_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    preset = yaml.safe_load(open("configs/unet3d.yaml"))
    preset.update(epochs=1, iterations_per_epoch=2, num_workers=0, precision="fp32")
    config = tmp_path / "tiny3d.yaml"
    config.write_text(yaml.safe_dump(preset))
    run_argv(["train", str(tiny_workdir), "--config", str(config), "--fold", "all"])

    root = tiny_workdir / "models" / "tiny3d"
    pooled = json.loads((root / "validation" / "postprocessing_pooled.json").read_text())
    assert pooled["num_cases"] == 6 and pooled["folds"] == [f"fold_{k}" for k in range(5)]  # every case once
    fg = pooled["all_foreground"]
    assert fg["kept"] == (fg["mean_after"] >= fg["mean_before"] - 1e-9)
    assert set(pooled["per_class"]) == {"1", "2"}
    for r in pooled["per_class"].values():
        assert r["kept"] == (r["dice_after"] >= r["dice_before"] - 1e-9)
    client = MlflowClient(tracking_uri(tiny_workdir))
    for k in range(5):
        bundle = load_bundle(root / f"fold_{k}")
        assert bundle.postprocessing == pooled["steps"]  # one choice, in every fold's bundle
        per_fold = json.loads((root / "validation" / f"fold_{k}" / "postprocessing.json").read_text())
        assert per_fold["num_cases"] == len(list((root / "validation" / f"fold_{k}").glob("*.npz"))) >= 1
        run = client.get_run(bundle.mlflow_run_id)
        assert "pp_pooled_dice_before_ball" in run.data.metrics and "pp_dice_after_box" in run.data.metrics
        assert json.loads(run.data.tags["pp_pooled.postprocessing"]) == pooled["steps"]
        logged = {a.path for a in client.list_artifacts(bundle.mlflow_run_id, "postprocessing")}
        assert logged == {"postprocessing/postprocessing.json", "postprocessing/postprocessing_pooled.json"}
        shipped = client.download_artifacts(bundle.mlflow_run_id, "bundle/bundle.json", str(tmp_path / f"dl{k}"))
        assert json.loads(open(shipped).read())["postprocessing"] == pooled["steps"]
    # the final model on every case (no validation of its own) takes the cross-validation choice
    run_argv(["train", str(tiny_workdir), "--config", str(config), "--fold", "none"])
    assert load_bundle(root / "fold_none").postprocessing == pooled["steps"]
