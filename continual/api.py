"""The entry points of the public API that are more than a re-export: loading a task as a config does,
running a config to its ``Results``."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from continual.config import ConfigError, DataConfig, RunConfig, TaskConfig, load_config, validate
from continual.streams import open_task
from continual.engine import run as run_engine
from continual.results import Results
from tasks.task import default_name


def load_task(data: str, name: str | None = None, *, host=None, kind: str = "detection",
              train_images: int = DataConfig.train_images, val_images: int = DataConfig.val_images,
              image_size: int = DataConfig.image_size, seed: int = DataConfig.seed, strict: bool = False,
              **options):
    """A task as a config's ``tasks`` entry loads it: ``synthetic:WORLD`` (at these sizes, from ``seed``),
    ``coco:FOLDER`` or a dataset folder of ``kind`` (``strict``: refuse a COCO file with any bad annotation).
    ``options``: the other TaskConfig keys (phrases, shots, template, val_split). With ``host``, its phrases
    are checked against the host's text encoder now.

        aquarium = load_task("synthetic:aquarium", train_images=16, val_images=8)
    """
    unknown = sorted(set(options) - {f.name for f in dataclasses.fields(TaskConfig)})
    if unknown:
        raise ConfigError(f"load_task({data!r}): unknown option(s) {unknown}; a task takes "
                          f"{', '.join(f.name for f in dataclasses.fields(TaskConfig) if f.name != 'data')}")
    spec = TaskConfig(data=data, kind=kind, **options)
    sizes = DataConfig(train_images=train_images, val_images=val_images, image_size=image_size, seed=seed,
                       strict=strict)
    name = name or default_name(data)
    return open_task(name, spec, sizes, host)


def run(config: RunConfig | str | Path, overrides=(), *, resume: bool = False, overwrite: bool = False,
        progress: bool | None = None) -> Results:
    """Run a config (a ``RunConfig`` or a YAML file with ``key=value`` overrides) into its run folder and
    return its results; ``resume`` continues the unfinished steps, ``overwrite`` starts over.

        results = run("configs/smoke.yaml", ["run_dir=runs/smoke"], overwrite=True)
    """
    if isinstance(config, RunConfig):
        cfg = config
        validate(cfg, f"config {cfg.name!r}")
    else:
        cfg = load_config(config, list(overrides))
    return Results.load(run_engine(cfg, resume=resume, overwrite=overwrite, progress=progress))
