"""The results table, phase classification and figures: constructed phases are classified as
constructed, collect gathers every result file (and the published result.json keys), plot
draws what exists and says what does not."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from ptmz.analysis import Cut, PhaseThresholds, classify_phases, results_table
from ptmz.analysis.figures import Axes2D, phase_diagram
from ptmz.errors import ConfigError, PtmzError
from ptmz.tasks import run_task
from ptmz.zoo.population import Population

from conftest import launch

FAST_CKA = ["task.samples=256", "task.batch_size=128"]
FAST_INTERPOLATE = ["task.points=3", "task.bn_samples=256", "task.eval_samples=256"]

# (width, batch size) -> train loss, Hessian trace, mc of the train error, CKA; constructed so
# that the default thresholds (log midpoints of loss and Hessian, CKA midpoint) give the phase
CONSTRUCTED = {
    "I": ((2, 256), 2.0, 1000.0, -0.20, 0.20),
    "II": ((2, 16), 1.5, 800.0, 0.20, 0.40),
    "III": ((8, 256), 0.01, 10.0, -0.20, 0.50),
    "IV-A": ((8, 64), 0.01, 10.0, 0.000, 0.30),
    "IV-B": ((8, 16), 0.005, 5.0, 0.005, 0.95),
}


def synthetic_table(extra: dict | None = None) -> pd.DataFrame:
    """Two seeds per grid point; per-run metrics differ between the seeds around the
    constructed value (geometric mean for loss and Hessian), grid-point metrics do not."""
    rows = []
    points = {**CONSTRUCTED, **(extra or {})}
    for name, ((width, batch_size), loss, trace, mc, cka) in points.items():
        for seed, spread in ((0, 0.8), (1, 1.25)):
            rows.append(
                {
                    "run": f"{name}_s{seed}",
                    "grid_point": f"w{width}_bs{batch_size}",
                    "width": width,
                    "batch_size": batch_size,
                    "lr": 0.1,
                    "data_fraction": 1.0,
                    "seed": seed,
                    "epoch": 10,
                    "train_loss": loss * spread,
                    "hessian.train.trace": trace * spread,
                    "curve.mean.mc_train_error": mc,
                    "cka.mean.logits": cka,
                }
            )
    return pd.DataFrame(rows)


def phases_of(table: pd.DataFrame, thresholds: PhaseThresholds | None = None) -> dict:
    grid = classify_phases(table, thresholds or PhaseThresholds()).grid
    return dict(zip(grid["grid_point"], grid["phase"], strict=True))


def test_constructed_phases_are_classified_as_constructed():
    table = synthetic_table()
    expected = {f"w{w}_bs{b}": phase for phase, ((w, b), *_) in CONSTRUCTED.items()}
    assert phases_of(table) == expected
    applied = classify_phases(table).thresholds
    # the default cuts: geometric midpoints of the seed means' ranges, arithmetic for CKA
    assert applied["loss"].value == pytest.approx(np.sqrt(0.005 * 2.0 * (0.8 + 1.25) ** 2 / 4))
    assert applied["cka"].value == pytest.approx((0.20 + 0.95) / 2)


def test_the_hessian_at_the_published_budget_serves_the_phases_too():
    """task=hessian_published writes its own columns; the phases read them where the table
    has no task=hessian ones."""
    published = {"hessian.train.trace": "hessian_published.train.trace"}
    table = synthetic_table().rename(columns=published)
    assert phases_of(table) == phases_of(synthetic_table())
    assert classify_phases(table).thresholds["hessian"].column == "hessian_published.train.trace"


def test_changed_thresholds_change_the_phases():
    table = synthetic_table()
    # a tighter tolerance: the IV-B point's mc of +0.005 is now positive (not in the table)
    strict = phases_of(table, PhaseThresholds(mc_tolerance=0.001))
    assert strict["w8_bs16"] is None and strict["w8_bs64"] == "IV-A"
    # an absolute CKA threshold below the IV-A point's CKA: both phase IV points are IV-B
    low_cka = phases_of(table, PhaseThresholds(cka=Cut(value=0.25)))
    assert low_cka["w8_bs64"] == "IV-B" and low_cka["w8_bs16"] == "IV-B"
    # every loss below an absolute 10: the high-loss phases lose their label
    no_high = phases_of(table, PhaseThresholds(loss=Cut(value=10.0)))
    assert no_high["w2_bs256"] is None and no_high["w2_bs16"] is None
    assert no_high["w8_bs256"] == "III"


def test_high_loss_means_the_training_data_is_not_fit():
    """Where the table has a train error, "high loss" is an absolute cut on it (5% of the
    training set misclassified), not a split of the population's range: a zoo whose models
    all fit has no high-loss grid point, however its train losses spread."""
    table = synthetic_table()
    high = table["train_loss"] > 1  # the phase I and II points
    table["train_error"] = np.where(high, 0.30, 0.01)
    expected = phases_of(synthetic_table())
    assert phases_of(table) == expected
    applied = classify_phases(table).thresholds["loss"]
    assert (applied.column, applied.value) == ("train_error", 0.05)

    table["train_error"] = np.where(high, 0.04, 0.0)  # every model fits
    all_fit = phases_of(table)
    assert all_fit["w2_bs256"] is None and all_fit["w2_bs16"] is None  # large Hessian, low loss
    assert {all_fit[p] for p in ("w8_bs256", "w8_bs64", "w8_bs16")} == {"III", "IV-A", "IV-B"}
    # the range rule on the train loss, on request: the old split comes back
    by_loss = phases_of(table, PhaseThresholds(fit_metric=()))
    assert by_loss == expected


def test_missing_or_contradicting_metrics_give_no_phase():
    extra = {
        "no mc": ((4, 16), 0.01, 10.0, np.nan, 0.9),
        "loss high, Hessian small": ((4, 64), 2.0, 5.0, -0.2, 0.9),
    }
    grid = classify_phases(synthetic_table(extra)).grid.set_index("grid_point")
    assert grid.loc["w4_bs16", "phase"] is None and "no mc" in grid.loc["w4_bs16", "reason"]
    assert grid.loc["w4_bs64", "phase"] is None
    assert "Hessian small" in grid.loc["w4_bs64", "reason"]
    assert grid.loc["w2_bs256", "phase"] == "I"  # the others are unaffected
    # no CKA at all: phase IV cannot be split, the other phases stand
    no_cka = classify_phases(synthetic_table().drop(columns="cka.mean.logits")).grid
    labels = dict(zip(no_cka["grid_point"], no_cka["phase"], strict=True))
    assert labels["w8_bs16"] is None and labels["w8_bs64"] is None and labels["w8_bs256"] == "III"


def test_a_population_in_one_regime_is_not_split():
    table = synthetic_table()
    table["train_loss"] = np.where(table["train_loss"] > 1, 0.02, 0.01)  # within a factor 2
    result = classify_phases(table)
    assert result.thresholds["loss"].value is None
    assert "min_spread" in result.thresholds["loss"].note
    assert result.grid["phase"].isna().all()
    # an absolute threshold still classifies it
    assert phases_of(table, PhaseThresholds(loss=Cut(value=1.0)))["w8_bs256"] == "III"


def test_cuts_are_made_on_finite_values_and_every_seed():
    diverged = {"diverged": ((4, 512), np.inf, 1000.0, -0.2, 0.1)}
    table = synthetic_table(diverged)
    applied = classify_phases(table).thresholds
    assert applied["loss"].value == classify_phases(synthetic_table()).thresholds["loss"].value
    assert phases_of(table)["w4_bs512"] == "I"  # an infinite loss is high
    # one seed without a Hessian: no mean of the other seed, no phase
    table = synthetic_table()
    table.loc[table["run"] == "I_s1", "hessian.train.trace"] = np.nan
    grid = classify_phases(table).grid.set_index("grid_point")
    assert np.isnan(grid.loc["w2_bs256", "hessian.train.trace"])
    assert grid.loc["w2_bs256", "phase"] is None and "no Hessian" in grid.loc["w2_bs256", "reason"]
    assert grid.loc["w2_bs16", "phase"] == "II"


def test_traces_at_or_below_zero_are_below_the_cut_and_counted():
    table = synthetic_table()
    flat = table["hessian.train.trace"] < 100
    table.loc[flat, "hessian.train.trace"] -= 20  # Hutchinson estimates of flat minima: < 0
    result = classify_phases(table)
    assert result.thresholds["hessian"].value is None  # 800..1250 alone: one regime
    assert "3 values <= 0 left out of the log range" in result.thresholds["hessian"].note
    split = classify_phases(table, PhaseThresholds(hessian=Cut(value=100.0)))
    assert dict(zip(split.grid["grid_point"], split.grid["phase"], strict=True)) == phases_of(
        synthetic_table()
    )


@pytest.mark.parametrize(
    ("thresholds", "match"),
    [
        ({"loss": 0.5}, r"task.thresholds.loss=0.5 .*task.thresholds.loss.value=0.5"),
        ({"mc_tolerance": "abc"}, r"task.thresholds.mc_tolerance='abc' .*a number >= 0"),
        ({"mc_tolerance": None}, r"task.thresholds.mc_tolerance=None"),
        ({"loss": {"fraction": "half"}}, r"task.thresholds.loss.fraction='half' .*\[0, 1\]"),
        ({"loss": {"value": "high"}}, r"task.thresholds.loss.value='high' .*a number or null"),
        ({"cka": {"log": "yes"}}, r"task.thresholds.cka.log='yes' .*true or false"),
        ({"hessian_metric": []}, r"task.thresholds.hessian_metric=\(\) .*a column name"),
    ],
)
def test_bad_thresholds_are_named(thresholds, match):
    with pytest.raises(ConfigError, match=match):
        PhaseThresholds.from_config(thresholds)


def test_thresholds_come_from_the_command_line(config):
    cfg = config("task=plot", "task.thresholds.mc_tolerance=0.001", "task.thresholds.cka.value=0.3")
    thresholds = PhaseThresholds.from_config(cfg.task.thresholds)
    assert thresholds.mc_tolerance == 0.001 and thresholds.cka.value == 0.3
    defaults = PhaseThresholds.from_config(config("task=collect").task.thresholds)
    assert defaults == PhaseThresholds()  # conf/phases/default.yaml matches the dataclass
    with pytest.raises(ConfigError, match=r"task.thresholds.loss.fraction=2"):
        PhaseThresholds.from_config({"loss": {"fraction": 2}})
    with pytest.raises(ConfigError, match=r"task.thresholds.hesian"):
        PhaseThresholds.from_config({"hesian": {"value": 1}})


@pytest.fixture
def digits(digits_population, tmp_path):
    return shutil.copytree(digits_population, tmp_path / "zoo")


def write_result(path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"inputs": {"epoch": 3}, "seconds": 1.5, **result}))


def test_collect_gives_one_row_per_run_and_epoch_with_every_result(config, digits):
    run_task(config("task=cka", f"population={digits}", *FAST_CKA))
    run_task(config("task=interpolate", f"population={digits}", *FAST_INTERPOLATE))
    runs = sorted(p for p in digits.iterdir() if p.is_dir() and p.name != "landscape")
    hessian = {"eigenvalues": [7.0, 3.0], "trace": 40.0, "trace_probes": 8, "density": None}
    write_result(runs[0] / "landscape/hessian_epoch_0003.json", {"train": hessian})
    (pair,) = [d for d in (digits / "landscape").iterdir() if d.name.startswith("w4_bs32")]
    write_result(pair / "future_epoch_0003.json", {"applicable": True, "x": {"gain": 0.25}})

    result = launch("task=collect", f"population={digits}")
    assert result.returncode == 0, result.stderr
    parquet, csv = digits / "results.parquet", digits / "results.csv"
    assert f"wrote {parquet}" in result.stdout and f"wrote {csv}" in result.stdout
    table = pd.read_parquet(parquet)
    assert len(table) == 3 * 4  # 3 runs x epochs 0..3
    assert table.groupby("run")["epoch"].apply(list).map(lambda e: e == [0, 1, 2, 3]).all()
    for column in (
        "width",
        "batch_size",
        "seed",
        "train_loss",
        "test_acc",
        "generalization_gap",
        "cka.mean.logits",
        "interpolate.mean.barrier_train_loss",
        "hessian.train.top_eigenvalue",
        "future.x.gain",
        "phase",
        "config.recipe.augment.rotation",
    ):
        assert column in table.columns, column
    for left_out in ("hessian.train.density", "cka.seconds", "cka.inputs.epoch", "cka.pairs"):
        assert not any(c.startswith(left_out) for c in table.columns)
    gap = table["train_acc"] - table["test_acc"]
    assert np.allclose(table["generalization_gap"], gap)
    final = table[table["epoch"] == 3].set_index("run")
    pair_runs = final.index[final["batch_size"] == 32]
    single = final.index[final["batch_size"] == 64]
    assert final.loc[pair_runs, "cka.mean.logits"].nunique() == 1  # broadcast to both seeds
    assert 0 < final.loc[pair_runs[0], "cka.mean.logits"] <= 1
    assert final.loc[single, "cka.mean.logits"].isna().all()  # single seed: not applicable
    assert final.loc[pair_runs, "future.x.gain"].tolist() == [0.25, 0.25]
    assert final.loc[runs[0].name, "hessian.train.top_eigenvalue"] == 7.0
    assert final["hessian.train.top_eigenvalue"].notna().sum() == 1  # that run only
    assert table.loc[table["epoch"] < 3, "cka.mean.logits"].isna().all()
    # the files hold the table results_table returns, and CSV reads back the same numbers
    expected = results_table(digits)
    pd.testing.assert_frame_equal(table, expected, check_dtype=False)
    back = pd.read_csv(csv)
    assert list(back.columns) == list(table.columns)
    numeric = table.select_dtypes("number").columns
    pd.testing.assert_frame_equal(back[numeric], table[numeric], check_dtype=False)


def published_with_landscape_keys(published_population, tmp_path):
    """The published population with landscape values of the published zoo on the last
    result.json line, and ray.tune's bookkeeping on every line."""
    path = shutil.copytree(published_population, tmp_path / "published")
    # mc of the train error in percent, as the published curve code records it; CKA; log trace
    values = {32: (-20.0, 0.9, 2.0), 64: (5.0, 0.8, 5.0)}
    for trial in sorted(path.iterdir()):
        batch_size = json.loads((trial / "params.json").read_text())["training::batchsize"]
        lines = [json.loads(line) for line in (trial / "result.json").read_text().splitlines()]
        for k, line in enumerate(lines):
            line.update(training_iteration=k, timestamp=1716466355 + k, done=False)
            line.update(date="2024-05-21_13-14-23", config={"seed": 0})
        mc, cka, log_trace = values[batch_size]
        lines[-1].update(
            curve_mc_train_error=mc,
            representation_similarity=cka,
            log_hessian_trace_train=log_trace,
            wiseft_acc_test_delta=0.01,
        )
        (trial / "result.json").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_collect_reads_the_landscape_keys_of_published_result_lines(
    config, published_population, tmp_path
):
    path = published_with_landscape_keys(published_population, tmp_path)
    run_task(config("task=collect", f"population={path}"))
    table = pd.read_parquet(path / "results.parquet")
    assert len(table) == 12 and set(table["format"]) == {"published"}
    final = table[table["epoch"] == 3]
    # percent read as fractions, like ptmz's own errors, so mc_tolerance means the same
    assert sorted(final["curve_mc_train_error"]) == pytest.approx([-0.2, -0.2, 0.05])
    assert sorted(final["log_hessian_trace_train"]) == [2.0, 2.0, 5.0]
    assert final["wiseft_acc_test_delta"].tolist() == [0.01] * 3
    assert table.loc[table["epoch"] < 3, "representation_similarity"].isna().all()
    for bookkeeping in ("training_iteration", "timestamp", "done", "date", "config"):
        assert bookkeeping not in table.columns
    # the classification reads the published columns; the log trace is cut as it is (and the
    # train loss, not the fit, decides "high loss" here: every loss is below 100)
    thresholds = PhaseThresholds(fit_metric=(), loss=Cut(value=100.0), hessian=Cut(value=3.0))
    result = classify_phases(table, thresholds)
    assert result.thresholds["hessian"].column == "log_hessian_trace_train"
    assert result.thresholds["mc"].column == "curve_mc_train_error"
    assert result.thresholds["cka"].column == "representation_similarity"
    final_phases = result.grid[result.grid["epoch"] == 3].set_index("batch_size")["phase"]
    assert final_phases[32] == "III"  # low loss, log trace 2 < 3, mc < 0
    assert final_phases[64] is None  # log trace 5: a large Hessian with a low loss

    drawn = run_task(config("task=plot", f"population={path}"))
    assert drawn["drawn"][3][:3] == ["train_loss", "test_acc", "generalization_gap"]
    for column in ("log_hessian_trace_train", "curve_mc_train_error", "representation_similarity"):
        assert column in drawn["drawn"][3]
    assert (path / "phase_diagram_epoch_0003.png").read_bytes()[:4] == b"\x89PNG"


def test_plot_draws_what_exists_and_notes_what_does_not(config, digits):
    for epoch in (2, 3):
        run_task(config("task=cka", f"population={digits}", f"epoch={epoch}", *FAST_CKA))
    out = run_task(config("task=plot", f"population={digits}", "epoch=all"))
    png, pdf = digits / "phase_diagram_epoch_0003.png", digits / "phase_diagram_epoch_0003.pdf"
    assert png.read_bytes()[:4] == b"\x89PNG" and pdf.read_bytes()[:4] == b"%PDF"
    assert (digits / "phase_evolution.png").read_bytes()[:4] == b"\x89PNG"
    assert (digits / "phase_evolution.pdf").exists()
    assert {str(png), str(pdf)} <= set(out["files"])
    assert "cka.mean.logits" in out["drawn"][3] and "train_loss" in out["drawn"][3]
    omitted = " ".join(out["omitted"][3])
    assert "hessian.train.trace" in omitted and "curve.mean.mc_train_error" in omitted
    assert not any("hessian" in c for c in out["drawn"][3])

    # the heatmaps: actual batch sizes and widths as ticks, which axis is which; the single
    # seed grid point (batch size 64) has its own cell, its CKA cell is empty
    table = results_table(digits)
    fig, drawn, notes = phase_diagram(table, 3, ["train_loss", "cka.mean.logits", "nothing"])
    loss_axes, cka_axes = (
        next(a for a in fig.axes if c in a.get_title().split("\n")[-1]) for c in drawn
    )
    assert [t.get_text() for t in loss_axes.get_yticklabels()] == ["32", "64"]
    assert [t.get_text() for t in loss_axes.get_xticklabels()] == ["4"]
    phase_axes = next(a for a in fig.axes if a.get_title().startswith("phase"))
    assert [t.get_text() for t in phase_axes.get_yticklabels()] == ["32", "64"]
    assert "temperature" in phase_axes.get_ylabel() and "batch size" in phase_axes.get_ylabel()
    assert "load" in cka_axes.get_xlabel() and "width" in cka_axes.get_xlabel()
    assert notes == ["nothing: not in the table"]
    loss_cells = loss_axes.images[0].get_array()
    cka_cells = cka_axes.images[0].get_array()
    assert not np.ma.is_masked(loss_cells[1, 0]) and np.ma.is_masked(cka_cells[1, 0])
    texts = " ".join(t.get_text() for t in fig.texts + [t for s in fig.subfigs for t in s.texts])
    assert "high train loss (no fit) above (train_error) 0.05" in texts and "mc ~ 0 within" in texts
    assert "< 0 a barrier" in texts  # mc's sign convention is on the figure
    # readable titles over the column's name, colour bars that say what they show, and a
    # colour key for the phases
    assert loss_axes.get_title().startswith("train loss\ntrain_loss")
    loss_bar = next(a for a in fig.axes if a.get_ylabel().startswith("mean loss"))
    assert "nats" in loss_bar.get_ylabel()
    key = [t.get_text() for t in phase_axes.get_legend().get_texts()]
    assert key[-1] == "? not told" and set(key[:-1]) <= {"I", "II", "III", "IV-A", "IV-B"}


def test_plot_defaults_to_the_latest_epoch_whose_phases_can_be_told(config, digits):
    runs = sorted(p for p in digits.iterdir() if p.is_dir() and p.name != "landscape")
    for run in runs:
        write_result(run / "landscape/hessian_epoch_0002.json", {"train": {"trace": 40.0}})
    points = Population(digits).grid_points()
    pair = digits / "landscape" / next(n for n, seeds in points.items() if len(seeds) == 2)
    write_result(pair / "curve_epoch_0002.json", {"mean": {"mc_train_error": -0.1}})
    write_result(pair / "cka_epoch_0003.json", {"mean": {"logits": 0.9}})  # later, CKA alone
    out = run_task(config("task=plot", f"population={digits}"))
    assert list(out["drawn"]) == [2]
    assert (digits / "phase_diagram_epoch_0002.png").exists()


def test_the_table_keeps_flags_and_drops_infinities(config, published_population, tmp_path):
    path = published_with_landscape_keys(published_population, tmp_path)
    trial = sorted(path.iterdir())[0]
    lines = (trial / "result.json").read_text().splitlines()
    lines[1] = json.dumps({**json.loads(lines[1]), "train_loss": float("inf")})
    (trial / "result.json").write_text("\n".join(lines) + "\n")
    write_result(trial / "landscape/hessian_epoch_0003.json", {"train": {"eigen_converged": False}})
    table = results_table(path).set_index(["run", "epoch"])
    assert np.isnan(table.loc[(trial.name, 1), "train_loss"])
    assert table.loc[(trial.name, 3), "hessian.train.eigen_converged"] == 0.0
    for file in path.rglob("result.json"):
        file.unlink()
    for file in path.rglob("landscape/*.json"):
        file.unlink()
    with pytest.raises(PtmzError, match="no run has training records"):
        results_table(path)


def test_a_diverged_seed_is_in_the_table_and_empties_its_grid_point(digits):
    pair, (alone,) = (runs for runs in Population(digits).grid_points().values())
    diverged = pair[1].path
    for run, epoch in ((diverged, 2), (alone.path, 1)):  # a non-finite loss in that epoch
        lines = (run / "metrics.jsonl").read_text().splitlines()
        records = [
            *map(json.loads, lines[:epoch]),
            {**json.loads(lines[epoch]), "train_loss": None},
        ]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        (run / "status.json").write_text(f'{{"state": "diverged", "epoch": {epoch}, "epochs": 3}}')
    population = Population(digits)
    assert [r.path for r in population.diverged] == [diverged, alone.path]
    assert diverged not in [r.path for r in population.runs]  # the tasks measure done runs

    table = results_table(population)
    rows = table[table["run"] == diverged.name]
    assert rows["epoch"].tolist() == [0, 1, 2] and set(rows["state"]) == {"diverged"}
    assert set(table.loc[table["run"] == pair[0].name, "state"]) == {"done"}
    grid = classify_phases(table).grid.set_index(["grid_point", "epoch"])
    point = pair[0].grid_point
    assert grid.loc[(point, 3), "seeds"] == 2 and grid.loc[(point, 3), "diverged"] == 1
    assert np.isnan(grid.loc[(point, 3), "loss"])  # not the surviving seed's loss alone
    assert "1 of 2 seeds diverged" in grid.loc[(point, 3), "reason"]
    both = table[(table["grid_point"] == point) & (table["epoch"] == 1)]["train_error"]
    assert grid.loc[(point, 1), "loss"] == pytest.approx(both.mean()) and len(both) == 2
    assert grid.loc[(point, 1), "diverged"] == 0  # not yet
    # every seed diverged: the grid point keeps its later rows, empty, and says why
    assert grid.loc[(alone.grid_point, 0), "diverged"] == 0
    assert grid.loc[(alone.grid_point, 3), "diverged"] == 1
    assert "1 of 1 seeds diverged" in grid.loc[(alone.grid_point, 3), "reason"]


def test_tables_built_by_hand_are_classified():
    """Tables a user assembles: repeated index labels, no run column, no seed column either."""
    expected = phases_of(synthetic_table())
    repeated = synthetic_table().set_axis([0] * len(synthetic_table()))
    assert phases_of(repeated) == expected
    assert phases_of(synthetic_table().drop(columns="run")) == expected
    assert phases_of(synthetic_table().drop(columns=["run", "seed"])) == expected


def test_cells_must_be_single_grid_points():
    table = synthetic_table()
    other = table.assign(lr=0.01, grid_point=table["grid_point"] + "_lr0.01")
    both = pd.concat([table, other], ignore_index=True)
    with pytest.raises(PtmzError, match="differ in lr"):
        phase_diagram(both, 10, ["train_loss"])
    with pytest.raises(ConfigError, match="task.temperature='width'"):
        Axes2D(temperature="width")
