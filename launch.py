"""The one entry point: `python launch.py [task=NAME] [key=value ...]`, `-m` for sweeps."""

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from ptmz.errors import PtmzError
from ptmz.tasks import run_task


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig):
    try:
        return run_task(cfg)
    except PtmzError as error:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # the sweeper runs the other jobs, then lists every failure
        print(f"ptmz: error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
