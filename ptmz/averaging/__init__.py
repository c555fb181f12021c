"""Weight averaging, ensembles and pruning: the downstream studies of a zoo."""

from ptmz.averaging.average import average_states, ensemble_metrics
from ptmz.averaging.prune import magnitude_prune

__all__ = ["average_states", "ensemble_metrics", "magnitude_prune"]
