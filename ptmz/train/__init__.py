"""Training one run of a zoo: the validated run spec and the resumable training loop."""

from ptmz.train.loop import evaluate, train_run
from ptmz.train.spec import Recipe, RunSpec

__all__ = ["Recipe", "RunSpec", "evaluate", "train_run"]
