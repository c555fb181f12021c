"""The language-model zoo: causal blocks against torch's own layer, the byte-level corpus from
real files, and a small GPT zoo through training, the landscape tasks and the plot."""

from __future__ import annotations

import hashlib
import json
import math
import os

import pytest
import torch
from torch import nn

from ptmz.data import load_dataset
from ptmz.data.text import CONTEXT
from ptmz.errors import ConfigError, PtmzError
from ptmz.models import build_model
from ptmz.models.vit import Block
from ptmz.tasks import run_task
from ptmz.tasks.train import spec_from_config
from ptmz.zoo import RunDir

from conftest import landscape_tasks, small_zoo


def test_causal_block_equals_torchs_layer_with_a_causal_mask():
    torch.manual_seed(0)
    width, heads, tokens = 64, 2, 9
    oracle = nn.TransformerEncoderLayer(
        width, heads, 4 * width, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
    )
    block = Block(width, heads, causal=True)
    block.load_state_dict(
        {
            "norm1.weight": oracle.norm1.weight,
            "norm1.bias": oracle.norm1.bias,
            "attn.qkv.weight": oracle.self_attn.in_proj_weight,
            "attn.qkv.bias": oracle.self_attn.in_proj_bias,
            "attn.proj.weight": oracle.self_attn.out_proj.weight,
            "attn.proj.bias": oracle.self_attn.out_proj.bias,
            "norm2.weight": oracle.norm2.weight,
            "norm2.bias": oracle.norm2.bias,
            "mlp.0.weight": oracle.linear1.weight,
            "mlp.0.bias": oracle.linear1.bias,
            "mlp.2.weight": oracle.linear2.weight,
            "mlp.2.bias": oracle.linear2.bias,
        }
    )
    x = torch.randn(3, tokens, width)
    mask = nn.Transformer.generate_square_subsequent_mask(tokens)
    torch.testing.assert_close(block(x), oracle(x, src_mask=mask, is_causal=True))


def test_a_prediction_never_sees_later_tokens():
    torch.manual_seed(0)
    model = build_model("gpt", 32, CONTEXT + 1, 256, CONTEXT + 1).eval()
    tokens = torch.randint(0, 256, (2, CONTEXT))
    changed = tokens.clone()
    changed[:, 40:] = torch.randint(0, 256, (2, CONTEXT - 40))
    with torch.no_grad():
        a, b = model(tokens), model(changed)
    assert torch.equal(a[:, :40], b[:, :40]) and not torch.allclose(a[:, 40:], b[:, 40:])


def test_corpus_from_a_file_or_a_folder(tmp_path):
    text = "".join(f"line {i}: the quick brown fox\n" for i in range(200)).encode()
    (tmp_path / "file").mkdir()
    (tmp_path / "file" / "text.txt").write_bytes(text)
    data = load_dataset("text", tmp_path / "file", download=False)
    first = data.train.images[0]
    assert bytes(first.tolist()) == text[: CONTEXT + 1]
    assert bytes(data.train.images[1, :1].tolist()) == text[CONTEXT : CONTEXT + 1]  # next window
    assert bytes(data.test.images[0].tolist()) == text[int(len(text) * 0.9) :][: CONTEXT + 1]

    folder = tmp_path / "folder" / "text"
    (folder / "b").mkdir(parents=True)
    (folder / "a.txt").write_bytes(text[:3000])
    (folder / "b" / "c.txt").write_bytes(text[3000:])
    again = load_dataset("text", tmp_path / "folder", download=False)
    assert torch.equal(again.train.images, data.train.images)

    (tmp_path / "small").mkdir()
    (tmp_path / "small" / "text.txt").write_bytes(b"too short")
    with pytest.raises(PtmzError, match="dataset=text: the corpus under .* has 9 bytes"):
        load_dataset("text", tmp_path / "small", download=False)
    (tmp_path / "small" / "text.txt").write_bytes(b"")  # empty: not the generated default
    with pytest.raises(PtmzError, match="dataset=text: the corpus under .* has 0 bytes"):
        load_dataset("text", tmp_path / "small", download=False)


def test_the_corpus_is_part_of_a_text_runs_identity(tmp_path, config):
    default = spec_from_config(config("zoo=gpt_text", f"data_root={tmp_path}"))
    assert default.corpus is None and "corpus" not in default.identity  # the ids of before
    text = b"another corpus\n" * 500
    (tmp_path / "text.txt").write_bytes(text)
    other = spec_from_config(config("zoo=gpt_text", f"data_root={tmp_path}"))
    assert other.corpus == hashlib.sha256(text).hexdigest()[:16]
    assert other.run_id != default.run_id  # not taken for the runs on the generated corpus


def test_a_corpus_is_hashed_once_until_it_changes(tmp_path, monkeypatch):
    from pathlib import Path

    from ptmz.data.text import corpus_id

    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "a.txt").write_bytes(b"first part\n" * 100)
    (tmp_path / "text" / "b.txt").write_bytes(b"second part\n" * 100)
    joined = b"first part\n" * 100 + b"second part\n" * 100
    reads = []
    read_bytes = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda p: reads.append(p) or read_bytes(p))
    ids = {corpus_id(tmp_path) for _ in range(32)}  # a grid's specs, each asking
    assert ids == {hashlib.sha256(joined).hexdigest()[:16]} and len(reads) == 2
    stat = (tmp_path / "text" / "b.txt").stat()
    (tmp_path / "text" / "b.txt").write_bytes(b"SECOND PART\n" * 100)  # same size, and
    os.utime(tmp_path / "text" / "b.txt", ns=(stat.st_atime_ns, stat.st_mtime_ns))  # mtime
    upper = b"first part\n" * 100 + b"SECOND PART\n" * 100
    assert corpus_id(tmp_path) == hashlib.sha256(upper).hexdigest()[:16]
    (tmp_path / "text" / "b.txt").write_bytes(b"edited\n")
    assert (
        corpus_id(tmp_path) == hashlib.sha256(b"first part\n" * 100 + b"edited\n").hexdigest()[:16]
    )


def test_gpt_zoo_trains_takes_the_landscape_tasks_and_plots(tmp_path, config):
    zoo = small_zoo(tmp_path, "gpt_text", "width=16", "batch_size=64", "seed=0,1", "epochs=1")
    runs = sorted(zoo.glob("w16_bs64_s*"))
    for run in runs:
        first, last = RunDir(run).records[0], RunDir(run).records[-1]
        assert first["test_loss"] == pytest.approx(5.545, abs=0.05)  # ln 256: a uniform guess
        assert last["test_loss"] < first["test_loss"] - 1 and last["test_ppl"] == pytest.approx(
            math.exp(last["test_loss"]), rel=1e-6
        )
    landscape_tasks(config, zoo, runs=2, grid_points=1)
    curve = json.loads(next(zoo.glob("landscape/**/curve_epoch_0001.json")).read_text())
    assert {"mc_train_loss", "mc_test_loss"} <= set(curve["mean"])
    assert run_task(config("task=plot", f"population={zoo}"))["files"]
    assert run_task(config("task=average_epochs", f"population={zoo}"))["computed"] == 2
    with pytest.raises(PtmzError, match="alignment: GPT cannot be traced by torch.fx"):
        run_task(config("task=average_seeds", f"population={zoo}"))
    assert run_task(config("task=ensemble", f"population={zoo}"))["computed"] == 1
    pair = json.loads(next(zoo.glob("landscape/**/ensemble_epoch_0001.json")).read_text())
    assert pair["ensemble_ppl"] == pytest.approx(math.exp(pair["ensemble_loss"]), rel=1e-6)
    assert "ensemble_gain_ppl" in pair
    with pytest.raises(ConfigError, match="task='finetune'.*ppl, not accuracy.*any but finetune"):
        run_task(config("task=finetune", f"population={zoo}"))
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "text.txt").write_bytes(b"not what the zoo read\n" * 500)
    elsewhere = (f"population={zoo}", f"data_root={tmp_path / 'corpus'}")
    with pytest.raises(ConfigError, match=r"data_root=.*the generated corpus\); it holds corpus"):
        run_task(config("task=hessian", *elsewhere))
