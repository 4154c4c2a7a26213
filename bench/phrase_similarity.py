"""Cosine similarities of phrase pairs by each host's frozen text side: what policy `route`'s
``route_threshold`` compares. Same class in new words should score above different classes.

    .venv/bin/python bench/phrase_similarity.py                                  # the shipped hosts
    .venv/bin/python bench/phrase_similarity.py --checkpoint FOLDER --pair "car,automobile"
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import continual  # noqa: E402,F401  (torchvision shim)

# (pair, same class?): new wordings of one class, then neighbouring classes
PAIRS = [("fish", "fishes", True), ("airplane", "aeroplane", True), ("fish", "jellyfish", False), ("fish", "crab", False), ("red circle", "blue square", False),
         ("fish", "kite", False)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", action="append",
                        help="host(s); default builtin:tiny-base, builtin:tiny-clip, builtin:tiny-vilt")
    parser.add_argument("--pair", action="append", default=[], metavar="A,B", help="a pair to add (same class)")
    args = parser.parse_args()
    import transformers

    from continual.hosts.base import build_host

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    pairs = PAIRS + [(*p.split(",", 1), True) for p in args.pair]
    hosts = args.checkpoint or ["builtin:tiny-base", "builtin:tiny-clip", "builtin:tiny-vilt"]
    print(f"{'pair':<26}{'same':>6}" + "".join(f"{h.split(':')[-1]:>20}" for h in hosts))
    columns = []
    for source in hosts:
        host = build_host(source)
        with torch.no_grad():
            a = torch.nn.functional.normalize(host.phrase_embeddings([p[0] for p in pairs]).float(), dim=-1)
            b = torch.nn.functional.normalize(host.phrase_embeddings([p[1] for p in pairs]).float(), dim=-1)
        columns.append((a * b).sum(-1).tolist())
    for i, (x, y, same) in enumerate(pairs):
        print(f"{x + ' ~ ' + y:<26}{'yes' if same else 'no':>6}" + "".join(f"{c[i]:>20.2f}" for c in columns))


if __name__ == "__main__":
    main()
