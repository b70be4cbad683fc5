"""medseg.threads: the default thread count under load, --threads, and passive OpenMP waiting."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from medseg.errors import ConfigError
from medseg.threads import default_threads, prepare_environment, set_threads


def test_default_is_one_thread_per_core_this_process_may_use(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5})
    assert default_threads() == 3  # the affinity (a container's or taskset's share), not os.cpu_count()


def test_threads_given_are_set_exactly_and_zero_is_refused(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        assert set_threads(2) == 2 and torch.get_num_threads() == 2
        assert set_threads(1) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ConfigError, match="threads 0: expected at least 1"):
        set_threads(0)


def test_omp_num_threads_in_the_environment_wins_over_the_default(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    assert set_threads() == before  # left as torch set it from the environment


def test_passive_waiting_is_a_default_the_environment_overrides(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    prepare_environment()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    prepare_environment()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def test_the_cli_sets_passive_waiting_before_torch_starts():
    code = ("import os, sys; sys.argv = ['medseg', '--version']; from medseg.cli.main import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\nprint(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.strip().splitlines()[-1] == "PASSIVE False"


def test_threads_is_a_training_config_field():
    from medseg.training.config import load_train_config

    assert load_train_config("configs/unet3d_cpu.yaml", {"threads": 3}).threads == 3
    with pytest.raises(ConfigError):
        load_train_config("configs/unet3d_cpu.yaml", {"threads": 0})
