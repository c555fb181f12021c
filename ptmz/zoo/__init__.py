"""Run directories, and populations of runs (ptmz's own format and the published one)."""

from ptmz.zoo.population import Population, Run
from ptmz.zoo.rundir import FINISHED, STATES, RunDir

__all__ = ["FINISHED", "STATES", "Population", "Run", "RunDir"]
