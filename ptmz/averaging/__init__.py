"""Weight averaging and ensembles: the downstream studies of a zoo."""

from ptmz.averaging.average import average_states, ensemble_metrics

__all__ = ["average_states", "ensemble_metrics"]
