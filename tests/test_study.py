"""task=study: from an empty folder to the phase diagram in one command, nothing done twice, and
adaptive refinement adding the points between phases."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from ptmz.analysis.refine import boundary_points, midpoint
from ptmz.zoo.population import Population

from conftest import STUDY_FAST, launch


@pytest.mark.parametrize(
    ("key", "a", "b", "between"),
    [
        ("width", 2, 8, 4),
        ("width", 8, 2, 4),
        ("width", 2, 3, None),  # no whole width strictly between
        ("width", 4, 16, 8),
        ("width", 2, 4, 3),  # sqrt(8) = 2.83, rounded
        ("batch_size", 16, 256, 64),
        ("batch_size", 64, 256, 128),
        ("lr", 0.01, 0.1, 0.032),  # sqrt(0.001) = 0.0316, two significant digits
        ("data_fraction", 0.25, 1.0, 0.5),
        ("beta", 0.0, 10.0, None),  # 0 is not on a log axis
    ],
)
def test_the_point_between_is_the_geometric_midpoint_on_the_axis(key, a, b, between):
    assert midpoint(key, a, b) == between


def test_points_are_added_between_neighbours_of_different_phases():
    # batch size (rows) x width (columns); None: not classified
    grid = {
        (16, 2): "I",
        (16, 8): "I",
        (16, 32): "III",
        (64, 2): "II",
        (64, 8): None,
        (64, 32): "IV-A",
        (256, 2): "II",
        (256, 8): "IV-B",
        (256, 32): "IV-B",
    }
    phases = pd.DataFrame([{"batch_size": t, "width": w, "phase": p} for (t, w), p in grid.items()])
    added = boundary_points(phases, "batch_size", "width")
    expected = [
        {"batch_size": 16, "width": 16},  # I | III along width
        {"batch_size": 32, "width": 2},  # I | II along batch size
        {"batch_size": 128, "width": 32},  # IV-A | IV-B along batch size
        {"batch_size": 256, "width": 4},  # II | IV-B along width
        {"batch_size": 32, "width": 32},  # III | IV-A along batch size
    ]
    key = lambda p: (p["batch_size"], p["width"])  # noqa: E731
    assert sorted(added, key=key) == sorted(expected, key=key)
    # a point already on the grid is not proposed again
    with_mid = pd.concat([phases, pd.DataFrame([{"batch_size": 32, "width": 2, "phase": "I"}])])
    assert {"batch_size": 32, "width": 2} not in boundary_points(with_mid, "batch_size", "width")


def test_a_population_narrowed_to_named_runs(digits_population):
    everything = Population(digits_population)
    names = [run.name for run in everything.runs]
    narrowed = Population(digits_population, only=names[:2])
    assert [run.name for run in narrowed.runs] == names[:2]
    with pytest.raises(Exception, match=r"runs=\['nope'\] is not allowed"):
        Population(digits_population, only=["nope"])


def _results(zoo: Path) -> dict[Path, float]:
    """Every result file of the zoo and when it was written."""
    return {p: p.stat().st_mtime_ns for p in zoo.rglob("landscape/**/*.json")}


def test_a_study_goes_from_nothing_to_the_phase_diagram_and_then_does_nothing(tmp_path):
    grid = ["width=[2]", "batch_size=[16,128]", "epochs=1", f"out_dir={tmp_path}"]
    first = launch("task=study", *grid, *STUDY_FAST, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    zoo = tmp_path / "digits_resnet18"
    assert len(list(zoo.glob("w2_bs*/status.json"))) == 4  # 2 grid points x seeds 0, 1
    results = _results(zoo)
    assert len([p for p in results if p.name.startswith("hessian")]) == 4
    for task in ("curve", "cka"):
        assert len([p for p in results if p.name.startswith(task)]) == 2
    for name in ("results.csv", "phase_diagram_epoch_0001.png", "study_map.png"):
        assert (zoo / name).exists(), name
    record = json.loads((zoo / "study.json").read_text())
    assert record["state"] == "done"
    stages = {s["name"]: (s["done"], s["total"], s["computed"]) for s in record["stages"]}
    assert stages["train"] == (4, 4, 4) and stages["hessian"] == (4, 4, 4)
    assert stages["curve"] == (2, 2, 2) and stages["cka"] == (2, 2, 2)

    again = launch("task=study", *grid, *STUDY_FAST, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "nothing was left to compute" in again.stdout
    assert _results(zoo) == results  # not one file rewritten

    status = launch("task=status", *grid)
    assert "study: done, round 0 of 0, 2 grid points" in status.stdout
    assert "hessian: 4/4 done" in status.stdout


def test_refinement_trains_and_measures_the_point_between_two_phases(tmp_path):
    grid = ["width=[2,8]", "batch_size=[32]", "epochs=1", f"out_dir={tmp_path}"]
    first = launch("task=study", *grid, *STUDY_FAST, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    zoo = tmp_path / "digits_resnet18"
    table = pd.read_csv(zoo / "results.csv")
    cka = table[table["epoch"] == 1].groupby("width")["cka.mean.logits"].mean()
    assert cka[2] != cka[8]
    # thresholds that put every point in phase IV and split IV-A from IV-B between the two
    # widths' CKA: the phases differ along the width axis only
    split = [
        "task.thresholds.fit.value=1.0",
        "task.thresholds.hessian.value=1e30",
        "task.thresholds.mc_tolerance=1e30",
        f"task.thresholds.cka.value={(cka[2] + cka[8]) / 2}",
    ]
    refined = launch("task=study", *grid, *STUDY_FAST, *split, "task.refine=1", timeout=600)
    assert refined.returncode == 0, refined.stderr[-3000:]
    record = json.loads((zoo / "study.json").read_text())
    added = [p for p in record["points"] if p["round"] == 1]
    assert added == [{"batch_size": 32, "width": 4, "round": 1}]
    assert len(list(zoo.glob("w4_bs32_s*/status.json"))) == 2
    assert len(list(zoo.glob("w4_bs32_s*/landscape/hessian_epoch_0001.json"))) == 2
    assert len(list(zoo.glob("landscape/w4_bs32-*/cka_epoch_0001.json"))) == 1
    phases = pd.read_csv(zoo / "results.csv").groupby("width")["phase"].first()
    assert {phases[2], phases[8]} == {"IV-A", "IV-B"}
    assert (zoo / "study_map.png").exists()
