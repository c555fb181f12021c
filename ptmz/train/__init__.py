"""Training the runs of a zoo: the validated run spec, the training step, and the resumable
run loop (one run at a time, or the seeds of a grid point together)."""

from ptmz.objectives import evaluate
from ptmz.train.run import train_run, train_together
from ptmz.train.spec import Recipe, RunSpec

__all__ = ["Recipe", "RunSpec", "evaluate", "train_run", "train_together"]
