"""Straight lines and Bezier curves between networks; mc and barrier on constructed arrays."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

from ptmz.data import Augment
from ptmz.io import write_json
from ptmz.landscape.paths import (
    CurveSettings,
    PathData,
    barrier,
    curve_lr_factor,
    evaluate_path,
    fit_bezier,
    mode_connectivity,
)
from ptmz.tasks.population import Workspace
from ptmz.weights import bezier, lerp, recalibrate_bn
from ptmz.zoo.population import Population


@pytest.mark.parametrize(
    "values, mc, interior",
    [
        ([0.1, 0.5, 0.1], -0.4, -0.4),  # a barrier in the middle: negative
        ([0.2, 0.05, 0.1], 0.1, 0.1),  # the curve beats its ends: positive
        ([0.1, 0.1, 0.1, 0.1], 0.0, 0.0),  # flat: connected
        # ends differ and the curve is flat between: the published rule picks an endpoint,
        # |E(0) - m| = 0.1, mc = m - E(0) = 0.1; the interior variant sees the flat middle
        ([0.0, 0.1, 0.2], 0.1, 0.0),
        ([0.3, 0.35, 0.4], 0.05, 0.0),  # the same tie, where rounding used to flip the sign
        ([0.2, 0.15, 0.1], -0.05, 0.0),  # decreasing: t=0 still wins the tie
        ([0.3, 0.1, 0.35, 0.2], 0.15, 0.15),  # m = 0.25; the farthest point is 0.1, not 0.35
    ],
)
def test_mode_connectivity_on_constructed_errors(values, mc, interior):
    assert mode_connectivity(values) == pytest.approx(mc)
    assert mode_connectivity(values, interior=True) == pytest.approx(interior)


def test_barrier_is_the_largest_rise_above_the_chord():
    """Frankle et al. 2020 / Entezari et al. 2022: max_t E(t) - ((1-t) E(0) + t E(1))."""
    assert barrier([0.1, 0.6, 0.3]) == pytest.approx(0.4)  # the chord is at 0.2 at t = 0.5
    assert barrier([1.0, 0.4, 0.3, 0.25, 0.2]) == 0  # descends only: no barrier (not +0.4)
    assert barrier([0.1, 0.2, 0.3]) == pytest.approx(0, abs=1e-15)  # on the chord
    assert barrier([0.2, 0.5, 0.3], ts=[0, 0.9, 1]) == pytest.approx(0.21)  # chord 0.29 at 0.9


def test_barrier_matches_a_float64_reference_on_random_paths():
    rng = np.random.default_rng(0)
    for _ in range(20):
        ts = np.concatenate([[0], np.sort(rng.uniform(size=7)), [1]])
        values = rng.uniform(0, 3, size=9)
        chord = np.interp(ts, [0, 1], [values[0], values[-1]])
        expected = float(np.max(values - chord))
        assert barrier(values.tolist(), ts.tolist()) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    "values", [[0.01, math.nan, math.nan, 0.02], [math.nan, 0.5, 0.02], [0.1, math.inf, 0.1]]
)
def test_a_diverged_path_has_no_mc_and_no_barrier(values, tmp_path):
    """Not the mc of its finite points: a curve whose middle diverged is not connected."""
    assert math.isnan(mode_connectivity(values))
    assert math.isnan(mode_connectivity(values, interior=True))
    assert math.isnan(barrier(values))
    write_json(tmp_path / "r.json", {"mc": mode_connectivity(values), "path": values})
    stored = json.loads((tmp_path / "r.json").read_text())  # valid JSON: null, not NaN
    assert stored["mc"] is None and None in stored["path"]


def test_lr_is_a_function_of_progress_not_compounded():
    assert [curve_lr_factor(p) for p in (0, 0.5, 0.7, 0.9, 0.95)] == pytest.approx(
        [1, 1, 0.505, 0.01, 0.01]
    )


def test_path_points_reproduce_the_endpoints_exactly(digits_population):
    a_run, b_run = Population(digits_population).runs[:2]
    a, b = a_run.state_dict(), b_run.state_dict()
    model = a_run.load_model().eval()
    bend = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in a.items()}
    x = torch.randn(6, 1, 8, 8)
    for point in (bezier(a, bend, b, 0.0), lerp(a, b, 0.0)):
        assert torch.equal(functional_call(model, point, (x,)), model(x))
    b_model = b_run.load_model().eval()
    for point in (bezier(a, bend, b, 1.0), lerp(a, b, 1.0)):
        assert torch.equal(functional_call(model, point, (x,)), b_model(x))


def test_recalibrated_bn_holds_the_exact_batch_statistics():
    torch.manual_seed(0)
    net = nn.Sequential(nn.BatchNorm1d(3))
    data = [torch.randn(n, 3) * 2 + 1 for n in (5, 9, 2)]
    net(torch.randn(4, 3) * 100)  # stale statistics to be replaced
    recalibrate_bn(net.eval(), [(x, None) for x in data])
    everything = torch.cat(data)
    bn = net[0]
    assert torch.allclose(bn.running_mean, everything.mean(0), atol=1e-6)
    sizes = torch.tensor([len(x) for x in data], dtype=torch.float32)[:, None]
    per_batch = torch.stack([x.var(0) for x in data])
    assert torch.allclose(bn.running_var, (sizes * per_batch).sum(0) / sizes.sum(), atol=1e-5)
    assert not net.training and bn.momentum == 0.1


def test_fitting_the_curve_lowers_its_midpoint_loss(digits_population):
    from omegaconf import OmegaConf

    population = Population(digits_population)
    a_run, b_run = population.grid_points()[population.runs[0].grid_point]
    cfg = OmegaConf.create(
        {
            "population": str(digits_population),
            "device": "cpu",
            "data_root": "data",
            "dataset": {"download": False},
        }
    )
    ws = Workspace(cfg)
    train = ws.train_split(a_run)
    data = PathData(
        bn=ws.loader(train, 256), train=ws.loader(train, 512), test=ws.loader(ws.data.test, 512)
    )
    a, b = a_run.state_dict(), b_run.state_dict()
    model = a_run.load_model()
    midpoint = evaluate_path(model, lambda t: lerp(a, b, t), [0.5], data)
    loader = ws.loader(train, 128, augment=Augment(1, False, 10), seed=0)
    bend = fit_bezier(model, a, b, loader, CurveSettings(epochs=4))
    full = {**a, **bend}
    fitted = evaluate_path(model, lambda t: bezier(a, full, b, t), [0.5], data)
    # The straight midpoint of these weak 3-epoch seeds is near chance (loss ~2.5); four curve
    # epochs bring it to ~1.8 on this machine. The margin is wide because CPUs with other
    # kernels train other fixture weights (two epochs gave 0.81 here where 0.8 once held).
    assert fitted["train_loss"][0] < 0.9 * midpoint["train_loss"][0]
