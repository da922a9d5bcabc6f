"""Atomic checkpoints: a crash mid-write keeps the previous file; loading never unpickles code."""

from __future__ import annotations

import json
import os
import pickle
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from hvkit.engine.checkpoint import atomic_write, load_checkpoint, save_checkpoint, write_json
from hvkit.errors import HvkitError


class Arbitrary:
    """Not a tensor, number, string or container: weights_only must refuse it."""

    def __init__(self):
        self.payload = "anything"


def test_round_trip(tmp_path):
    state = {"w": torch.arange(6.0).reshape(2, 3), "step": 7, "name": "x", "rng": torch.get_rng_state()}
    save_checkpoint(tmp_path / "last.pt", state)
    loaded = load_checkpoint(tmp_path / "last.pt")
    assert torch.equal(loaded["w"], state["w"]) and torch.equal(loaded["rng"], state["rng"])
    assert (loaded["step"], loaded["name"]) == (7, "x")


def test_crash_mid_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"w": torch.ones(100)})
    good = path.read_bytes()
    real_save = torch.save

    def crash_after_some_bytes(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.truncate(len(good) // 2)
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash_after_some_bytes)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"w": torch.zeros(100)})
    assert path.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    assert torch.equal(load_checkpoint(path)["w"], torch.ones(100))


def test_interrupt_mid_write_leaves_no_temp_file(tmp_path):
    path = tmp_path / "report.md"
    atomic_write(path, lambda f: f.write("first"), "w")

    def interrupted(f):
        f.write("half of the sec")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, interrupted, "w")
    assert path.read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]


def test_write_json_creates_folders(tmp_path):
    write_json(tmp_path / "a" / "b.json", {"x": 1})
    assert (tmp_path / "a" / "b.json").read_text() == '{\n  "x": 1\n}\n'


def test_write_json_keeps_numpy_and_torch_numbers_as_numbers(tmp_path):
    write_json(tmp_path / "m.json", {"f32": np.float32(0.5), "i64": np.int64(3), "arr": np.arange(2),
                                     "t": torch.tensor([1.5]), "path": Path("a/b")})
    assert json.loads((tmp_path / "m.json").read_text()) == {"f32": 0.5, "i64": 3, "arr": [0, 1], "t": [1.5],
                                                            "path": "a/b"}


def test_written_files_get_the_usual_permissions(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    write_json(tmp_path / "m.json", {})
    save_checkpoint(tmp_path / "last.pt", {})
    (tmp_path / "plain").touch()
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == {"m.json": 0o666 & ~umask, "last.pt": 0o666 & ~umask, "plain": 0o666 & ~umask}


def test_arbitrary_pickle_is_refused_in_one_line(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"w": torch.ones(2), "obj": Arbitrary()}, path)
    with pytest.raises(HvkitError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert message.startswith(f"cannot read checkpoint {path}: UnpicklingError")
    assert "\n" not in message


def test_plain_pickle_and_garbage_are_refused(tmp_path):
    (tmp_path / "plain.pt").write_bytes(pickle.dumps({"obj": Arbitrary()}, protocol=2))
    (tmp_path / "garbage.pt").write_bytes(b"\x00not a checkpoint")
    for name in ("plain.pt", "garbage.pt"):
        with pytest.raises(HvkitError, match=f"cannot read checkpoint .*{name}"):
            load_checkpoint(tmp_path / name)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(HvkitError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope.pt")
