"""Shared launcher: a script under torchrun, two CPU processes of one thread, first-party plugins only."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest


TEARDOWN_ABORT = "terminate called without an active exception"
"""What a gloo rank prints when it aborts (SIGABRT) as torch tears its threads down at the end of a run: seen
once in about a hundred two-process runs on a 2-core machine, with hvkit's shutdown in place; not reproduced in
40 runs of the same script alone."""


@pytest.fixture(scope="session")
def torchrun() -> Callable[..., None]:
    """``torchrun(script, *args)`` runs ``script`` under ``torchrun --standalone`` and asserts it succeeded;
    a run that failed only by :data:`TEARDOWN_ABORT` is run once more."""
    def run(script: Path, *args: str) -> None:
        env = {k: v for k, v in os.environ.items() if k != "HVKIT_PLUGINS"} | {"OMP_NUM_THREADS": "1"}
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                   str(script), *args]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        if done.returncode != 0 and TEARDOWN_ABORT in done.stderr:
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    return run
