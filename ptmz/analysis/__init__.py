"""Analysis of a measured population: the results table (one row per run and epoch), phase
classification of its grid points, and the phase-diagram figures.

    from ptmz.analysis import results_table, classify_phases
    table = results_table("zoos/digits_resnet18")       # a pandas DataFrame
    phases = classify_phases(table).grid                  # per grid point and epoch
"""

from ptmz.analysis.phases import (
    PHASES,
    Cut,
    PhaseClassification,
    PhaseThresholds,
    Threshold,
    classify_phases,
    grid_point_means,
    phase_column,
)
from ptmz.analysis.table import flatten, results_table

__all__ = [
    "PHASES",
    "PhaseClassification",
    "Cut",
    "PhaseThresholds",
    "Threshold",
    "classify_phases",
    "flatten",
    "grid_point_means",
    "phase_column",
    "results_table",
]
