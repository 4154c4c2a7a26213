"""Experiment configs: a good one loads; each kind of bad one is refused, naming the key and what was expected."""
from pathlib import Path

import pytest

from continual.config import ConfigError, load_config, step_train_config

pytestmark = pytest.mark.fast  # unit-level: `make test-fast`

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

GOOD = """
name: t
tasks:
  base: {data: "synthetic:base"}
  aquarium: {data: "synthetic:aquarium"}
stream:
  - {task: base, method: adapter}
  - {task: aquarium, method: sdpt, config: {k: 4}, train: {steps: 7}}
"""


def write(tmp_path, text, name="c.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_shipped_configs_load(name, request, monkeypatch):
    """Every shipped config passes the checks its command makes (streams and few-shot grids alike)."""
    from continual.fewshot import load_fewshot_config

    overrides = []
    if "oc.env:ODINW_ROOT" in (CONFIGS / name).read_text():  # real data and a hub host: their stand-ins
        for key, value in request.getfixturevalue("odinw_standin").items():
            monkeypatch.setenv(key, value)
        overrides = ["host=builtin:tiny-base"]
    if "methods:" in (CONFIGS / name).read_text():
        assert load_fewshot_config(CONFIGS / name).methods
    else:
        cfg = load_config(CONFIGS / name, overrides)
        assert all(stream.steps for stream in cfg.streams().values())


def test_good_config_with_overrides(tmp_path):
    cfg = load_config(write(tmp_path, GOOD), ["run_dir=/tmp/x", "train.lr=0.5", "policy=own"])
    assert cfg.run_dir == "/tmp/x" and cfg.train.lr == 0.5 and cfg.policy == "own"
    assert step_train_config(cfg, cfg.stream[1]).steps == 7 and step_train_config(cfg, cfg.stream[0]).steps == 300
    assert load_config(write(tmp_path, GOOD)).run_dir == "runs/t"  # interpolated from the name


BAD = {
    "unknown top-level key": (GOOD + "polcy: all\n", [], "unknown config key 'polcy'; did you mean 'policy'"),
    "unknown nested key": (GOOD + "train: {stpes: 3}\n", [], "'train.stpes'; did you mean 'steps'"),
    "unknown step key": (GOOD.replace("method: adapter}", "methd: adapter}"), [], "'stream.0.methd'"),
    "unknown key on the command line": (GOOD, ["trian.steps=3"], "command line: unknown config key 'trian'"),
    "wrong type": (GOOD + "train: {steps: many}\n", [], "train.steps"),
    "out of range": (GOOD + "train: {batch_size: 0}\n", [], "train.batch_size must be > 0"),
    "negative lr in a step": (GOOD.replace("steps: 7", "lr: -1"), [], "stream.1.train.lr must be > 0"),
    "unknown policy": (GOOD + "policy: some\n", [], "policy must be one of"),
    "unknown policy in policies": (GOOD + "policies: [all, some]\n", [],
                                   "policies must be distinct names from ('all', 'own', 'route'), got ['all', 'some']"),
    "policy and policies": (GOOD + "policy: own\npolicies: [all, route]\n", [], "give either `policy` (one) or `policies`"),
    "seeds twice": (GOOD + "seeds: [0, 0]\n", [], "seeds must be distinct, got [0, 0]"),
    "unknown executor": (GOOD, ["executor=slurm"], "executor must be one of ('local', 'ray'), got 'slurm'"),
    "negative resources": (GOOD, ["resources.num_gpus=-1"], "resources.num_gpus must be >= 0, got -1"),
    "a step's negative resources": (GOOD, ["stream.0.resources.num_cpus=-2"],
                                    "stream.0.resources.num_cpus must be >= 0, got -2"),
    "lr sweep with a factor of 0": (GOOD + "lr_sweep: [0.1, 0]\n", [],
                                    "lr_sweep must be distinct factors > 0 of each last step's learning rate"),
    "route threshold without route": (GOOD + "route_threshold: 0.8\n", [],
                                      "route_threshold is a cosine similarity in [-1, 1] for policy route"),
    "unknown method": (GOOD.replace("method: sdpt", "method: sdtp"), [], "unknown method 'sdtp'; did you mean 'sdpt'"),
    "bad method config": (GOOD.replace("k: 4", "kk: 4"), [], "stream.1.config: sdpt: unknown config key"),
    "unknown task": (GOOD.replace("{task: base", "{task: bsae"), [], "unknown task 'bsae'; did you mean 'base'"),
    "unknown world": (GOOD.replace("synthetic:aquarium", "synthetic:aquarum"), [], "unknown world 'aquarum'"),
    "missing data folder": (GOOD.replace("synthetic:aquarium", "/no/such/folder"), [], "neither synthetic:WORLD"),
    "duplicate task": (GOOD.replace("{task: aquarium", "{task: base"), [], "task 'base' appears twice"),
    "empty stream": (GOOD.split("stream:")[0] + "stream: []\n", [], "stream is empty"),
    "stream and settings": (GOOD + "settings: {a: [{task: base, method: sdpt}]}\n", [], "not both"),
    "missing start module": (GOOD + "start_from: [/no/module]\n", [], "start_from: module folder '/no/module'"),
    "held-out also trained": (GOOD + "held_out: [base]\n", [], "held_out: task 'base' is also trained"),
    "not a mapping": ("- a\n- b\n", [], "a config is a mapping"),
    "invalid yaml": ("a: [1, 2\n", [], "not valid YAML"),
    "bad override syntax": (GOOD, ["novalue"], "command line"),
    "bad method value in a later step": (GOOD, ["stream.1.config.text_prompt_mask=half"],
                                         "stream.1.config: sdpt: text_prompt_mask must be one of 'sync', 'official', "
                                         "got 'half'"),
    "method without its sites on the host": (
        GOOD.replace("name: t", "name: t\nhost: builtin:tiny-clip-init").replace('"synthetic:base"}', '"synthetic:base", kind: classification}').replace('"synthetic:aquarium"}', '"synthetic:aquarium", kind: classification}'),
        [], "stream.1.method: sdpt needs site kind(s) ['fusion'], which a dual-encoder host lacks"),
    "task kind the host does not support": (GOOD, ["host=builtin:tiny-clip-init"],
                                            "stream.0.task: a detection task, but the host is a dual-encoder"),
    "unknown task kind": (GOOD.replace('"synthetic:base"}', '"synthetic:base", kind: captioning}'), [],
                          "tasks.base.kind: must be one of ('detection', 'classification', 'vqa'), got 'captioning'"),
    "val_split on a classification task": (
        GOOD.replace('"synthetic:base"}', '"synthetic:base", kind: classification, val_split: test}'), [],
        "tasks.base.val_split: for detection tasks only"),
    "shots on a detection task": (GOOD.replace('"synthetic:base"}', '"synthetic:base", shots: 4}'), [],
                                  "tasks.base.shots: a positive number of images per class, for classification"),
    "template without a slot": (GOOD.replace('"synthetic:base"}', '"synthetic:base", template: "a photo"}'), [],
                                "tasks.base.template: must contain {}"),
    "unknown host": (GOOD, ["host=builtin:tiny-clipp"], "host: unknown built-in host 'builtin:tiny-clipp'"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_config_is_refused_with_a_clear_message(tmp_path, case):
    text, overrides, expected = BAD[case]
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text), overrides)
    assert expected in str(err.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
