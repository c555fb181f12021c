"""logger=tensorboard|wandb: each epoch's record, read back from the real libraries' files,
equals the run's own metrics.jsonl; the run's id, zoo and config go with it."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from ptmz.zoo import RunDir

from conftest import launch

RUN = ["width=2", "batch_size=128", "epochs=2"]


def _records(out: Path) -> tuple[str, list[dict]]:
    (run,) = [RunDir(p.parent) for p in out.glob("digits_resnet18/*/metrics.jsonl")]
    return run.path.name, run.records


def test_tensorboard_holds_every_epoch_of_the_run(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = launch(*RUN, f"out_dir={tmp_path}", "logger=tensorboard")
    assert result.returncode == 0, result.stderr
    name, records = _records(tmp_path)
    events = EventAccumulator(str(tmp_path / "tensorboard" / "digits_resnet18" / name))
    events.Reload()
    for key in ("train_loss", "test_acc"):
        logged = [(e.step, e.value) for e in events.Scalars(key)]
        expected = [(r["epoch"], pytest.approx(r[key], rel=1e-6)) for r in records]
        assert logged == expected, key
    assert events.Scalars("lr")[0].step == 1  # epoch 0 has no learning rate
    (config,) = events.Tensors("config/text_summary")
    assert '"zoo": "digits_resnet18"' in config.tensor_proto.string_val[0].decode()


def _wandb_records(path: Path):
    """The protobuf records of a W&B run file (LevelDB log format after a 7-byte header)."""
    from wandb.proto import wandb_internal_pb2

    data, block, position, pieces = path.read_bytes(), 32768, 7, b""
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        chunk = data[position + 7 : position + 7 + length]
        position += 7 + length
        pieces = chunk if kind in (1, 2) else pieces + chunk
        if kind in (1, 4):  # a whole record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pieces)
            yield record


def test_wandb_offline_run_holds_every_epoch_of_the_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    result = launch(*RUN, f"out_dir={tmp_path}", "logger=wandb")
    assert result.returncode == 0, result.stderr
    name, records = _records(tmp_path)
    (run_file,) = (tmp_path / "wandb").glob("offline-run-*/*.wandb")
    history, runs = [], []
    for record in _wandb_records(run_file):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append(
                {
                    i.key or "/".join(i.nested_key): json.loads(i.value_json)
                    for i in record.history.item
                }
            )
        elif kind == "run":
            runs.append(record.run)
    assert [h["_step"] for h in history] == [r["epoch"] for r in records]
    for logged, expected in zip(history, records, strict=True):
        assert logged["train_loss"] == pytest.approx(expected["train_loss"], rel=1e-9)
        assert logged["test_acc"] == pytest.approx(expected["test_acc"], rel=1e-9)
    run = runs[0]
    assert (run.display_name, run.run_group, run.project) == (name, "digits_resnet18", "ptmz")
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert config["width"] == 2 and config["batch_size"] == 128


def test_an_unknown_logger_is_named(tmp_path):
    result = launch(*RUN, f"out_dir={tmp_path}", "logger=mlflow")
    assert result.returncode != 0
    assert "logger" in result.stderr and "mlflow" in result.stderr
