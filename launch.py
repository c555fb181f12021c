"""The one entry point: `python launch.py [task=NAME] [key=value ...]`, `-m` for sweeps."""

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from hydra_plugins.ptmz_sweeper import job_ended
from ptmz.errors import PtmzError
from ptmz.tasks import run_task

CONF = Path(__file__).parent / "conf"


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig):
    sweep = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        return run_task(cfg)
    except PtmzError as error:
        if sweep:
            raise  # the sweeper runs the other jobs, then lists every failure
        print(f"ptmz: error: {error}", file=sys.stderr)
        sys.exit(2)
    finally:
        if sweep:
            job_ended(HydraConfig.get().job.num)


def check_out_dir(arguments: list[str]) -> None:
    """Refuse an out_dir this user cannot write before Hydra writes its logs there (Hydra's
    own failure is a traceback): the last `out_dir=` on the command line, else the default."""
    from ptmz.train.run import check_writable

    named = [a.split("=", 1)[1] for a in arguments if a.lstrip("+").startswith("out_dir=")]
    out_dir = named[-1] if named else OmegaConf.load(CONF / "config.yaml").out_dir
    if "," in out_dir or "$" in out_dir:  # a sweep over folders, or an interpolation: Hydra's
        return
    try:
        check_writable(out_dir)
    except PtmzError as error:
        print(f"ptmz: error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    check_out_dir(sys.argv[1:])
    main()
