"""Why a run stopped: the record ``hvkit run`` leaves as it stops, and removes as it starts again."""

from __future__ import annotations

import logging

import pytest

from hvkit import distributed, stop_record
from hvkit.errors import HvkitError, Interrupted, Problems


def stopped_by(tmp_path, error: BaseException) -> stop_record.Stop | None:
    with pytest.raises(type(error)) as info:
        with stop_record.recorded(tmp_path):
            raise error
    assert info.value is error  # it goes on unchanged
    return stop_record.read(tmp_path)


def test_a_user_error_is_recorded_a_problem_a_line(tmp_path):
    stop = stopped_by(tmp_path, Problems([HvkitError("first"), HvkitError("second")]))
    assert (stop.error, stop.interrupted) == (["first", "second"], False)
    assert stop.time[:4].isdigit() and stop.time[10] == "T"


def test_another_error_is_recorded_with_its_type_and_a_signal_as_interrupted(tmp_path):
    assert stopped_by(tmp_path, RuntimeError("out of memory")).error == ["RuntimeError: out of memory"]
    stop = stopped_by(tmp_path, Interrupted("SIGINT: the completed stages are kept", 130))
    assert (stop.error, stop.interrupted) == (["SIGINT: the completed stages are kept"], True)


def test_an_error_following_a_peer_s_is_left_to_that_peer(tmp_path, monkeypatch):
    monkeypatch.setattr(distributed, "peer_reported", lambda: True)
    assert stopped_by(tmp_path, RuntimeError("connection closed by peer")) is None
    assert stopped_by(tmp_path, HvkitError("a user error all ranks meet")).error == ["a user error all ranks meet"]


def test_a_new_attempt_removes_the_record_and_a_success_leaves_none(tmp_path):
    stopped_by(tmp_path, HvkitError("nan loss"))
    with stop_record.recorded(tmp_path):
        assert stop_record.read(tmp_path) is None
    assert not (tmp_path / stop_record.STOPPED).exists()


def test_a_record_that_cannot_be_written_is_a_warning(tmp_path, monkeypatch, caplog):
    def full(*_):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(stop_record, "write_json", full)
    with caplog.at_level(logging.WARNING, logger="hvkit"):
        assert stopped_by(tmp_path, HvkitError("nan loss")) is None
    assert caplog.messages == [f"{tmp_path}: cannot record why the run stopped (No space left on device)"]


def test_an_unreadable_record_reads_as_none(tmp_path):
    (tmp_path / stop_record.STOPPED).write_text("{not json")
    assert stop_record.read(tmp_path) is None
    (tmp_path / stop_record.STOPPED).write_text('{"time": "t"}')
    assert stop_record.read(tmp_path) is None
