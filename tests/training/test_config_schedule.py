import pytest

from medseg.errors import ConfigError
from medseg.training.config import load_config
from medseg.training.schedule import LrSchedule, cosine_factor, poly_factor


def test_unknown_key_is_refused_with_its_name(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {name: unet3d, configuration: 3d}\nepohcs: 3\n")
    with pytest.raises(ConfigError, match="epohcs"):
        load_config(path)


def test_overrides_win_and_none_is_ignored(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {name: unet3d, configuration: 3d}\nepochs: 7\n")
    assert load_config(path, {"epochs": 2, "seed": None}).epochs == 2
    assert load_config(path).optimizer.lr == 0.01


def test_poly_and_cosine_curves():
    assert poly_factor(0, 100) == 1.0 and poly_factor(100, 100) == 0.0
    assert poly_factor(50, 100) == pytest.approx(0.5**0.9)
    assert cosine_factor(0, 10, warmup=2) == 0.5 and cosine_factor(2, 10, warmup=2) == 1.0
    assert cosine_factor(10, 10) == pytest.approx(0.0, abs=1e-12)
    s = LrSchedule("poly", 100)
    s.total = 200  # --epochs extends a run: the same step is now earlier on the curve
    assert s(50) == pytest.approx(0.75**0.9)
