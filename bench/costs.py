"""Cost table of every PEFT method on a host: FLOPs, parameters, latency, training step time, memory.

    .venv/bin/python bench/costs.py --host tiny                 # markdown table
    .venv/bin/python bench/costs.py --host tiny --json          # JSON list of rows
    .venv/bin/python bench/costs.py --host t-size --image-size 800 --reps 5
    .venv/bin/python bench/costs.py --host tiny --stack-scaling  # SDPT stacks of 1..13 modules
    .venv/bin/python bench/costs.py --host clip-b32 --reps 3     # a ViT-B/32-sized dual encoder at 224 px
    .venv/bin/python bench/costs.py --host tiny-vilt             # the tiny ViLT (APT, deep prompt, ...)
    .venv/bin/python bench/costs.py --host vilt-b32 --flops-only # a ViLT-B/32-sized host at 384 px

Columns as in the SDPT paper's cost table: inference GFLOPs per image (counted
by torch.utils.flop_counter: matmuls, convolutions, attention; the deformable
attention's grid_sample is not counted), trainable parameters and their
fraction of the host, plus ratios measured here: inference latency against the
plain host, training step time and peak training memory against full
fine-tuning. Repetitions are interleaved (every method, then every method
again, ...), each method's latency alternates with the plain host's, and the
figures are medians of per-repetition ratios. The plain host is the module
switched off (its hooks pass values through; a disabled peft LoRA layer
calls the base layer). CUDA is used when present, and absolute times are
reported too. CPU memory is the bytes a training step holds at its peak:
weights, the activations autograd saved, gradients and AdamW state.

The dual encoder (``--host clip-b32``: CLIP ViT-B/32's configuration with random
weights, the MiniLM tokenizer for its context slots) classifies the bench batch
over 10 class sentences, which it encodes once per batch; its GFLOPs are the
batch's divided by its size. A method's training step includes its own
objective (DPT's auxiliary and general-knowledge terms).

The ViLT hosts (``--host tiny-vilt``, the shipped one at 64 px; ``--host
vilt-b32``: ViLT-B/32's configuration, 768 wide, 12 layers, 384 px, with random
weights and a 3129-answer head like VQAv2's) answer one question per image
that fills the 40 text positions, scored over 10 answers: 1 + 144 + 40 tokens
per image at 384 px, the APT paper's setting.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

import continual  # noqa: E402,F401  (torchvision shim)
from continual.hosts.base import Batch  # noqa: E402
from continual.hosts.dual_encoder import DualEncoderHost  # noqa: E402
from continual.hosts.grounding_dino import GroundingDinoHost  # noqa: E402
from continual.hosts.vilt import ViltHost  # noqa: E402
from continual.loop import autocast as precision_autocast  # noqa: E402
from prompts import Stack, build_module, parameter_counts  # noqa: E402

ROWS = [  # (method, variant, config)
    ("sdpt", "k=10 sync", {"k": 10}),
    ("sdpt", "k=10 official", {"k": 10, "text_prompt_mask": "official"}),
    ("sdpt", "k=120 sync", {"k": 120}),
    ("sdpt", "k=120 official", {"k": 120, "text_prompt_mask": "official"}),
    ("adapter", "", {}),
    ("vpt", "", {}),
    ("lora", "", {}),
    ("bitfit", "", {}),
    ("coop", "", {}),
    ("dpt", "", {}),
    ("linear_probe", "", {}),
    ("full_ft", "", {}),
]
DUAL_ENCODER_ROWS = [
    ("coop", "16 ctx", {"tokens": 16}),
    ("vpt", "10 tokens", {"tokens": 10}),
    ("dpt", "", {}),
    ("dpt", "no CAVPT", {"class_prompts": 0}),
    ("linear_probe", "", {}),
    ("full_ft", "", {}),
]
VILT_ROWS = [
    ("apt", "m=200", {"prompts": 200}),
    ("deep_prompt", "m'=200", {"tokens": 200}),
    ("deep_prompt", "m'=200 keys-values", {"tokens": 200, "keys_values_only": True}),
    ("apt", "m=50", {"prompts": 50}),  # configs/apt*.yaml's size on the tiny ViLT
    ("deep_prompt", "m'=50 keys-values", {"tokens": 50, "keys_values_only": True}),
    ("adapter", "", {}),
    ("lora", "", {}),
    ("bitfit", "", {}),
    ("linear_probe", "", {}),
    ("full_ft", "", {}),
]
TEMPLATE = "a photo of a {}."
# 40 tokens once truncated (ViLT's text length): the question every bench image is asked
LONG_QUESTION = "is there a " + " and a ".join(["red circle", "blue star", "green square"] * 4) + "?"
# The prompt: COCO's 80 categories for the T-sized host (the paper's setting; the text length sets what
# k extra text-side tokens cost), the base world's 12 phrases for the tiny host (max_text_len 64).
COCO_NAMES = [n.replace("_", " ") for n in (
    "person bicycle car motorcycle airplane bus train truck boat traffic_light fire_hydrant stop_sign parking_meter "
    "bench bird cat dog horse sheep cow elephant bear zebra giraffe backpack umbrella handbag tie suitcase frisbee "
    "skis snowboard sports_ball kite baseball_bat baseball_glove skateboard surfboard tennis_racket bottle "
    "wine_glass cup fork knife spoon bowl banana apple sandwich orange broccoli carrot hot_dog pizza donut cake "
    "chair couch potted_plant bed dining_table toilet tv laptop mouse remote keyboard cell_phone microwave oven "
    "toaster sink refrigerator book clock vase scissors teddy_bear hair_drier toothbrush").split()]
BASE_NAMES = [f"{colour} {shape}" for colour in ("red", "blue")
              for shape in ("circle", "square", "triangle", "star", "hexagon", "cross")]
PHRASES: list[str] = []  # set in main() for the host
BENCH_TASK = SimpleNamespace(phrases=PHRASES)  # what a module sizes task-dependent parts to (DPT's auxiliary heads)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def inputs(host, batch: int, device: torch.device, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randn(batch, 3, host.image_size, host.image_size, generator=generator).to(device)
    if host.kind == "vilt":
        return pixels, [{"answer_ids": torch.randint(0, len(PHRASES), (1,), generator=generator),
                         "answer_scores": torch.ones(1)} for _ in range(batch)]
    if host.kind == "dual-encoder":
        return pixels, [{"label": torch.randint(0, len(PHRASES), (), generator=generator)} for _ in range(batch)]
    targets = []
    for _ in range(batch):
        n = 3
        centres = torch.rand(n, 2, generator=generator) * 0.6 + 0.2
        sizes = torch.rand(n, 2, generator=generator) * 0.2 + 0.1
        targets.append({"class_labels": torch.randint(0, len(PHRASES), (n,), generator=generator),
                        "boxes": torch.cat([centres, sizes], 1)})
    return pixels, targets


PRECISION = "auto"  # of every forward here (--precision; continual.loop.autocast: auto is bf16 on CUDA)


def autocast(device: torch.device):
    return precision_autocast(device, PRECISION)


def bench_batch(host, pixels, targets=None) -> Batch:
    return Batch(host.task_kinds[0], pixels, PHRASES, TEMPLATE, targets,
                 [LONG_QUESTION] * len(pixels) if host.kind == "vilt" else None)


def forward(host, pixels):
    """What inference runs: the grounding model on the prompt, the dual encoder's class logits, ViLT's answers."""
    if host.kind == "grounding-dino":
        return host.raw_outputs(pixels, host.prompts(PHRASES)[0])
    return host.logits(bench_batch(host, pixels))


def training_loss(host, module, pixels, targets):
    """The loss a training step minimises: the host's task loss through the module's own objective."""
    loss, _ = host.loss(bench_batch(host, pixels, targets))
    return module.objective(loss, 0.0)


@torch.no_grad()
def gflops(host, pixels) -> float:
    """Per image: one image through the grounding model or ViLT; the dual encoder's batch (text encoded
    once) / its size."""
    images = pixels if host.kind == "dual-encoder" else pixels[:1]
    with FlopCounterMode(display=False) as counter, autocast(pixels.device):
        forward(host, images)
    return counter.get_total_flops() / 1e9 / images.shape[0]


@torch.no_grad()
def forward_seconds(host, pixels) -> float:
    sync(pixels.device)
    start = time.perf_counter()
    with autocast(pixels.device):
        forward(host, pixels)
    sync(pixels.device)
    return time.perf_counter() - start


def train_step(host, module, optimizer, pixels, targets) -> float:
    sync(pixels.device)
    start = time.perf_counter()
    with autocast(pixels.device):
        loss = training_loss(host, module, pixels, targets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    sync(pixels.device)
    return time.perf_counter() - start


def peak_train_bytes(host, module, params, optimizer, pixels, targets) -> int:
    """Peak memory of one training step: CUDA's allocator peak, or on CPU weights + saved activations + grads + AdamW."""
    device = pixels.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        train_step(host, module, optimizer, pixels, targets)
        return torch.cuda.max_memory_allocated(device)
    saved: dict[int, int] = {}

    def pack(t):
        if isinstance(t, torch.Tensor) and t.device.type == "cpu":
            storage = t.untyped_storage()
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = training_loss(host, module, pixels, targets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    weights = {p.data_ptr(): p.numel() * p.element_size() for p in [*host.parameters(), *params]}
    state = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values()
                if isinstance(t, torch.Tensor))
    grads = sum(p.numel() * p.element_size() for p in params)
    activations = sum(n for ptr, n in saved.items() if ptr not in weights)
    return sum(weights.values()) + activations + grads + state


def count_only(host, rows, batch: int, device: torch.device, progress) -> list[dict]:
    """FLOPs and parameters alone (no timing): for input sizes too slow to time here."""
    pixels, _ = inputs(host, batch, device)
    host_gflops = gflops(host, pixels)
    out = []
    for method, variant, config in rows:
        progress(f"{method} {variant}")
        torch.manual_seed(0)
        stack = Stack(host)
        module = stack.push(build_module(method, config, task="bench"))
        module.prepare(BENCH_TASK)
        try:
            counts = parameter_counts(host, module)
            flops = gflops(host, pixels)
        finally:
            stack.clear()
        out.append({"method": method, "variant": variant, "gflops": flops, "host_gflops": host_gflops,
                    "flops_ratio": flops / host_gflops, **counts})
    return out


def measure(host, rows, reps: int, batch: int, device: torch.device, progress) -> list[dict]:
    pixels, targets = inputs(host, batch, device)
    host_gflops = gflops(host, pixels)
    samples = {i: {"latency_ratio": [], "latency": [], "host_latency": [], "step": [], "peak": None}
               for i in range(len(rows))}
    static = {}
    for rep in range(reps):
        for i, (method, variant, config) in enumerate(rows):
            progress(f"rep {rep + 1}/{reps}: {method} {variant}")
            torch.manual_seed(0)
            stack = Stack(host)
            module = stack.push(build_module(method, config, task="bench"))
            module.prepare(BENCH_TASK)
            module.to(device)
            try:
                params = stack.train_only(module)
                if i not in static:
                    module_gflops = gflops(host, pixels)
                    static[i] = {"gflops": module_gflops, **parameter_counts(host, module)}
                on, off = [], []
                for _ in range(2):  # alternate module and plain host
                    module.enabled = True
                    on.append(forward_seconds(host, pixels))
                    module.enabled = False
                    off.append(forward_seconds(host, pixels))
                module.enabled = True
                samples[i]["latency_ratio"].append(sum(on) / sum(off))
                samples[i]["latency"].append(statistics.median(on) / batch)
                samples[i]["host_latency"].append(statistics.median(off) / batch)
                optimizer = torch.optim.AdamW(params, lr=1e-6)
                host.train()
                train_step(host, module, optimizer, pixels, targets)  # warm-up: AdamW state, caches
                samples[i]["step"].append(train_step(host, module, optimizer, pixels, targets))
                if samples[i]["peak"] is None:
                    samples[i]["peak"] = peak_train_bytes(host, module, params, optimizer, pixels, targets)
                host.eval()
            finally:
                stack.clear()
    reference = len(rows) - 1 if rows[-1][0] == "full_ft" else None
    out = []
    for i, (method, variant, _) in enumerate(rows):
        s, st = samples[i], static[i]
        row = {"method": method, "variant": variant, "gflops": st["gflops"], "host_gflops": host_gflops,
               "flops_ratio": st["gflops"] / host_gflops, "trainable_params": st["trainable_params"],
               "total_params": st["total_params"], "fraction": st["fraction"],
               "latency_ratio": statistics.median(s["latency_ratio"]),
               "latency_ms": 1000 * statistics.median(s["latency"]),
               "host_latency_ms": 1000 * statistics.median(s["host_latency"]),
               "step_ms": 1000 * statistics.median(s["step"]), "peak_train_mb": s["peak"] / 2 ** 20,
               "step_ratio": None, "memory_ratio": None}
        if reference is not None and i != reference:  # the reference row itself has no ratio
            ref = samples[reference]
            row["step_ratio"] = statistics.median(a / b for a, b in zip(s["step"], ref["step"]))
            row["memory_ratio"] = s["peak"] / ref["peak"]
        out.append(row)
    return out


def stack_scaling(host, counts, reps: int, batch: int, device: torch.device, progress) -> list[dict]:
    """FLOPs and latency of a host carrying n SDPT modules (k=10), under `all` and under `own` (first task)."""
    pixels, _ = inputs(host, batch, device)
    host_gflops = gflops(host, pixels)
    out = []
    for n in counts:
        progress(f"stack of {n}")
        torch.manual_seed(0)
        stack = Stack(host)
        for t in range(n):
            stack.push(build_module("sdpt", {"k": 10}, task=f"task{t}")).to(device)
        try:
            for policy in ("all", "own"):
                stack.use(policy, "task0")
                flops = gflops(host, pixels)
                ratios = []
                for _ in range(reps):
                    with_stack = forward_seconds(host, pixels)
                    with stack.using("own", "no-such-task"):  # every module off: the plain host
                        plain = forward_seconds(host, pixels)
                    ratios.append(with_stack / plain)
                out.append({"modules": n, "policy": policy, "gflops": flops, "flops_ratio": flops / host_gflops,
                            "latency_ratio": statistics.median(ratios)})
        finally:
            stack.clear()
    return out


def markdown(rows: list[dict], meta: dict) -> str:
    head = (f"Host `{meta['host']}` at {meta['image_size']} px, {meta['device']}, batch {meta['batch']}, "
            f"{meta['reps']} interleaved repetitions (medians).\n\n")
    lines = ["| method | GFLOPs | FLOPs ratio | trainable (M) | fraction | latency ratio | step ratio vs full FT "
             "| memory ratio vs full FT | latency ms/img | step ms |",
             "|---|---|---|---|---|---|---|---|---|---|"]

    def f(v, spec):
        return "–" if v is None else format(v, spec)

    for r in rows:
        name = f"{r['method']} {r['variant']}".strip()
        lines.append(f"| {name} | {r['gflops']:.3f} | {r['flops_ratio']:.4f} | {r['trainable_params'] / 1e6:.4f} | "
                     f"{r['fraction']:.4%} | {r['latency_ratio']:.3f} | {f(r['step_ratio'], '.3f')} | "
                     f"{f(r['memory_ratio'], '.3f')} | {r['latency_ms']:.2f} | {r['step_ms']:.1f} |")
    return head + "\n".join(lines) + f"\n\nPlain host: {rows[0]['host_gflops']:.3f} GFLOPs per image.\n"


def clip_b32(image_size: int) -> DualEncoderHost:
    """CLIP ViT-B/32's configuration (vision 768 x 12 layers, 32-px patches; text 512 x 12) with random
    weights; the MiniLM tokenizer, whose [unusedN] tokens are the context slots (ids fit CLIP's vocabulary)."""
    from transformers import AutoTokenizer, CLIPConfig, CLIPModel

    from continual.hosts.base import minilm_path

    torch.manual_seed(0)
    config = CLIPConfig(vision_config={"image_size": image_size, "patch_size": 32})
    return DualEncoderHost(CLIPModel(config).eval(), AutoTokenizer.from_pretrained(minilm_path()), image_size,
                           "random CLIP ViT-B/32")


def vilt_b32(image_size: int) -> ViltHost:
    """ViLT-B/32's configuration (768 x 12 layers, 32-px patches, 40 text positions) with random weights and a
    3129-answer head (VQAv2's vocabulary size); the MiniLM tokenizer (BERT's uncased vocabulary, as ViLT's)."""
    from transformers import AutoTokenizer, ViltConfig, ViltForQuestionAnswering

    from continual.hosts.base import minilm_path

    torch.manual_seed(0)
    answers = [f"answer {i}" for i in range(3129)]
    config = ViltConfig(image_size=image_size, max_position_embeddings=40, num_labels=len(answers),
                        id2label=dict(enumerate(answers)), label2id={a: i for i, a in enumerate(answers)})
    return ViltHost(ViltForQuestionAnswering(config).eval(), AutoTokenizer.from_pretrained(minilm_path()),
                    image_size, "random ViLT-B/32")


def load_bench_host(name: str, args):
    if name == "tiny-vilt":
        host = ViltHost.from_pretrained("builtin:tiny-vilt")
        return host, VILT_ROWS, list(host.model.config.label2id)[:10]
    if name == "vilt-b32":
        host = vilt_b32(args.image_size or 384)
        return host, VILT_ROWS, list(host.model.config.label2id)[:10]
    if name == "clip-b32":
        return clip_b32(args.image_size or 224), DUAL_ENCODER_ROWS, COCO_NAMES[:10]
    source = "builtin:tiny-base" if name == "tiny" else "builtin:t-size"
    host = GroundingDinoHost.from_pretrained(source, image_size=args.image_size if name == "t-size" else None)
    phrases = BASE_NAMES if name == "tiny" else COCO_NAMES
    if len(host.prompts(phrases)) != 1:
        raise SystemExit(f"the benchmark prompt must fit one text window of {host.model.config.max_text_len} tokens")
    return host, ROWS, phrases


def bench_host(name: str, args, device: torch.device) -> tuple[list[dict], str]:
    """Rows and their text (markdown or one line per row) for one host; also written under --out."""
    host, all_rows, PHRASES[:] = load_bench_host(name, args)
    source = host.source
    host.to(device)
    batch = args.batch or (2 if name == "t-size" else 8)
    meta = {"host": source, "image_size": host.image_size, "prompt_phrases": len(PHRASES), "device": str(device),
            "batch": batch, "reps": args.reps, "torch": torch.__version__, "precision": PRECISION}

    def progress(message: str) -> None:
        print(f"[bench {name}] {message}", file=sys.stderr, flush=True)

    if args.stack_scaling:
        rows = stack_scaling(host, [1, 2, 4, 8, 13], args.reps, batch, device, progress)
        text = "\n".join(f"{r['modules']:>3} modules, {r['policy']:<4}: {r['gflops']:.3f} GFLOPs "
                         f"(x{r['flops_ratio']:.4f}), latency x{r['latency_ratio']:.3f}" for r in rows)
    else:
        keep = {m for m in args.only.split(",") if m} | {"full_ft"}
        selected = [r for r in all_rows if not args.only or r[0] in keep]
        if args.flops_only:
            rows = count_only(host, selected, batch, device, progress)
            text = "\n".join(f"{r['method']} {r['variant']}: {r['gflops']:.3f} GFLOPs (x{r['flops_ratio']:.5f}), "
                             f"{r['trainable_params']:,} trainable ({r['fraction']:.4%})" for r in rows)
        else:
            rows = measure(host, selected, args.reps, batch, device, progress)
            text = markdown(rows, meta)
    for row in rows:
        row["host"] = name
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        stem = f"costs-{name}-{host.image_size}" + ("-stack" if args.stack_scaling else
                                                   "-flops" if args.flops_only else "")
        (out / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
        if not (args.stack_scaling or args.flops_only):
            (out / f"{stem}.md").write_text(text)
    return rows, text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", choices=["tiny", "t-size", "both", "clip-b32", "tiny-vilt", "vilt-b32"],
                        default="tiny", help="both: the tiny host, then the T-sized one, in one run; clip-b32: a "
                                             "dual encoder; tiny-vilt, vilt-b32: ViLT hosts")
    parser.add_argument("--image-size", type=int, default=None,
                        help="the T-sized host's input size (default 800; the tiny host runs at its own 128), "
                             "the dual encoder's (default 224) or ViLT-B's (default 384)")
    parser.add_argument("--reps", type=int, default=5, help="interleaved repetitions (medians over them)")
    parser.add_argument("--batch", type=int, default=None, help="batch for latency and steps (tiny 8, t-size 2)")
    parser.add_argument("--device", default="auto", help="auto (cuda when present), cpu or cuda")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                        help="of the forward: auto is bf16 on CUDA, fp32 on the CPU")
    parser.add_argument("--only", default="", help="comma-separated methods to keep (full_ft is always kept)")
    parser.add_argument("--stack-scaling", action="store_true", help="SDPT stacks of 1, 2, 4, 8, 13 modules instead")
    parser.add_argument("--flops-only", action="store_true", help="count FLOPs and parameters, time nothing")
    parser.add_argument("--json", action="store_true", help="print a JSON list of rows (each with its host)")
    parser.add_argument("--out", help="also write costs-HOST-SIZE.json (and .md) into this folder")
    args = parser.parse_args(argv)
    global PRECISION
    PRECISION = args.precision

    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else "cpu" if args.device == "auto" else args.device)
    all_rows, texts = [], []
    for name in (["tiny", "t-size"] if args.host == "both" else [args.host]):
        rows, text = bench_host(name, args, device)
        all_rows += rows
        texts.append(text)
    print(json.dumps(all_rows, indent=2) if args.json else "\n\n".join(texts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
