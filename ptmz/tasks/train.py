"""task=train: one training run of the configured zoo grid point."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from ptmz.train import RunSpec, train_run

RUN_KEYS = (
    "width",
    "batch_size",
    "lr",
    "data_fraction",
    "epochs",
    "seed",
    "subset_seed",
    "out_dir",
    "data_root",
    "device",
    "checkpoints",
    "progress",
)


def spec_from_config(cfg: DictConfig) -> RunSpec:
    """The run spec of a composed ptmz config (top-level scalars + model/dataset/recipe groups)."""
    return RunSpec.from_dict(
        dict(
            zoo=cfg.zoo_name,
            dataset=cfg.dataset.name,
            download=cfg.dataset.download,
            model=cfg.model.name,
            recipe=OmegaConf.to_container(cfg.recipe, resolve=True),
            **{
                k: OmegaConf.to_object(cfg[k]) if OmegaConf.is_config(cfg[k]) else cfg[k]
                for k in RUN_KEYS
            },
        )
    )


def train(cfg: DictConfig) -> str:
    return train_run(spec_from_config(cfg))
