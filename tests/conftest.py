"""Shared helpers: composing the real Hydra configs in-process and running launch.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parents[1]


def launch(*overrides: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python launch.py OVERRIDES` as a user runs it, single-threaded so runs are bitwise
    reproducible across processes."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(ROOT / "launch.py"), *overrides, "progress=false"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def popen_launch(*overrides: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, str(ROOT / "launch.py"), *overrides, "progress=false"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.fixture
def config():
    """compose(*overrides) -> the config `python launch.py OVERRIDES` would run."""

    def compose_config(*overrides: str, hydra: bool = False) -> DictConfig:
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            return compose("config", overrides=list(overrides), return_hydra_config=hydra)

    return compose_config
