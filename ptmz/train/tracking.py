"""Experiment trackers: each epoch's record of a run also sent to TensorBoard or Weights &
Biases (`logger=tensorboard|wandb`), besides the run's own `metrics.jsonl`, which stays the
record ptmz reads. A run is tracked under its run id, grouped by its zoo, with its config.

TensorBoard: event files in `<out_dir>/tensorboard/<zoo>/<run id>/` (`tensorboard --logdir
zoos/tensorboard`). W&B: project `ptmz`, group the zoo, run name and id the run id (a resumed
run continues its W&B run); offline unless WANDB_MODE says otherwise, into `<out_dir>/wandb/`
(`wandb sync` uploads it)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Protocol

from ptmz.errors import PtmzError


class Tracker(Protocol):
    def log(self, record: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


def _scalars(record: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in record.items()
        if k != "epoch" and isinstance(v, int | float) and not isinstance(v, bool)
    }


class TensorBoard:
    def __init__(self, out_dir: str, zoo: str, run_id: str, config: dict[str, Any]) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:
            raise _missing("tensorboard") from error
        self.writer = SummaryWriter(log_dir=str(Path(out_dir) / "tensorboard" / zoo / run_id))
        self.writer.add_text("config", f"```\n{json.dumps(config, indent=1, default=str)}\n```")

    def log(self, record: dict[str, Any]) -> None:
        for key, value in _scalars(record).items():
            self.writer.add_scalar(key, value, global_step=record["epoch"])
        self.writer.flush()  # a killed run keeps what it logged

    def close(self) -> None:
        self.writer.close()


class WandB:
    def __init__(self, out_dir: str, zoo: str, run_id: str, config: dict[str, Any]) -> None:
        try:
            import wandb
        except ImportError as error:
            raise _missing("wandb") from error
        folder = Path(out_dir) / "wandb"
        folder.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project="ptmz",
            group=zoo,
            name=run_id,
            id=run_id.replace("_", "-"),
            resume="allow",
            config=config,
            dir=str(folder.parent),
            mode=os.environ.get("WANDB_MODE", "offline"),
            reinit="create_new",  # seeds trained together are several runs of one process
        )

    def log(self, record: dict[str, Any]) -> None:
        self.run.log(_scalars(record), step=record["epoch"])

    def close(self) -> None:
        self.run.finish()


TRACKERS = {"tensorboard": TensorBoard, "wandb": WandB}


def open_tracker(
    logger: str, out_dir: str, zoo: str, run_id: str, config: dict[str, Any]
) -> Tracker | None:
    """The tracker `logger` names for one run; None for `none`."""
    return TRACKERS[logger](out_dir, zoo, run_id, config) if logger in TRACKERS else None


def _missing(package: str) -> PtmzError:
    return PtmzError(f"logger={package} needs the {package} package: pip install -e '.[{package}]'")
