import pytest

from medseg.cli.train import _parse_folds
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
