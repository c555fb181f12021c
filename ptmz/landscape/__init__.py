"""Loss-landscape metrics: Hessian, CKA, curves (mode connectivity), interpolation.

Every metric is a plain function of models and batches; the tasks in `ptmz.tasks` only pick
the populations, data and files.
"""

from ptmz.landscape.cka import linear_cka, mean_pairwise_cka, model_cka
from ptmz.landscape.hessian import HessianResult, HessianSettings, hessian_metrics
from ptmz.landscape.paths import (
    CurveSettings,
    PathData,
    barrier,
    curve_metrics,
    fit_bezier,
    interpolation_metrics,
    mode_connectivity,
)

__all__ = [
    "CurveSettings",
    "HessianResult",
    "HessianSettings",
    "PathData",
    "barrier",
    "curve_metrics",
    "fit_bezier",
    "hessian_metrics",
    "interpolation_metrics",
    "linear_cka",
    "mean_pairwise_cka",
    "mode_connectivity",
    "model_cka",
]
