"""DPT's parts on the tiny dual encoder: the zero-shot top-M ranking, the auxiliary loss on the ground-truth
class's prompt only, tokens dropped after each block, the general-knowledge phase, gradients, ablations, and
modules that save, load and stack. (Attach, train, save, load and detach with the host restored bit for bit:
tests/test_methods.py runs that for every method, DPT included.)"""
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from continual.hosts.base import Batch
from continual.hosts.prompts import build_prompts
from prompts import Stack, build_module, load_module, save_module
from prompts.base import MethodError

pytestmark = pytest.mark.fast  # unit-level: `make test-fast`

PHRASES = ["red circle", "blue square", "green triangle", "fish", "yellow star", "one way arrow"]
TEMPLATE = "a photo of a {}."


def _batch(host, labels=None):
    pixels = torch.randn(3, 3, host.image_size, host.image_size, generator=torch.Generator().manual_seed(3))
    targets = [{"label": torch.tensor(label)} for label in labels] if labels is not None else None
    return Batch("classification", pixels, PHRASES, TEMPLATE, targets)


@pytest.fixture
def stack(tiny_clip_host):
    stack = Stack(tiny_clip_host)
    yield stack
    stack.clear()
    tiny_clip_host.requires_grad_(False)


def test_cavpt_takes_each_images_zero_shot_top_m(tiny_clip_host, stack):
    with torch.no_grad():
        expected = tiny_clip_host.logits(_batch(tiny_clip_host)).topk(3, dim=-1).indices
    dpt = stack.push(build_module("dpt", {"class_prompts": 3}, task="t"))
    with torch.no_grad():
        tiny_clip_host.logits(_batch(tiny_clip_host))
    assert torch.equal(dpt._batch["top"], expected)
    # M is capped at the number of classes
    with torch.no_grad():
        tiny_clip_host.logits(Batch("classification", _batch(tiny_clip_host).pixels, PHRASES[:2], TEMPLATE))
    assert dpt._batch["top"].shape == (3, 2)


def test_tokens_join_each_block_and_are_dropped_after_it(tiny_clip_host, stack):
    stack.push(build_module("dpt", {"class_prompts": 4, "visual_tokens": 10}, task="t"))
    blocks = list(tiny_clip_host.sites("image_blocks").values())
    seen, handles = [], []
    for block in blocks:  # registered after DPT's hooks: they see the extended input and the cut output
        handles.append(block.register_forward_pre_hook(lambda m, args: seen.append(("in", args[0].shape[1]))))
        handles.append(block.register_forward_hook(lambda m, args, out: seen.append(("out", out.shape[1]))))
    try:
        with torch.no_grad():
            tiny_clip_host.logits(_batch(tiny_clip_host))
    finally:
        for h in handles:
            h.remove()
    n = 1 + (tiny_clip_host.image_size // 8) ** 2  # [CLS] + patches
    # the zero-shot ranking pass (DPT off) first, then the prompted pass: VPT in blocks 0-2, CAVPT (M = 4) in 3
    plain = [("in", n), ("out", n)] * len(blocks)
    prompted = [("in", n + 10), ("out", n)] * (len(blocks) - 1) + [("in", n + 4), ("out", n)]
    assert seen == plain + prompted


def test_auxiliary_loss_only_on_the_ground_truth_class_prompt(tiny_clip_host, stack):
    with torch.no_grad():
        ranking = tiny_clip_host.logits(_batch(tiny_clip_host)).topk(6, dim=-1).indices
    # image 0: its label is its top class; image 1: its label is outside its top 3; image 2: its 3rd class
    labels = [ranking[0, 0].item(), ranking[1, 5].item(), ranking[2, 2].item()]
    dpt = stack.push(build_module("dpt", {"class_prompts": 3, "general_knowledge": 0.0}, task="t"))
    dpt.prepare(SimpleNamespace(phrases=PHRASES))
    loss, _ = tiny_clip_host.loss(_batch(tiny_clip_host, labels))
    total = dpt.objective(loss, progress=0.0)
    (aux,) = dpt._batch["done"]["aux"]  # one CAVPT block: (B, M, C)
    expected = F.cross_entropy(torch.stack([aux[0, 0], aux[2, 2]]), torch.tensor([labels[0], labels[2]]))
    torch.testing.assert_close(total - loss, 0.3 * expected)
    # no image's label among its top M: no auxiliary term
    outside = [ranking[i, 5].item() for i in range(3)]
    loss, _ = tiny_clip_host.loss(_batch(tiny_clip_host, outside))
    assert torch.equal(dpt.objective(loss, progress=0.0), loss)


def test_general_knowledge_terms_in_the_first_part_of_training_only(tiny_clip_host, stack):
    labels = [0, 3, 5]
    with torch.no_grad():
        zero_text = tiny_clip_host.text_features(PHRASES, TEMPLATE)
        zero_image = tiny_clip_host.image_features(_batch(tiny_clip_host).pixels)
    dpt = stack.push(build_module("dpt", {"alpha": 0.0, "general_knowledge": 0.5}, task="t"))
    loss, _ = tiny_clip_host.loss(_batch(tiny_clip_host, labels))
    prompted_text = F.normalize(dpt._batch["done"]["text"][0], dim=-1)
    prompted_image = F.normalize(dpt._batch["done"]["image"], dim=-1)
    target = torch.tensor(labels)
    expected = (0.1 * loss + F.cross_entropy(tiny_clip_host.scores(zero_image, prompted_text), target)
                + F.cross_entropy(tiny_clip_host.scores(prompted_image, zero_text), target))
    torch.testing.assert_close(dpt.objective(loss, progress=0.49), expected)
    assert torch.equal(dpt.objective(loss, progress=0.5), loss)


def test_gradients_reach_only_dpts_parameters(tiny_clip_host, stack):
    dpt = stack.push(build_module("dpt", task="t"))
    dpt.prepare(SimpleNamespace(phrases=PHRASES))
    params = stack.train_only(dpt)
    tiny_clip_host.zero_grad(set_to_none=True)  # the shared host may hold gradients of other tests
    loss, _ = tiny_clip_host.loss(_batch(tiny_clip_host, [0, 1, 2]))
    dpt.objective(loss, progress=0.0).backward()
    assert all(p.grad is not None for p in params), [n for n, p in dpt.named_parameters() if p.grad is None]
    assert all(p.grad is None for p in tiny_clip_host.parameters())
    assert {n.split(".")[0] for n, _ in dpt.named_parameters()} == {"text_prompts", "visual_prompts", "class_aware",
                                                                   "heads"}


def test_ablations_switch_parts_off(tiny_clip_host, stack):
    no_cavpt = stack.push(build_module("dpt", {"class_prompts": 0}, task="a"))
    assert len(no_cavpt.visual_prompts.prompts) == 4 and not no_cavpt.class_aware  # VPT-deep in every block
    stack.clear()
    no_coop = stack.push(build_module("dpt", {"text_tokens": 0}, task="b"))
    assert tiny_clip_host.context_tokens() == 0 and len(no_coop.class_aware) == 1
    stack.clear()
    no_vpt = stack.push(build_module("dpt", {"visual_tokens": 0, "layers_from": 2}, task="c"))
    assert len(no_vpt.class_aware) == 2 and no_vpt.visual_prompts.prompts[0].numel() == 0
    with pytest.raises(MethodError, match="layers_from 4 out of range; the host has 4 image blocks"):
        stack.push(build_module("dpt", {"layers_from": 4}, task="d"))


def test_class_aware_prompts_need_the_batch_first(tiny_clip_host, stack):
    stack.push(build_module("dpt", task="t"))
    with pytest.raises(MethodError, match="need the batch's classes"), torch.no_grad():
        tiny_clip_host.image_features(_batch(tiny_clip_host).pixels)


def test_dpt_modules_stack_save_and_load_with_their_auxiliary_heads(tiny_clip_host, stack, tmp_path):
    first = stack.push(build_module("dpt", task="a"))
    second = stack.push(build_module("dpt", {"class_prompts": 2}, task="b"))
    second.prepare(SimpleNamespace(phrases=PHRASES))
    for module in (first, second):  # trained-looking weights, not the initial ones
        with torch.no_grad():
            for p in module.parameters():
                p.add_(0.05 * torch.randn_like(p))
    with torch.no_grad():
        stacked = tiny_clip_host.logits(_batch(tiny_clip_host))
    save_module(first, tmp_path / "a", tiny_clip_host)
    save_module(second, tmp_path / "b", tiny_clip_host)
    stack.clear()
    for folder in ("a", "b"):
        stack.push(load_module(tmp_path / folder, tiny_clip_host))
    assert stack.modules[1].heads[0].out_features == len(PHRASES)
    with torch.no_grad():
        assert torch.equal(tiny_clip_host.logits(_batch(tiny_clip_host)), stacked)


def test_grounding_host_reads_phrase_spans_off_the_token_ids(tiny_host):
    phrases = ["red circle", "fish", "one way arrow"]
    for context in (0, 3):
        slots = tiny_host.context_slot_ids(context)
        (prompt,) = build_prompts(tiny_host.tokenizer, phrases, tiny_host.model.config.max_text_len, slots)
        assert tiny_host.phrase_spans(prompt.input_ids[0]) == list(prompt.spans)


def test_on_grounding_dino_each_phrase_prompts_the_image_side_of_the_last_fusion_layer(tiny_host):
    phrases = ["red circle", "fish", "one way arrow"]
    pixels = torch.randn(2, 3, tiny_host.image_size, tiny_host.image_size, generator=torch.Generator().manual_seed(0))
    stack = Stack(tiny_host)
    try:
        dpt = stack.push(build_module("dpt", task="t"))
        assert dpt.placement == "fusion"
        assert len(dpt.visual_prompts.prompts) == len(tiny_host.sites("image_blocks"))  # VPT-deep in every Swin block
        fusion = list(tiny_host.sites("fusion").values())
        seen = []
        handles = [f.register_forward_pre_hook(lambda m, args, kw: seen.append(("in", args[0].shape[1],
                                                                                args[1].shape[1])), with_kwargs=True)
                   for f in fusion]
        handles += [f.register_forward_hook(lambda m, args, out: seen.append(("out", out[0][0].shape[1],
                                                                               out[1][0].shape[1]))) for f in fusion]
        try:
            with torch.no_grad():
                tiny_host.predict(Batch("detection", pixels, phrases))
        finally:
            for h in handles:
                h.remove()
        (_, n_image, n_text) = seen[0]
        assert seen == [("in", n_image, n_text), ("out", n_image, n_text)] * len(fusion)  # prompts: keys only
        assert [name for name, f in tiny_host.sites("fusion").items() if "forward" in f.__dict__] == dpt.cavpt_sites
        targets = [{"class_labels": torch.tensor([0, 2]), "boxes": torch.tensor([[.3, .3, .2, .2], [.6, .6, .3, .2]])},
                   {"class_labels": torch.tensor([1]), "boxes": torch.tensor([[.5, .5, .4, .4]])}]
        loss, _ = tiny_host.loss(Batch("detection", pixels, phrases, targets=targets))
        assert torch.equal(dpt.objective(loss, 0.0), loss)  # no auxiliary or general-knowledge terms on detection
    finally:
        stack.clear()
