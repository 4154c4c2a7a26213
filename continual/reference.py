"""Reference pages generated from the code, so that they cannot drift from it: the YAML keys (from the
config dataclasses and the comments beside their fields) and the command line (from its parsers).

The docs site renders them where a page holds ``<!-- reference: config -->`` or ``<!-- reference: cli -->``
(``tools/docs_hooks.py``).
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import io
import os
import sys
import tokenize
from contextlib import contextmanager


def field_comments(cls) -> dict[str, str]:
    """{field: comment} of a dataclass: the comment after the field's line, else the comment lines above it."""
    source = inspect.getsource(cls)
    comments: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string.lstrip("#").strip()
    lines = source.splitlines()
    found = {}
    for number, line in enumerate(lines, start=1):
        name = line.strip().split(":", 1)[0]
        if not line.startswith("    ") or line.startswith("     ") or name not in {f.name for f in
                                                                                   dataclasses.fields(cls)}:
            continue
        if number in comments:
            found[name] = comments[number]
            continue
        above = []
        while number - 1 - len(above) in comments and lines[number - 2 - len(above)].strip().startswith("#"):
            above.insert(0, comments[number - 1 - len(above)])
        if above:
            found[name] = " ".join(above)
    return found


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "required"
    if dataclasses.is_dataclass(value):
        return "(below)"
    return "required" if value == "???" else f"`{value!r}`" if isinstance(value, str) else f"`{value}`"


def _type(f: dataclasses.Field) -> str:
    return str(f.type).replace("typing.", "")


def dataclass_table(cls, prefix: str = "") -> str:
    """One row per field: the key (with ``prefix``), its type, its default and the comment beside it."""
    comments = field_comments(cls)
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        meaning, default, kind = (text.replace("|", "\\|") for text in (comments.get(f.name, ""), _default(f),
                                                                          _type(f)))
        rows.append(f"| `{prefix}{f.name}` | {kind} | {default} | {meaning} |")
    return "\n".join(rows)


def config_reference() -> str:
    """Every key of a run config, a few-shot config, and each method's ``config:``."""
    from continual.config import DataConfig, Resources, RunConfig, StepConfig, TaskConfig
    from continual.fewshot import FewshotConfig, MethodSpec
    from continual.training import TrainConfig
    from prompts import METHODS

    parts = ["## Run configs (`continual run`)", "Top level:", dataclass_table(RunConfig),
             "`data`:", dataclass_table(DataConfig, "data."),
             "`train` (and a step's `train:` overrides):", dataclass_table(TrainConfig, "train."),
             "Each entry of `tasks` (`tasks.NAME`):", dataclass_table(TaskConfig, "tasks.NAME."),
             "`resources` (and a step's `resources:` overrides; `executor: ray`):",
             dataclass_table(Resources, "resources."),
             "Each step of `stream` or of a setting in `settings`:", dataclass_table(StepConfig),
             "## Few-shot configs (`continual fewshot`)", dataclass_table(FewshotConfig),
             "Each entry of `methods`:", dataclass_table(MethodSpec, "methods.NAME."),
             "## Method configs (a step's `config:`)"]
    for name, method in sorted(METHODS.items()):
        summary = (sys.modules[method.__module__].__doc__ or "").strip().split("\n\n")[0]
        parts += [f"### `{name}`", summary,
                  dataclass_table(method.Config) if dataclasses.fields(method.Config) else "No settings."]
    return "\n\n".join(parts) + "\n"


@contextmanager
def _columns(width: int):
    """argparse wraps help at the terminal's width: fix it so the page is the same on every machine."""
    before = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(width)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("COLUMNS")
        else:
            os.environ["COLUMNS"] = before


def cli_reference() -> str:
    """``continual --help`` and each command's ``--help``."""
    from continual.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    with _columns(100):
        parts = ["## `continual`", f"```text\n{parser.format_help()}```"]
        parts += [f"## `continual {name}`\n\n```text\n{sub.format_help()}```" for name, sub in commands.items()]
    return "\n\n".join(parts) + "\n"


def python_reference() -> str:
    """One mkdocstrings entry per name of the public API (``continual.__all__``), where it is defined."""
    import continual

    return "\n\n".join(f"::: {continual._HOMES[name]}.{name}" for name in continual.__all__) + "\n"
