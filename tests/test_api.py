"""The public Python API (``continual.__all__``) and the examples a researcher starts from."""
import ast
import importlib.util
import json
from pathlib import Path

import pytest
import torch

import continual as cl

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SMOKE = ROOT / "configs" / "smoke.yaml"
CONTRACT = {"build_host", "load_task", "Stack", "build_module", "train", "evaluate", "run", "load_config", "Results",
            "register_method"}


@pytest.fixture(autouse=True)
def cached_worlds(monkeypatch, world_cache):
    monkeypatch.setenv("CONTINUAL_CACHE", str(world_cache))


def example(name: str):
    """An example script as a module (its ``main(argv)`` runs it in this process)."""
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.fast
def test_public_names_resolve_with_docstrings():
    assert CONTRACT <= set(cl.__all__)
    for name in cl.__all__:
        value = getattr(cl, name)
        assert (value.__doc__ or "").strip(), f"continual.{name} has no docstring"
    with pytest.raises(AttributeError, match="no attribute 'trian'"):
        cl.trian


@pytest.mark.fast
def test_examples_import_nothing_private():
    for path in sorted(EXAMPLES.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                top = name.split(".")[0]
                assert top not in ("tasks", "prompts", "evaluation"), f"{path.name} imports {name}"
                assert top != "continual" or name == "continual", f"{path.name} imports {name}"


def test_python_stream_example_equals_the_yaml_run(tmp_path, capsys):
    scripted = example("python_stream").main(["--steps", "4"])
    assert capsys.readouterr().out.splitlines()[1].startswith("matrix [[")
    results = cl.run(SMOKE, [f"run_dir={tmp_path / 'yaml'}"], progress=False)
    assert scripted["zero_shot"] == results.zero_shot
    assert scripted["matrix"] == results.matrix
    assert scripted["derived"] == results.derived
    again = cl.Results.load(tmp_path / "yaml")
    assert again.matrix == results.matrix and again.stream.steps[1]["method"] == "sdpt"
    assert "after aquarium (sdpt)" in again.stream.table()


def test_custom_method_from_user_code_runs_from_a_config(tmp_path, user_registries):
    from continual.cli import main

    assert main(["run", str(EXAMPLES / "custom_method.yaml"), f"run_dir={tmp_path / 'run'}", "train.steps=2"]) == 0
    results = cl.Results.load(tmp_path / "run")
    assert results.stream.methods == ["adapter", "gains"]
    trained = results.stream.steps[1]
    assert trained["trainable_params"] > 0 and trained["final_loss"] is not None
    host = cl.build_host("builtin:tiny-base")
    module = cl.load_module(tmp_path / "run" / trained["folder"], host)
    assert module.method == "gains" and any(p.abs().sum() > 0 for p in module.parameters())  # it trained


@pytest.mark.fast
def test_a_missing_user_module_is_a_config_error(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(SMOKE.read_text() + "imports: [no_such_module_here]\n")
    with pytest.raises(cl.ContinualError, match=r"imports\.0: cannot import 'no_such_module_here'"):
        cl.load_config(config)


@pytest.mark.fast
def test_a_host_registered_from_user_code_is_chosen_by_model_type(tmp_path, user_registries):
    from continual.hosts.base import host_class
    from continual.hosts.grounding_dino import GroundingDinoHost

    @cl.register_host
    class MyHost(GroundingDinoHost):
        """A user's Grounding DINO variant."""
        kind, model_types, builtins = "my-grounding", ("my_grounding_dino",), ()

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "my_grounding_dino"}))
    assert host_class(tmp_path) is MyHost


def test_custom_host_example_registers_siglip_and_runs_a_stream(user_registries, capsys):
    out = example("custom_host").main(["--steps", "2", "--train-images", "10", "--val-images", "5"])
    assert type(out["host"]).__name__ == "SiglipHost" and out["host"].kind == "siglip"
    assert len(out["matrix"]) == 2 and all(0.0 <= v <= 1.0 for row in out["matrix"] for v in row)
    assert "SiglipHost: zero-shot" in capsys.readouterr().out


def test_custom_task_kind_example_registers_multilabel_and_runs_a_stream(user_registries, capsys):
    from tasks.kinds import TASK_KINDS

    out = example("custom_task_kind").main(["--steps", "2", "--train-images", "10", "--val-images", "5"])
    assert [t.kind for t in out["tasks"]] == ["multilabel", "multilabel"] and "multilabel" in TASK_KINDS
    assert out["tasks"][0].record["train_size"] == 10 and out["tasks"][0].metric == "f1"
    assert len(out["matrix"]) == 2 and all(0.0 <= v <= 1.0 for row in out["matrix"] for v in row)
    assert "multilabel F1" in capsys.readouterr().out


def test_an_unknown_task_kind_names_the_nearest(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(SMOKE.read_text().replace('base: {data: "synthetic:base"}',
                                                'base: {data: "synthetic:base", kind: detections}'))
    with pytest.raises(cl.ContinualError, match="tasks.base.kind: must be one of .*did you mean 'detection'"):
        cl.load_config(config)


@pytest.mark.fast
def test_build_host_prints_no_load_report(capfd):
    cl.build_host("builtin:tiny-base")
    out = capfd.readouterr()
    assert "MISSING" not in out.out + out.err and "LOAD REPORT" not in out.out + out.err


def test_avalanche_naive_strategy_with_the_stacking_plugin(tmp_path):
    """Avalanche's own loop, benchmark, EvaluationPlugin and logger; the plugin stacks one module per experience,
    leaves the host and the earlier module bit-identical and saves each in the PEFT layout."""
    from avalanche.evaluation.metrics import accuracy_metrics
    from avalanche.logging import TextLogger
    from avalanche.training import Naive
    from avalanche.training.plugins import EvaluationPlugin
    from avalanche.benchmarks import nc_benchmark

    from prompts.stack import Stack

    crops = example("avalanche_strategy")
    host = cl.build_host("builtin:tiny-clip")
    fingerprint = host.fingerprint()
    tasks = [cl.load_task(f"synthetic:{w}", kind="classification", train_images=12, val_images=12)
             for w in ("base", "aquarium")]
    names = [p for t in tasks for p in t.phrases]
    benchmark = nc_benchmark(crops.crops(host, tasks, "train", 12), crops.crops(host, tasks, "val", 12),
                             n_experiences=2, task_labels=False, fixed_class_order=list(range(len(names))),
                             per_exp_classes={0: len(tasks[0].phrases), 1: len(tasks[1].phrases)})
    model = cl.StackedClassifier(host, names)
    log = tmp_path / "avalanche.log"
    with open(log, "w") as stream:
        evaluator = EvaluationPlugin(accuracy_metrics(experience=True, stream=True), loggers=[TextLogger(stream)])
        plugin = cl.StackingPlugin("adapter", save_to=tmp_path / "modules")
        strategy = Naive(model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-2),
                         criterion=torch.nn.CrossEntropyLoss(), train_mb_size=8, eval_mb_size=32,
                         evaluator=evaluator, plugins=[plugin])
        strategy.train(benchmark.train_stream[0])
        first = Stack(host).frozen_hashes() | {"module": _tensors(model.stack.modules[0])}
        strategy.train(benchmark.train_stream[1])
        metrics = strategy.eval(benchmark.test_stream)
    assert [m.task for m in model.stack.modules] == ["experience-0", "experience-1"]
    assert host.fingerprint() == fingerprint == first["host"]
    assert _tensors(model.stack.modules[0]) == first["module"]  # the earlier module did not move
    assert any(torch.count_nonzero(p) for p in model.stack.modules[1].parameters())  # the new one trained
    stream_accuracy = [v for k, v in metrics.items() if k.startswith("Top1_Acc_Stream/eval_phase/test_stream")]
    assert len(stream_accuracy) == 1 and 0 <= stream_accuracy[0] <= 1 and "Top1_Acc_Exp" in log.read_text()
    assert [p.name for p in plugin.saved] == ["00-adapter", "01-adapter"]
    reloaded = cl.load_module(plugin.saved[1], cl.build_host("builtin:tiny-clip"))
    assert _tensors(reloaded) == _tensors(model.stack.modules[1])


def _tensors(module) -> dict:
    return {k: v.tolist() for k, v in module.module_state().items()}


def test_an_avalanche_experience_is_one_of_our_tasks():
    from avalanche.benchmarks import nc_benchmark

    crops = example("avalanche_strategy")
    host = cl.build_host("builtin:tiny-clip")
    base = cl.load_task("synthetic:base", kind="classification", train_images=12, val_images=12)
    data = crops.crops(host, [base], "train", 12)
    benchmark = nc_benchmark(data, data, n_experiences=2, task_labels=False, seed=0)
    train_exp, test_exp = benchmark.train_stream[1], benchmark.test_stream[1]
    task = cl.task_from_experiences(train_exp, test_exp, base.phrases)
    assert task.phrases == [base.phrases[c] for c in sorted(train_exp.classes_in_this_experience)]
    stack = cl.Stack(host)
    record = cl.train(stack, cl.build_module("coop", task=task), task, cl.TrainConfig(steps=2, batch_size=4))
    assert len(record.losses) == 2 and 0 <= cl.evaluate(stack, task)["accuracy"] <= 1


def test_avalanche_example_runs_at_a_tiny_size(tmp_path, capsys):
    metrics = example("avalanche_strategy").main(["--epochs", "1", "--images", "12", "--log", str(tmp_path / "log")])
    assert any(k.startswith("Top1_Acc_Exp") for k in metrics)
    assert capsys.readouterr().out.splitlines()[-1].startswith("after experience 1: accuracy {")


def test_train_leaves_the_host_as_found_so_route_reads_the_plain_text_side():
    """The host trains in train mode (MiniLM's dropout) and goes back to eval mode after: the phrase embeddings
    policy `route` compares with a threshold are then the same after training as before."""
    host = cl.build_host("builtin:tiny-base")
    task = cl.load_task("synthetic:aquarium", train_images=4, val_images=2)
    stack = cl.Stack(host, route_threshold=0.75)
    before = host.phrase_embeddings(["fish", "small fish"])
    cl.train(stack, cl.build_module("sdpt", task=task), task, cl.TrainConfig(steps=1, batch_size=2, warmup=0))
    assert not any(m.training for m in host.modules())
    with stack.using("route"):
        assert torch.equal(host.phrase_embeddings(["fish", "small fish"]), before)
