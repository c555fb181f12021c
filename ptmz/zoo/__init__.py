"""Run directories and, later, populations of them."""

from ptmz.zoo.rundir import FINISHED, STATES, RunDir

__all__ = ["FINISHED", "STATES", "RunDir"]
