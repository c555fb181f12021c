"""Zoos over the other axes: learning rate as temperature, data fraction as load."""

from __future__ import annotations

from ptmz.analysis import results_table
from ptmz.analysis.figures import Axes2D, phase_diagram
from ptmz.tasks import run_task
from ptmz.train import RunSpec, train_run

from conftest import launch

COMMON = ("-m", "width=2", "seed=0", "epochs=1")


def test_learning_rate_and_data_fraction_grids(tmp_path, config):
    lr_out, fraction_out = tmp_path / "lr", tmp_path / "fraction"
    swept = launch(*COMMON, f"out_dir={lr_out}", "batch_size=128", "lr=0.05,0.2", "temperature=lr")
    assert swept.returncode == 0, swept.stderr
    swept = launch(
        *COMMON,
        f"out_dir={fraction_out}",
        "batch_size=64",
        "data_fraction=0.5,1.0",
        "load=data_fraction",
    )
    assert swept.returncode == 0, swept.stderr

    lr_zoo, fraction_zoo = lr_out / "digits_resnet18", fraction_out / "digits_resnet18"
    assert sorted(p.name.split("-")[0] for p in lr_zoo.iterdir() if p.is_dir()) == [
        "w2_lr0.05_s0",
        "w2_lr0.2_s0",
    ]
    assert sorted(p.name.split("-")[0] for p in fraction_zoo.iterdir() if p.is_dir()) == [
        "f0.5_bs64_s0",
        "f1_bs64_s0",
    ]
    # the axes name the directory; the hash is the content alone
    plain = RunSpec(width=2, batch_size=64, data_fraction=0.5, epochs=1)
    named = RunSpec(width=2, batch_size=64, data_fraction=0.5, epochs=1, load="data_fraction")
    assert named.run_id.split("-")[1] == plain.run_id.split("-")[1]

    lr_table, fraction_table = results_table(lr_zoo), results_table(fraction_zoo)
    assert sorted(lr_table["lr"].unique()) == [0.05, 0.2]
    assert sorted(fraction_table["data_fraction"].unique()) == [0.5, 1.0]
    assert Axes2D.of(lr_table, None, None) == Axes2D("lr", "width")
    assert Axes2D.of(fraction_table, None, None) == Axes2D("batch_size", "data_fraction")

    fig, _, _ = phase_diagram(lr_table, 1, ["train_loss"], axes=Axes2D("lr", "width"))
    panel = next(a for a in fig.axes if "train_loss," in a.get_title())
    phase = next(a for a in fig.axes if a.get_title().startswith("phase"))
    assert "learning rate" in phase.get_ylabel()
    assert [t.get_text() for t in panel.get_yticklabels()] == ["0.2", "0.05"]  # hottest first
    fig, _, _ = phase_diagram(fraction_table, 1, ["train_loss"], axes=Axes2D(load="data_fraction"))
    panel = next(a for a in fig.axes if "train_loss," in a.get_title())
    assert "fraction" in panel.get_xlabel()
    assert [t.get_text() for t in panel.get_xticklabels()] == ["0.5", "1"]

    out = run_task(config("task=plot", f"population={lr_zoo}"))  # axes inferred by the task
    assert (lr_zoo / "phase_diagram_epoch_0001.png").exists() and out["files"]


def test_a_finished_run_is_found_under_other_axes(tmp_path):
    spec = RunSpec(width=2, batch_size=256, epochs=1, out_dir=str(tmp_path), progress=False)
    assert train_run(spec) == "done"
    renamed = RunSpec.from_dict({**spec.to_dict(), "temperature": "lr"})
    assert renamed.run_id.startswith("w2_lr0.1_s0-")
    assert renamed.run_dir == spec.run_dir  # the content's directory, not a second copy
    assert train_run(renamed) == "done"
    assert len(list((tmp_path / "digits_resnet18").iterdir())) == 1
