"""`medseg models`: one line per registered model with its parameter count and GFLOPs."""

from __future__ import annotations

import re

from typer.testing import CliRunner

from medseg.cli.main import app
from medseg.models import MODELS, build_model, count_parameters


def test_lists_every_model_with_counts():
    result = CliRunner().invoke(app, ["models", "--patch", "16x16x8", "--in-channels", "2", "--classes", "2"])
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line.split() for line in result.output.splitlines()[1:] if line.strip()}
    assert set(rows) == set(MODELS)
    # 16x16x8: strides halve axes >= 8 -> [1,1,1], [2,2,2], [2,2,1]; features 32, 64, 128
    expected = build_model("unet3d", {"features_per_stage": [32, 64, 128], "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 1]]},
                           in_channels=2, num_classes=2)
    assert int(rows["unet3d"][1].replace(",", "")) == count_parameters(expected)
    assert all(float(r[2]) > 0 for r in rows.values())
    assert rows["unet2d"][3] == "16x16" and rows["unet3d"][3] == "16x16x8"


def test_bad_patch_is_one_line_error():
    result = CliRunner().invoke(app, ["models", "--patch", "big"])
    assert result.exit_code != 0
    assert re.search("not a patch size", str(result.exception) + result.output)
