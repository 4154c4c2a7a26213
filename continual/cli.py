"""The ``continual`` command line."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from pathlib import Path

import continual  # noqa: F401  (applies the torchvision shim before any import below)
from continual.errors import ContinualError

log = logging.getLogger("continual")
DEFAULT_CHECKPOINT = "builtin:tiny-base"


def _quiet_libraries() -> None:
    """Keep library chatter (load reports, weight-loading bars, eval tables) off the terminal."""
    warnings.filterwarnings("ignore", message="no QP solver found")  # qpsolvers, imported by Avalanche
    # Avalanche's notice about its own constructors' positional arguments
    warnings.filterwarnings("ignore", message=".*strategy constructors that accept named")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("faster_coco_eval").setLevel(logging.WARNING)


def _progress() -> bool:
    from continual.loop import default_progress

    return default_progress()


def _format_metrics(rows: dict[str, dict]) -> str:
    first = next(iter(rows.values()))
    names = [n for n in ("mAP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100") if n in first] \
        or [n for n in first if n not in ("images", "questions")]
    width = max(8, *(len(n) + 2 for n in names))
    header = f"{'task':<24}" + "".join(f"{n:>{width}}" for n in names)
    lines = [header, "-" * len(header)]
    for task, metrics in rows.items():
        lines.append(f"{task:<24}" + "".join(f"{metrics[n]:>{width}.3f}" for n in names))
    return "\n".join(lines)


def cmd_eval(args) -> int:
    from continual.hosts.base import build_host
    from continual.loop import evaluate
    from tasks.task import list_tasks, load_task

    if args.list_tasks:
        print("\n".join(list_tasks()))
        return 0
    if not args.task:
        raise SystemExit("continual eval: --task is required (see --list-tasks)")
    host = build_host(args.checkpoint)
    kind = args.kind or host.task_kinds[0]
    host.check_task_kind(kind)
    results = {}
    for spec in args.task:
        task = load_task(spec, seed=args.seed, kind=kind, template=args.template, strict=args.strict,
                         train_split=None)  # evaluation needs val alone; a train split there is checked too
        for note in task.data_notes():
            log.warning(note)
        host.check_phrases(task.phrases, task.template)
        results[spec] = evaluate(host, task, batch_size=args.batch_size, progress=_progress())
    if args.json:
        print(json.dumps(results[args.task[0]] if len(args.task) == 1 else results, indent=2))
    else:
        print(f"checkpoint: {args.checkpoint}")
        print(_format_metrics(results))
    return 0


def cmd_hosts(args) -> int:
    from continual.hosts.base import HOSTS

    rows = [{"name": name, **cls.describe()} for cls in HOSTS.values() for name in cls.describe_builtins()]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            print(f"{r['name']:<24} {r['kind']:<16} tasks: {', '.join(r['task_kinds'])}; sites: {', '.join(r['site_kinds'])}")
    return 0


def cmd_methods(args) -> int:
    from continual.hosts.base import build_host
    from prompts import METHODS, build_module, parameter_counts

    host = build_host(args.checkpoint)
    rows = []
    for method in sorted(METHODS):
        module = build_module(method)
        if not set(module.required_sites()) <= set(host.site_kinds):
            continue  # needs sites this host lacks (SDPT needs fusion layers)
        module.attach(host)
        rows.append({"method": method, **parameter_counts(host, module), "config": module.config_dict()})
        module.detach()
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"{'method':<14}{'trainable':>12}{'total':>12}{'fraction':>11}  default config")
        for r in rows:
            print(f"{r['method']:<14}{r['trainable_params']:>12,}{r['total_params']:>12,}{r['fraction']:>10.4%}  {r['config']}")
    return 0


def cmd_train(args) -> int:
    """One module on one task: a one-step stream run by the engine."""
    from omegaconf import OmegaConf

    from continual.config import DataConfig, RunConfig, StepConfig, TaskConfig, validate
    from continual.engine import run
    from continual.run_folder import TIMING
    from continual.training import TrainConfig
    from continual.hosts.base import host_class
    from evaluation.report import load_runs
    from tasks.task import default_name

    name = default_name(args.task)
    kind = args.kind or host_class(args.checkpoint).task_kinds[0]
    method_config = OmegaConf.to_container(OmegaConf.from_dotlist(args.set)) if args.set else {}
    cfg = RunConfig(name=f"train-{args.method}-{name}", host=args.checkpoint, data=DataConfig(seed=args.seed),
                    train=TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed),
                    start_from=list(args.on_top), tasks={name: TaskConfig(data=args.task, kind=kind)},
                    stream=[StepConfig(task=name, method=args.method, config=method_config)])
    cfg.run_dir = args.out or f"runs/{cfg.name}"
    validate(cfg, "continual train")
    run_dir = run(cfg, overwrite=True, progress=_progress())
    results = next(iter(load_runs(run_dir).values()))
    timing = json.loads((run_dir / TIMING).read_text())
    module = results["modules"][0]
    summary = {"method": args.method, "task": args.task, "steps": args.steps, "lr": module["train"]["lr"],
               "train_seconds": round(timing["steps"][0]["train_seconds"], 1),
               "before": results["metrics"]["zero_shot"][name], "after": results["metrics"]["rows"][0][name],
               "final_loss": module["final_loss"], "module": str(run_dir / module["folder"]), "run_dir": str(run_dir)}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{args.method} on {args.task}: {args.steps} steps in {summary['train_seconds']:.0f} s, "
              f"lr {summary['lr']:g}")
        print(_format_metrics({"before": summary["before"], "after": summary["after"]}))
        print(f"module saved to {summary['module']}")
    return 0


def _print_run(run_dir: Path) -> None:
    """The summary of a finished run: a stream's matrix and derived metrics, a study's settings (over seeds:
    with their intervals)."""
    from continual.engine import study_name
    from continual.run_folder import REPORT, SUMMARY, RunFolder
    from evaluation.report import compat_rows, load_runs, run_summary, study_summary
    from evaluation.seeds import seeds_report, seeds_summary_text

    folder = RunFolder(run_dir)
    if folder.is_over_seeds:
        summary = folder.read_json(SUMMARY)
        text = seeds_summary_text(summary) if "compat" in summary else seeds_report(summary)
    elif folder.is_stream:
        text = run_summary(next(iter(load_runs(folder.path).values())))
    else:
        text = study_summary(study_name(folder), compat_rows(load_runs(folder.path)))
    print(text.strip())
    print(f"\nreport: {folder / REPORT}")


def cmd_run(args) -> int:
    from continual import distributed
    from continual.config import load_config
    from continual.engine import run

    flags = {"executor": args.executor, "ray_address": args.address}
    cfg = load_config(args.config, [*args.overrides, *(f"{k}={v}" for k, v in flags.items() if v is not None)])
    with distributed.process_group(cfg.device):  # under torchrun: one rank of several
        main_rank = distributed.is_main()
        if not main_rank:  # rank 0 speaks for the job
            log.setLevel(logging.ERROR)
        run_dir = run(cfg, resume=args.resume, overwrite=args.overwrite, progress=_progress() and main_rank)
    if main_rank:
        _print_run(run_dir)
    return 0


def cmd_fewshot(args) -> int:
    from continual.fewshot import load_fewshot_config, run_fewshot

    cfg = load_fewshot_config(args.config, args.overrides)
    from continual.run_folder import FEWSHOT, REPORT
    from evaluation.fewshot import fewshot_summary

    run_dir = run_fewshot(cfg, resume=args.resume, overwrite=args.overwrite, progress=_progress())
    print(fewshot_summary(json.loads((run_dir / FEWSHOT).read_text()), list(cfg.methods), list(cfg.shots)))
    print(f"\nreport: {run_dir / REPORT}")
    return 0


def cmd_report(args) -> int:
    from continual.engine import rebuild_reports

    rebuild_reports(Path(args.run_dir))
    _print_run(Path(args.run_dir))
    return 0


def cmd_compare(args) -> int:
    from evaluation.report import comparison

    print(comparison([Path(p) for p in args.run_dirs]))
    return 0


def cmd_pretrain(args) -> int:
    from omegaconf import OmegaConf

    from continual.config import apply_overrides
    from continual.pretrain import PretrainConfig, pretrain

    base = OmegaConf.structured(PretrainConfig.for_host(args.host, args.recipe))
    cfg = apply_overrides(base, args.overrides, PretrainConfig, "command line")
    record = pretrain(Path(args.out), cfg, start=args.start, only=args.stage, progress=_progress(),
                      resume=args.resume)
    metric = next(iter(record["base_val"]))
    print(f"saved {args.out}: base val {metric} {record['base_val'][metric]:.3f}; zero-shot "
          + ", ".join(f"{w.split(':')[1]} {m[metric]:.3f}" for w, m in record["zero_shot"].items()))
    return 0


def cmd_data(args) -> int:
    from tasks.worlds import WORLDS, WorldSizes, world_folder

    if not args.worlds:
        width = max(map(len, WORLDS))
        for name, world in WORLDS.items():
            print(f"synthetic:{name:<{width}} {len(world.categories):>2} categories  {world.description}")
        return 0
    sizes = WorldSizes(train=args.train, val=args.val)
    for name in args.worlds:
        print(world_folder(name, seed=args.seed, sizes=sizes))
    return 0


def cmd_demo(args) -> int:
    """Evaluate the shipped base checkpoint on the base world and the aquarium world."""
    args.task, args.list_tasks, args.json, args.strict = ["synthetic:base", "synthetic:aquarium"], False, False, False
    return cmd_eval(args)


class ShowDefaults(argparse.HelpFormatter):
    """Each option's help ends with its default, where it has one worth showing."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.option_strings and action.default not in (None, False, [], argparse.SUPPRESS) \
                and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


def build_parser() -> argparse.ArgumentParser:
    from tasks.kinds import TASK_KINDS

    parser = argparse.ArgumentParser(prog="continual", description=__doc__ + " Continual adaptation of frozen VLPs.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    sub = parser.add_subparsers(dest="command", required=True)

    ev = sub.add_parser("eval", help="a checkpoint's metrics on tasks (COCO mAP, top-1 accuracy)")
    ev.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT,
                    help="builtin:tiny-base, builtin:tiny-clip, builtin:tiny-vilt, a save_pretrained folder or a HF id "
                         "")
    ev.add_argument("--task", action="append", help="synthetic:WORLD, coco:FOLDER or a folder; repeatable")
    ev.add_argument("--kind", choices=list(TASK_KINDS),
                    help="task kind (default: the host's first: detection for Grounding DINO, classification for "
                         "a dual encoder, vqa for ViLT)")
    ev.add_argument("--template", default="a photo of a {}.", help="class sentence for classification ({} = class)")
    ev.add_argument("--list-tasks", action="store_true", help="list the built-in tasks and exit")
    ev.add_argument("--json", action="store_true", help="print JSON (one object for one task)")
    ev.add_argument("--batch-size", type=int, default=16, help="images per evaluation batch")
    ev.add_argument("--seed", type=int, default=0, help="seed of the synthetic worlds")
    ev.add_argument("--strict", action="store_true",
                    help="refuse a COCO file with any bad annotation (default: skip such annotations with a warning)")
    ev.set_defaults(func=cmd_eval)

    ho = sub.add_parser("hosts", help="the built-in hosts: kind, task kinds, site kinds")
    ho.add_argument("--json", action="store_true", help="print a JSON list")
    ho.set_defaults(func=cmd_hosts)

    me = sub.add_parser("methods", help="the PEFT methods with their parameter costs on a host")
    me.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT, help="the host")
    me.add_argument("--json", action="store_true", help="print a JSON list")
    me.set_defaults(func=cmd_methods)

    tr = sub.add_parser("train", help="train one PEFT module on one task (on top of earlier modules)",
                        description="A one-step stream: evaluate the task, train the module, evaluate again; the "
                                    "run folder (--out) holds the module under modules/ and the usual outputs.")
    tr.add_argument("--method", required=True,
                    help="sdpt, dpt, apt, deep_prompt, adapter, vpt, lora, bitfit, coop, linear_probe, full_ft "
                         "(continual methods --checkpoint CKPT lists those a host takes)")
    tr.add_argument("--task", required=True, help="synthetic:WORLD, coco:FOLDER or a folder")
    tr.add_argument("--kind", choices=list(TASK_KINDS),
                    help="task kind (default: the host's first; classification needs a dual-encoder host, e.g. "
                         "--checkpoint builtin:tiny-clip, vqa a ViLT, e.g. builtin:tiny-vilt)")
    tr.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT, help="the host")
    tr.add_argument("--on-top", action="append", default=[], metavar="MODULE_DIR",
                    help="a saved module to stack below the new one; repeatable, in order")
    tr.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="method config, e.g. --set k=20 --set text_prompt_mask=official")
    tr.add_argument("--steps", type=int, default=300, help="optimizer steps")
    tr.add_argument("--lr", type=float, default=None, help="default: the method's own")
    tr.add_argument("--batch-size", type=int, default=8, help="images per step")
    tr.add_argument("--seed", type=int, default=0, help="train seed (data order, initialisation) and world seed")
    tr.add_argument("--out", help="run folder (default runs/train-METHOD-TASK)")
    tr.add_argument("--json", action="store_true", help="print a JSON summary")
    tr.set_defaults(func=cmd_train)

    ru = sub.add_parser("run", help="run a stream (or a study of streams) from a YAML config",
                        description="Run every step of the config's stream: train each task's new module on top of "
                                    "the stack, evaluate, write results.json, report.md, plots and TensorBoard "
                                    "events to the run folder.")
    ru.add_argument("config", help="YAML config, e.g. configs/compat.yaml")
    ru.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                    help="omegaconf dotlist overrides, e.g. run_dir=runs/x train.steps=50 policy=own")
    ru.add_argument("--resume", action="store_true",
                    help="continue the run in the run folder, or start it if there is none; finished steps must match "
                         "the config, unfinished and appended steps (and settings) may change")
    ru.add_argument("--overwrite", action="store_true", help="delete the run folder's contents and start over")
    ru.add_argument("--executor", choices=["local", "ray"], default=None,
                    help="where the steps compute: this process, or Ray tasks (the config's `executor`, else local)")
    ru.add_argument("--address", default=None, metavar="HOST:PORT",
                    help="executor ray: the Ray cluster to join (the config's `ray_address`, else RAY_ADDRESS, else a "
                         "local Ray started for the run)")
    ru.set_defaults(func=cmd_run)

    fs = sub.add_parser("fewshot", help="the few-shot protocol: methods x shots x seeds x tasks, one table",
                        description="Train every method of the config per (task, shots, seed) on K images per "
                                    "class; report mean top-1 accuracy with 95% intervals over seeds and plot it "
                                    "against shots.")
    fs.add_argument("config", help="YAML config, e.g. configs/fewshot.yaml")
    fs.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. train.steps=200")
    fs.add_argument("--resume", action="store_true",
                    help="continue the grid in the run folder (same config), or start it if there is none")
    fs.add_argument("--overwrite", action="store_true", help="delete the run folder's contents and start over")
    fs.set_defaults(func=cmd_fewshot)

    rp = sub.add_parser("report", help="rebuild report.md and the plots of a run folder from its results.json")
    rp.add_argument("run_dir", help="a finished run folder (a stream, a study or a run over seeds)")
    rp.set_defaults(func=cmd_report)

    co = sub.add_parser("compare", help="one table of derived metrics across run folders")
    co.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="finished run folders")
    co.set_defaults(func=cmd_compare)

    pt = sub.add_parser("pretrain", help="pretrain a tiny host (the shipped checkpoints' recipes)",
                        description="Grounding DINO (builtin:tiny-base): stage `shapes` trains a random tiny host on "
                                    "the base world; stage `scenes` goes on with the same shapes on every world's "
                                    "backgrounds. Dual encoder (builtin:tiny-clip): stage `captions` trains the ViT "
                                    "and both projections contrastively on captioned object crops beside the frozen "
                                    "MiniLM. ViLT (builtin:tiny-vilt): stage `vqa` trains all but MiniLM's word "
                                    "embeddings on questions about the base shapes. pretrain.json beside the "
                                    "checkpoint records every stage.")
    pt.add_argument("--host", choices=["grounding-dino", "dual-encoder", "vilt"], default="grounding-dino",
                    help="which tiny host to pretrain")
    pt.add_argument("--recipe", choices=["shapes", "grounding"], default="shapes",
                    help="Grounding DINO's stages: `shapes` (the shipped tiny-base: the base world's 12 names) or "
                         "`grounding` (30 colour-shape categories named by words drawn at each step, with absent "
                         "ones named too, a third of the steps naming colours only or shapes only; 6 combinations "
                         "held out; not yet a working recipe, see docs/results/grounding-probe.md)")
    pt.add_argument("--out", required=True, help="folder for the checkpoint (replaced when the run ends); each "
                                                 "validation also saves the host to OUT-snapshots/STAGE-STEP")
    pt.add_argument("--from", dest="start", metavar="CHECKPOINT",
                    help="go on from this checkpoint (e.g. builtin:tiny-base) instead of random weights")
    pt.add_argument("--stage", action="append", metavar="NAME", help="run only this stage (repeatable)")
    pt.add_argument("--resume", action="store_true",
                    help="go on from the last validation of an interrupted run with the same command line, on the "
                         "same batches (OUT-snapshots/state.pt); start afresh if there is none")
    pt.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                    help="settings, e.g. stages.scenes.train.steps=500 stages.shapes.train_images=1000 eval_every=0")
    pt.set_defaults(func=cmd_pretrain)

    da = sub.add_parser("data", help="list the synthetic worlds, or write them (COCO layout) and print their folders")
    da.add_argument("worlds", nargs="*", help="world names; none lists them")
    da.add_argument("--train", type=int, default=400, help="training images per world")
    da.add_argument("--val", type=int, default=100, help="validation images per world")
    da.add_argument("--seed", type=int, default=0, help="seed the worlds are drawn from")
    da.set_defaults(func=cmd_data)

    de = sub.add_parser("demo", help="the main job on the embedded default")
    de.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT, help="the host")
    de.add_argument("--batch-size", type=int, default=16, help="images per evaluation batch")
    de.add_argument("--seed", type=int, default=0, help="seed of the synthetic worlds")
    de.set_defaults(func=cmd_demo)
    for choice in sub._choices_actions:  # every subcommand: a description, and its defaults in --help
        command = sub.choices[choice.dest]
        command.description = command.description or choice.help[0].upper() + choice.help[1:] + "."
        command.formatter_class = ShowDefaults
    return parser


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; ``key=value`` overrides may come before or after the flags (``run C --resume k=v``)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)  # first: --help answers without loading torch
    _quiet_libraries()
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and args.func is not cmd_run:
        print(f"error: `continual {args.command}` runs in one process; under torchrun (WORLD_SIZE="
              f"{os.environ['WORLD_SIZE']}) only `continual run` shares its work between processes", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except ContinualError as err:  # bad input or a diverged training: one line; anything else is a bug
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
