"""The names of the columns that say which run, grid point and epoch a row is about: shared by
the population, the results table and the exported dataset's reader, which imports neither."""

GRID_KEYS = ("width", "batch_size", "lr", "data_fraction", "beta", "seed")
IDENTITY = ("run", "grid_point", "format", "state", "dataset", "model", *GRID_KEYS, "epoch")
