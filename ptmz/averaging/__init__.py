"""Weight averaging, alignment, ensembles, fine-tuning and pruning: the downstream studies."""

from ptmz.averaging.align import (
    activation_matching,
    align,
    apply_permutation,
    permutation_spec,
    weight_matching,
)
from ptmz.averaging.average import average_states, ensemble_metrics
from ptmz.averaging.finetune import finetune, fit_head, wiseft_curve, wiseft_summary
from ptmz.averaging.prune import magnitude_prune, prunable

__all__ = [
    "activation_matching",
    "align",
    "apply_permutation",
    "average_states",
    "ensemble_metrics",
    "finetune",
    "magnitude_prune",
    "prunable",
    "permutation_spec",
    "fit_head",
    "weight_matching",
    "wiseft_curve",
    "wiseft_summary",
]
