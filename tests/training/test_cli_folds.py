import pytest

from medseg.cli.train import _parse_folds
from medseg.errors import ConfigError


def test_fold_all_means_every_case_as_in_nnunet():
    assert _parse_folds("all") == [None]
    assert _parse_folds("3") == [3]
    assert _parse_folds("0,1,2,3,4") == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("bad", ["5", "none", "0,x", ""])
def test_bad_fold_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="--fold"):
        _parse_folds(bad)
