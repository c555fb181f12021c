"""Seeds trained together (folded into one network, or vmapped) against the same seeds alone."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from ptmz.data import DeviceLoader, load_dataset, stacked_batches
from ptmz.errors import ConfigError, PtmzError
from ptmz.models import build_model
from ptmz.train import Recipe, RunSpec, train_run, train_together
from ptmz.train.loop import build_optimizer, data_generator, model_gradients, train_epoch
from ptmz.train.run import Trainee
from ptmz.train.together import ModelStack, Together
from ptmz.zoo import RunDir

from conftest import launch

SEEDS = (0, 1, 2)
TINY = dict(width=2, batch_size=128, epochs=2, lr=0.02, progress=False)


def specs(out, **change) -> list[RunSpec]:
    return [RunSpec(out_dir=str(out), seed=seed, **{**TINY, **change}) for seed in SEEDS]


def assert_same_runs(alone: list[RunSpec], together: list[RunSpec]) -> None:
    """Same states, records and final weights (BN statistics included) up to float32 rounding,
    which grouped convolutions do in another order and 24 steps amplify (the float64 test above
    is the exact check): within 2% in norm, where a wrong data order, schedule or optimizer
    state is off by O(1)."""
    for a, b in zip(alone, together, strict=True):
        run_a, run_b = RunDir(a.run_dir), RunDir(b.run_dir)
        assert run_a.path.name == run_b.path.name  # the same run directory, under another root
        assert run_a.state == run_b.state == "done"
        assert run_a.checkpoint_epochs == run_b.checkpoint_epochs
        for ra, rb in zip(run_a.records, run_b.records, strict=True):
            for key in ("train_loss", "test_loss", "batch_loss", "lr"):
                if key in ra:
                    assert rb[key] == pytest.approx(ra[key], rel=2e-2), (a.seed, ra["epoch"], key)
        wa, wb = run_a.load_weights(a.epochs), run_b.load_weights(b.epochs)
        assert wa.keys() == wb.keys()
        for name in wa:
            difference = (wb[name].double() - wa[name].double()).norm()
            assert difference <= 2e-2 * wa[name].double().norm() + 1e-6, (a.seed, name)
    first = [RunDir(s.run_dir).load_weights(s.epochs)["fc.weight"] for s in together]
    assert not torch.allclose(first[0], first[1])  # the seeds really are different models


DEVICES = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
# eager everywhere; replayed from CUDA graphs where there is CUDA
STEPS = [("cpu", False)] + ([("cuda", False), ("cuda", True)] if torch.cuda.is_available() else [])


def float64_trainee(data, seed: int, recipe: Recipe, epochs: int, device: str):
    torch.manual_seed(seed)
    model = build_model("resnet18", 2, data.in_channels, data.num_classes).double().to(device)
    model.register_forward_pre_hook(lambda _, args: (args[0].double(),))
    loader = DeviceLoader(
        data.train,
        128,
        data.mean,
        data.std,
        torch.device(device),
        recipe.augment,
        data_generator(seed),
    )
    optimizer, schedule = build_optimizer(model.parameters(), recipe, 0.1, epochs, len(loader))
    return model, loader, optimizer, schedule


@pytest.mark.parametrize("fold", [True, False], ids=["folded", "vmapped"])
@pytest.mark.parametrize(("device", "cuda_graph"), STEPS)
@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_epochs_together_equal_epochs_alone_in_float64(optimizer, device, cuda_graph, fold):
    """In float64 the summation order no longer shows: two epochs of three seeds as one step
    (published recipe, lr 0.1; folded into one network's channels, or vmapped) leave weights,
    BN statistics, optimizer state and schedule where two `train_epoch`s of each seed alone
    leave them, eager or replayed from CUDA graphs (one per batch shape: the digits' 1347
    samples end in a batch of 67)."""
    data = load_dataset("digits", "data", download=False)
    recipe = Recipe(optimizer=optimizer)
    alone = [float64_trainee(data, seed, recipe, 2, device) for seed in SEEDS]
    together = [float64_trainee(data, seed, recipe, 2, device) for seed in SEEDS]
    stack = Together(*zip(*together, strict=True), cuda_graph=cuda_graph, fold=fold)
    assert stack.stack.fold == fold
    for _ in range(2):
        losses_alone = [train_epoch(*trainee) for trainee in alone]
        losses_together = stack.train_epoch()
        assert losses_together == pytest.approx(losses_alone, rel=1e-6)  # summed in float32
    for (model_a, _, opt_a, sched_a), (model_b, _, opt_b, sched_b) in zip(
        alone, together, strict=True
    ):
        state_a, state_b = model_a.state_dict(), model_b.state_dict()
        for name in state_a:
            torch.testing.assert_close(state_b[name], state_a[name], rtol=1e-10, atol=1e-12)
        for p_a, p_b in zip(model_a.parameters(), model_b.parameters(), strict=True):
            assert opt_a.state[p_a].keys() == opt_b.state[p_b].keys()
            for key, value in opt_a.state[p_a].items():
                torch.testing.assert_close(opt_b.state[p_b][key], value, rtol=1e-10, atol=1e-12)
        assert sched_b.state_dict() == sched_a.state_dict()
        assert opt_b.param_groups[0]["lr"] == opt_a.param_groups[0]["lr"]
    assert not torch.allclose(alone[0][0].fc.weight, alone[1][0].fc.weight)


def test_seeds_together_match_seeds_alone(tmp_path):
    alone = specs(tmp_path / "alone")
    together = specs(tmp_path / "together")
    for spec in alone:
        assert train_run(spec) == "done"
    assert train_together(together) == ["done"] * 3
    assert_same_runs(alone, together)


def interrupt_after_epoch(monkeypatch, epoch: int) -> None:
    """Make training stop (as a Ctrl-C would) once any run has committed `epoch`."""
    commit_epoch = Trainee.commit_epoch

    def commit_then_stop(self):
        commit_epoch(self)
        if self.epoch == epoch:
            raise KeyboardInterrupt

    monkeypatch.setattr(Trainee, "commit_epoch", commit_then_stop)


def test_runs_move_between_together_and_alone(tmp_path, monkeypatch):
    """Seed 0 is interrupted alone after epoch 1 and the other two have not started: together
    they catch seed 0 up, then all train as one. And a run started together and interrupted
    resumes alone. Both end where uninterrupted separate training ends."""
    alone = specs(tmp_path / "alone")
    for spec in alone:
        train_run(spec)

    mixed = specs(tmp_path / "mixed")
    with monkeypatch.context() as patch:
        interrupt_after_epoch(patch, 1)
        with pytest.raises(KeyboardInterrupt):
            train_run(mixed[0])
    assert RunDir(mixed[0].run_dir).state == "failed"
    assert train_together(mixed) == ["done"] * 3
    assert_same_runs(alone, mixed)

    split = specs(tmp_path / "split")
    with monkeypatch.context() as patch:
        interrupt_after_epoch(patch, 1)
        with pytest.raises(KeyboardInterrupt):
            train_together(split)
    # stopped after the first seed committed epoch 1: all saved it, two still hold epoch 0
    assert [RunDir(s.run_dir).resume_epochs for s in split] == [[1], [0, 1], [0, 1]]
    for spec in split:
        assert train_run(spec) == "done"
    assert_same_runs(alone, split)


# Trains the three seeds together in a process of its own, which SIGKILLs itself right after
# the write that argv names (the run's seed, a file in its directory, and a text that file
# must then contain), as a node failure at that instant would.
KILLED_AT_A_WRITE = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    import ptmz.io, ptmz.zoo.rundir
    from ptmz.train import RunSpec, train_together

    out, seed, name, text = sys.argv[1], *sys.argv[2:]
    tiny = dict(width=2, batch_size=128, epochs=2, lr=0.02, progress=False)
    specs = [RunSpec(out_dir=out, seed=s, **tiny) for s in (0, 1, 2)]
    target = Path(specs[int(seed)].run_dir) / name if seed else None
    write = ptmz.io.atomic_write

    def write_then_die(path, writer):
        write(path, writer)
        if Path(path) == target and text in Path(path).read_text(errors="replace"):
            os.kill(os.getpid(), signal.SIGKILL)

    ptmz.io.atomic_write = ptmz.zoo.rundir.atomic_write = write_then_die
    print(train_together(specs))
    """
)


def train_together_killed_at(out, seed: str = "", name: str = "", text: str = ""):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    script = [sys.executable, "-c", KILLED_AT_A_WRITE, str(out), seed, name, text]
    return subprocess.run(script, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    ("seed", "name", "text"),
    [
        ("0", "metrics.jsonl", '"epoch": 1'),  # seed 0 saved epoch 1, seeds 1 and 2 not
        ("1", "checkpoints/epoch_0001.safetensors", ""),  # seed 1's weights, not its state
        ("2", "metrics.jsonl", '"epoch": 2'),  # all saved the last epoch, none committed it
        ("0", "status.json", '"done"'),  # seed 0 committed the last epoch, 1 and 2 not
    ],
    ids=["between-seeds", "within-a-seed", "before-commits", "between-commits"],
)
def test_seeds_together_killed_between_their_writes_resume_bitwise(tmp_path, seed, name, text):
    """A kill between the writes of the seeds' checkpoints of one epoch must not split the
    group: resumed, the seeds step on as one network and end bitwise where the same seeds
    trained together without a kill end (weights of every epoch kept, records)."""
    straight = train_together_killed_at(tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr
    killed = train_together_killed_at(tmp_path / "killed", seed, name, text)
    assert killed.returncode == -9, killed.stderr  # it really died at that write
    resumed = train_together_killed_at(tmp_path / "killed")
    assert resumed.returncode == 0, resumed.stderr
    assert "['done', 'done', 'done']" in resumed.stdout
    for spec, again in zip(specs(tmp_path / "straight"), specs(tmp_path / "killed"), strict=True):
        a, b = RunDir(spec.run_dir), RunDir(again.run_dir)
        assert b.state == "done" and b.resume_epoch is None
        assert a.checkpoint_epochs == b.checkpoint_epochs == [0, 1, 2]
        for epoch in a.checkpoint_epochs:
            wa, wb = a.load_weights(epoch), b.load_weights(epoch)
            assert all(torch.equal(wa[k], wb[k]) for k in wa), (spec.seed, epoch)
        timeless = [
            [{k: v for k, v in r.items() if k != "seconds"} for r in run.records] for run in (a, b)
        ]
        assert timeless[0] == timeless[1]


def test_together_and_compile_reject_what_they_cannot_train(tmp_path):
    mixed = specs(tmp_path)[:2] + [RunSpec(out_dir=str(tmp_path), seed=2, **{**TINY, "width": 4})]
    with pytest.raises(ConfigError, match="seeds_together.*differ in their seed only"):
        train_together(mixed)
    twice = [specs(tmp_path)[0]] * 2
    with pytest.raises(ConfigError, match="each seed once"):
        train_together(twice)
    with pytest.raises(ConfigError, match="compile"):
        train_together(specs(tmp_path, compile=True))
    if not torch.cuda.is_available():
        for key in ("compile", "cuda_graph"):
            with pytest.raises(ConfigError, match=f"{key}=True.*it is for CUDA"):
                train_run(RunSpec(out_dir=str(tmp_path), **{key: True}, **TINY))
        assert not (tmp_path / "digits_resnet18").exists()  # refused before any run was made
    with pytest.raises(ConfigError, match="cuda_graph=True.*false with compile=true"):
        RunSpec(compile=True, cuda_graph=True)
    with pytest.raises(ConfigError, match=r"cuda_graph=True.*false for parameters on \['cpu'\]"):
        model_gradients(build_model("resnet18", 2, 1, 10), cuda_graph=True)


def test_launch_trains_packed_seeds_together(tmp_path):
    grid = (f"out_dir={tmp_path}", "width=2", "batch_size=256", "epochs=1", "seed=[0,1]")
    result = launch(*grid, "seeds_together=true")
    assert result.returncode == 0, result.stderr
    assert "training 2 runs together as one vectorised model" in result.stdout + result.stderr
    runs = sorted((tmp_path / "digits_resnet18").iterdir())
    assert [r.name.split("-")[0] for r in runs] == ["w2_bs256_s0", "w2_bs256_s1"]
    assert all(RunDir(r).state == "done" for r in runs)
    twice = launch(*grid[:-1], "seed=[1,1]", "seeds_together=true")  # one run, named twice
    assert twice.returncode == 0, twice.stderr
    bad = launch(*grid, "seeds_together=sometimes")
    assert bad.returncode == 2
    assert "seeds_together='sometimes'" in bad.stderr and "true or false" in bad.stderr


def test_a_run_that_cannot_start_fails_alone(tmp_path, monkeypatch):
    """An unreadable checkpoint of one seed marks that run failed; its grid point's other
    seeds still train together, and the error is raised after."""
    runs = specs(tmp_path)
    with monkeypatch.context() as patch:
        interrupt_after_epoch(patch, 1)
        with pytest.raises(KeyboardInterrupt):
            train_run(runs[0])
    RunDir(runs[0].run_dir).state_path(1).write_bytes(b"not a checkpoint")
    with pytest.raises(PtmzError, match="state_0001.pt: its bytes differ from those written"):
        train_together(runs)
    assert [RunDir(s.run_dir).state for s in runs] == ["failed", "done", "done"]


def test_stacked_batches_are_each_loaders_own_batches():
    """The batches of three seeds, gathered and augmented as one, are exactly the batches each
    seed's loader yields alone, pass after pass, the last smaller batch included; loaders that
    batch differently cannot be stacked."""
    data = load_dataset("digits", "data", download=False)

    def loaders(batch_size: int = 128) -> list[DeviceLoader]:
        cpu = torch.device("cpu")
        return [
            DeviceLoader(
                data.train,
                batch_size,
                data.mean,
                data.std,
                cpu,
                Recipe().augment,
                data_generator(s),
            )
            for s in SEEDS
        ]

    alone, stacked = loaders(), loaders()
    for _ in range(2):
        steps = list(zip(*alone, strict=True))
        together = list(stacked_batches(stacked))
        assert len(together) == len(steps) == 11
        for batches, (x, y) in zip(steps, together, strict=True):
            assert torch.equal(x, torch.stack([x for x, _ in batches]))
            assert torch.equal(y, torch.stack([y for _, y in batches]))
    assert together[-1][0].shape == (len(SEEDS), 1347 - 10 * 128, 1, 8, 8)
    assert not torch.equal(together[0][0][0], together[0][0][1])  # each seed its own batch
    models = [build_model("resnet18", 2, 1, 10) for _ in SEEDS]
    mixed = loaders()[:2] + loaders(batch_size=64)[2:]
    optimizers, schedules = zip(
        *(build_optimizer(m.parameters(), Recipe(), 0.1, 1, 11) for m in models), strict=True
    )
    with pytest.raises(ValueError, match="same batch size, augmentation and normalisation"):
        Together(models, mixed, optimizers, schedules)


def test_only_resnets_fold_and_others_are_vmapped():
    resnets = [build_model("resnet18", 2, 3, 10) for _ in SEEDS]
    vits = [build_model("vit", 8, 3, 10) for _ in SEEDS]
    assert ModelStack(resnets).fold and not ModelStack(vits).fold
    with pytest.raises(ValueError, match="ViT models cannot be folded"):
        ModelStack(vits, fold=True)


F32 = dict(rtol=1e-4, atol=1e-5)  # float32 against float64


@pytest.mark.parametrize("head_bias", [True, False])
def test_folded_fp32_step_equals_float64_models(head_bias):
    """The fp32 kernels a folded step runs (grouped convolutions with 2 channels a group,
    1x1 stride-2 ones among them, per-channel batch norm, the side-by-side head) against
    each model alone in float64: losses, gradients and batch-norm statistics."""
    torch.manual_seed(0)
    models = [build_model("resnet18", 2, 3, 10) for _ in SEEDS]
    if not head_bias:
        for model in models:
            model.fc = torch.nn.Linear(model.fc.in_features, 10, bias=False)
    oracles = [copy.deepcopy(model).double() for model in models]
    x, y = torch.randn(len(SEEDS), 8, 3, 32, 32), torch.randint(0, 10, (len(SEEDS), 8))
    stack = ModelStack(models)
    assert stack.fold
    losses = stack.losses(x, y)
    losses.sum().backward()
    for i, oracle in enumerate(oracles):
        loss = F.cross_entropy(oracle(x[i].double()), y[i])
        loss.backward()
        assert losses[i].item() == pytest.approx(loss.item(), rel=1e-5)
        for name, p in oracle.named_parameters():
            torch.testing.assert_close(stack.params[name].grad[i].double(), p.grad, **F32)
        for name, b in oracle.named_buffers():
            torch.testing.assert_close(stack.buffers[name][i].to(b.dtype), b, **F32)


def test_layers_that_do_not_fold_are_named():
    models = [build_model("resnet18", 2, 3, 10) for _ in SEEDS]
    for model in models:
        model.bn1.momentum = None  # a cumulative average: one count for all models
    assert not ModelStack(models).fold
    with pytest.raises(ValueError, match="momentum folds"):
        ModelStack(models, fold=True)
    models = [build_model("resnet18", 2, 3, 10) for _ in SEEDS]
    for model in models:
        model.bn1 = torch.nn.GroupNorm(1, 2)
    with pytest.raises(ValueError, match="GroupNorm layers do not fold"):
        ModelStack(models, fold=True)
