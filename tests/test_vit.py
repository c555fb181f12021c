"""The ViT family: its blocks against torch's own transformer layer, and a digits ViT zoo that
trains, takes every landscape task and plots."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from ptmz.errors import ConfigError, PtmzError
from ptmz.models import build_model
from ptmz.models.vit import Block
from ptmz.tasks import run_task
from ptmz.train import Recipe
from ptmz.train.loop import build_optimizer

from conftest import landscape_tasks, small_zoo


@pytest.mark.parametrize("width, heads", [(16, 1), (64, 2)])
def test_block_equals_torchs_pre_norm_encoder_layer(width, heads):
    torch.manual_seed(0)
    oracle = nn.TransformerEncoderLayer(
        width, heads, 4 * width, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
    )
    block = Block(width, heads)
    with torch.no_grad():
        block.attn.qkv.weight.copy_(oracle.self_attn.in_proj_weight)
        block.attn.qkv.bias.copy_(oracle.self_attn.in_proj_bias)
        block.attn.proj.load_state_dict(oracle.self_attn.out_proj.state_dict())
        block.mlp[0].load_state_dict(oracle.linear1.state_dict())
        block.mlp[2].load_state_dict(oracle.linear2.state_dict())
        block.norm1.load_state_dict(oracle.norm1.state_dict())
        block.norm2.load_state_dict(oracle.norm2.state_dict())
    x = torch.randn(3, 17, width)
    torch.testing.assert_close(block(x), oracle(x), rtol=1e-5, atol=1e-5)


def test_heads_grow_with_width_and_bad_widths_are_named():
    heads = {w: build_model("vit", w, 3, 10, 32).blocks[0].attn.heads for w in (8, 32, 128)}
    assert heads == {8: 1, 32: 1, 128: 4}
    assert build_model("vit", 8, 1, 10, 8).pos.shape == (1, 4 * 4 + 1, 8)  # 2-pixel patches
    with pytest.raises(ConfigError, match=r"width=48 .*multiple of 32"):
        build_model("vit", 48, 3, 10, 32)


def test_digits_vit_zoo_trains_takes_the_landscape_tasks_and_plots(tmp_path, config):
    zoo = small_zoo(tmp_path, "digits_vit", "width=8", "batch_size=64", "seed=0,1", "epochs=2")
    runs = sorted(p for p in zoo.iterdir() if p.name.startswith("w8_bs64"))
    assert len(runs) == 2
    landscape_tasks(config, zoo, runs=2, grid_points=1)
    hessian = json.loads(next(runs[0].glob("landscape/hessian_epoch_0002.json")).read_text())
    assert hessian["train"]["eigenvalues"][0] > 0
    curve = json.loads(next(zoo.glob("landscape/**/curve_epoch_0002.json")).read_text())
    assert curve["applicable"] and len(curve["pairs"]) == 1
    assert run_task(config("task=plot", f"population={zoo}"))["files"]
    for task in ("average_epochs", "ensemble"):  # no alignment needed
        assert run_task(config(f"task={task}", f"population={zoo}", "progress=false"))["computed"]
    with pytest.raises(PtmzError, match=r"alignment: ViT applies .* derived only"):
        run_task(config("task=average_seeds", f"population={zoo}"))
    finetune = ("task=finetune", f"population={zoo}", "task.epochs=1", "progress=false")
    assert run_task(config(*finetune, "task.alphas=[0,1]"))["computed"] == 2
    with pytest.raises(ConfigError, match=r"task.target='mnist' .*1-channel images of 8x8"):
        run_task(config(*finetune, "task.target=mnist"))  # 28x28: the ViT has 8x8 positions


def test_warmup_cosine_schedule_follows_its_formula():
    recipe = Recipe(optimizer="adamw", weight_decay=0.05, schedule="warmup_cosine")
    param = nn.Parameter(torch.zeros(1))
    optimizer, schedule = build_optimizer([param], recipe, lr=1e-3, epochs=4, steps_per_epoch=50)
    lrs = []
    for _ in range(200):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    warm = 10  # 5% of 200 steps
    expected = [1e-3 * (s + 1) / warm for s in range(warm)] + [
        1e-3 * 0.5 * (1 + math.cos(math.pi * (s - warm) / (200 - warm))) for s in range(warm, 200)
    ]
    assert lrs == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert max(lrs) == pytest.approx(1e-3) and lrs[-1] < 1e-6
