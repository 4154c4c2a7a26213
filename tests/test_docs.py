"""The docs: docs/bad-input.md names tests that exist, and every block marked runnable in the README and the docs
runs (at a tiny size)."""
import re
import shlex
from pathlib import Path

import pytest
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.fast
def test_bad_input_list_matches_the_tests():
    rows = [line for line in (ROOT / "docs" / "bad-input.md").read_text().splitlines()
            if line.startswith("| ") and line.split("|")[1].strip().isdigit()]
    assert len(rows) >= 25
    for row in rows:
        reference = row.rstrip(" |").rsplit("|", 1)[1].strip()
        file, _, name = reference.partition("::")
        assert name in (ROOT / file).read_text(), f"{reference} is not in the tests"


# -- runnable blocks: a fence right after `<!-- test -->` (or `<!-- test: tiny -->`, or
# `<!-- test: NAME = EXPR; ... -->`) in the README or a docs page is run here at a tiny size ---------------
MARKER = re.compile(r"<!-- test(?::\s*(?P<how>.*?))?\s*-->\n```(?P<lang>\w+)\n(?P<body>.*?)\n```", re.S)
# `tiny` shrinks every `continual run` to a few steps on a few images (and one seed where there are seeds)
TINY_RUN = ["train.steps=2", "train.warmup=1", "data.train_images=8", "data.val_images=4"]


def runnable_blocks():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    return [pytest.param(page, m["lang"], m["how"] or "", m["body"], id=f"{page.relative_to(ROOT)}#{n}")
            for page in pages for n, m in enumerate(MARKER.finditer(page.read_text()))]


def test_the_quickstart_is_marked_runnable():
    langs = {lang for page, lang, _, _ in (p.values for p in runnable_blocks()) if page.name == "README.md"}
    assert langs == {"bash", "python"}


def _commands(body: str) -> list[list[str]]:
    lines = body.replace("\\\n", " ").splitlines()
    return [shlex.split(line, comments=True) for line in lines if line.strip() and not line.startswith("#")]


def _tiny(args: list[str]) -> list[str]:
    if args[0] not in ("run", "fewshot"):
        return args
    config = OmegaConf.load(args[1])
    return args + TINY_RUN + (["seeds=[0]"] if config.get("seeds") else [])


@pytest.mark.parametrize("page,lang,how,body", runnable_blocks())
def test_runnable_block(page, lang, how, body, tmp_path, monkeypatch, world_cache):
    from continual.cli import main

    monkeypatch.setenv("CONTINUAL_CACHE", str(world_cache))
    monkeypatch.chdir(tmp_path)  # what a block writes (runs/...) lands here; it reads the repository's files
    for shared in ("configs", "examples"):
        (tmp_path / shared).symlink_to(ROOT / shared)
    if lang == "bash":
        for command in _commands(body):
            program = command[0].rsplit("/", 1)[-1]
            assert program == "continual", f"{page.name}: only continual commands run here, got {command}"
            args = _tiny(command[1:]) if how == "tiny" else command[1:]
            assert main(args) == 0, f"{page.name}: {' '.join(command)}"
        return
    assert lang == "python", f"{page.name}: a runnable block in {lang}"
    for assignment in filter(None, (part.strip() for part in how.split(";"))):
        name = assignment.split("=", 1)[0].strip()
        body, count = re.subn(rf"^{name} = .*$", assignment, body, flags=re.M)
        assert count == 1, f"{page.name}: the marker sets {name!r}, which the block does not assign once"
    exec(compile(body, f"{page.name} (runnable block)", "exec"), {"__name__": "__docs__"})
