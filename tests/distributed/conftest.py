"""Shared launcher: a script under torchrun, two CPU processes of one thread, first-party plugins only."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def torchrun() -> Callable[..., None]:
    """``torchrun(script, *args)`` runs ``script`` under ``torchrun --standalone`` and asserts it succeeded."""
    def run(script: Path, *args: str) -> None:
        env = {k: v for k, v in os.environ.items() if k != "HVKIT_PLUGINS"} | {"OMP_NUM_THREADS": "1"}
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                   str(script), *args]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    return run
