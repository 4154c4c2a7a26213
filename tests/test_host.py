"""The Grounding DINO host: save/load, prompts and spans, sites, fingerprint, loss."""
import pytest
import torch

from continual.hosts.base import Batch
from transformers.models.grounding_dino.modeling_grounding_dino import build_label_maps

from continual.hosts.base import HostError, build_host
from continual.hosts.grounding_dino import SITE_KINDS, GroundingDinoHost
from continual.hosts.prompts import build_prompts
from tasks.errors import DataError

pytestmark = pytest.mark.fast  # unit-level: `make test-fast`

PHRASES = ["red circle", "blue star", "jellyfish", "one way arrow"]


def _pixels(n=2, seed=0):
    return torch.randn(n, 3, 128, 128, generator=torch.Generator().manual_seed(seed))


def test_save_pretrained_from_pretrained_identical_outputs(tiny_host, tmp_path):
    tiny_host.save_pretrained(tmp_path / "ckpt")
    loaded = GroundingDinoHost.from_pretrained(tmp_path / "ckpt")
    assert loaded.fingerprint() == tiny_host.fingerprint()
    batch = Batch("detection", _pixels(), PHRASES)
    a, b = tiny_host.predict(batch), loaded.predict(batch)
    for x, y in zip(a, b):
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(x[key], y[key])
    # the text backbone comes from its package, not the checkpoint
    assert (tmp_path / "ckpt" / "model.safetensors").stat().st_size < 20e6


def _text_states(host, prompt):
    """What the text encoder hands to the text projection, for one prompt (L, 384)."""
    seen = []
    handle = host.model.model.text_projection.register_forward_hook(lambda m, args, out: seen.append(args[0][0]))
    try:
        host.raw_outputs(_pixels(1), prompt)
    finally:
        handle.remove()
    return seen[0]


def test_phrase_pooling_gives_each_word_its_phrase_state_and_survives_save_load(tiny_host, tmp_path):
    pooled_host = GroundingDinoHost.build_tiny(seed=0)
    pooled_host.set_phrase_pooling(True)
    (prompt,) = pooled_host.prompts(PHRASES)
    pooled, plain = _text_states(pooled_host, prompt), _text_states(tiny_host, prompt)
    for a, b in prompt.spans:
        assert torch.allclose(pooled[a:b], plain[a:b].mean(0).expand(b - a, -1), atol=1e-5)
    first, second = prompt.spans[0], prompt.spans[1]
    assert not torch.allclose(pooled[first[0]], pooled[second[0]])  # phrases stay apart
    assert not torch.allclose(plain[first[0]], plain[first[0] + 1])  # the plain host keeps its tokens
    words = {i for a, b in prompt.spans for i in range(a, b)}
    others = [i for i in range(int(prompt.attention_mask.sum())) if i not in words]  # [CLS], '.', [SEP]
    assert torch.equal(pooled[others], plain[others])
    pooled_host.save_pretrained(tmp_path / "pooled")
    loaded = build_host(str(tmp_path / "pooled"))
    assert torch.equal(_text_states(loaded, prompt), pooled)
    loaded.set_phrase_pooling(False)
    assert torch.equal(_text_states(loaded, prompt), plain)


def test_phrase_spans_match_grounding_dino_label_maps(tiny_host):
    (prompt,) = tiny_host.prompts(PHRASES)
    label_maps = build_label_maps(torch.zeros(1, 1, 64), prompt.input_ids)[0]
    from_hf = [tuple(row.nonzero().flatten().tolist()) for row in label_maps]
    ours = [tuple(range(a, b)) for a, b in prompt.spans]
    assert ours == from_hf
    words = [tiny_host.tokenizer.decode(prompt.input_ids[0, a:b]) for a, b in prompt.spans]
    assert words == PHRASES


def test_long_category_list_is_split_into_prompts(tiny_host):
    phrases = [f"thing number {i}" for i in range(40)]
    prompts = build_prompts(tiny_host.tokenizer, phrases, max_text_len=32)
    assert len(prompts) > 1
    assert [i for p in prompts for i in p.phrase_indices] == list(range(40))
    assert all(p.input_ids.shape[1] <= 32 for p in prompts)
    preds = tiny_host.predict(Batch("detection", _pixels(1), phrases), top_k=50)
    assert preds[0]["labels"].max() < 40 and preds[0]["scores"].shape == (50,)


@pytest.mark.parametrize("phrases, message", [
    (["fish", "  "], "phrase #1 is empty"),
    (["fish. shark"], "contains '.'"),
    ([], "at least one category"),
    (["word " * 80], "longer than the text encoder's limit"),
])
def test_bad_phrases_are_refused(tiny_host, phrases, message):
    with pytest.raises(DataError, match=message):
        build_prompts(tiny_host.tokenizer, phrases, max_text_len=64)


def test_every_site_kind_is_found(tiny_host):
    for kind in SITE_KINDS:
        assert tiny_host.sites(kind), kind
    fusion = tiny_host.sites("fusion")
    assert all(type(m).__name__ == "GroundingDinoBiMultiHeadAttention" for m in fusion.values())
    assert all(type(m).__name__ == "SwinLayer" for m in tiny_host.sites("image_blocks").values())
    with pytest.raises(HostError, match="unknown site kind"):
        tiny_host.sites("everywhere")


def test_fingerprint_tracks_weights_only(tiny_host):
    before = tiny_host.fingerprint()
    assert tiny_host.fingerprint() == before
    weight = tiny_host.sites("fusion")["model.encoder.layers.0.fusion_layer.attn"].vision_proj.weight
    original = weight.detach().clone()
    try:
        with torch.no_grad():
            weight[0, 0] += 1.0
        changed = tiny_host.fingerprint()
    finally:
        with torch.no_grad():
            weight.copy_(original)  # restored from a clone: bit-exact, whatever happened above
    assert changed != before
    assert tiny_host.fingerprint() == before


def test_loss_trains_and_keeps_labels_per_prompt(tiny_host):
    targets = [{"class_labels": torch.tensor([0, 2]), "boxes": torch.tensor([[.3, .3, .2, .2], [.6, .6, .3, .2]])},
               {"class_labels": torch.tensor([3]), "boxes": torch.tensor([[.5, .5, .4, .4]])}]
    params = list(tiny_host.sites("heads")["bbox_embed.0"].parameters())
    was = [p.requires_grad for p in params]  # the session's host may have been frozen by a stack
    for p in params:
        p.requires_grad_(True)
    try:
        loss, parts = tiny_host.loss(Batch("detection", _pixels(), PHRASES, targets=targets))
        grads = torch.autograd.grad(loss, params)
    finally:
        for p, flag in zip(params, was):
            p.requires_grad_(flag)
    assert torch.isfinite(loss) and {"loss_ce", "loss_bbox", "loss_giou"} <= set(parts)
    assert any(g.abs().sum() > 0 for g in grads)


def test_phrase_contrast_is_the_cross_entropy_of_the_matched_query_over_the_phrases(tiny_host):
    from types import SimpleNamespace

    from continual.hosts.phrase_contrast import phrase_contrast_loss

    spans = [(1, 3), (4, 6)]  # two phrases of two tokens
    logits = torch.full((1, 3, 64), float("-inf"))
    logits[..., 1:3], logits[..., 4:6] = 5.0, -5.0  # every query: phrase 0 far above phrase 1
    boxes = torch.tensor([[[.3, .3, .2, .2], [.8, .8, .1, .1], [.1, .8, .1, .1]]])
    outputs = SimpleNamespace(logits=logits, pred_boxes=boxes)
    target = {"boxes": torch.tensor([[.3, .3, .2, .2]])}  # query 0's box: the match
    own = phrase_contrast_loss(outputs, spans, [{**target, "class_labels": torch.tensor([0])}], tiny_host.model.config)
    other = phrase_contrast_loss(outputs, spans, [{**target, "class_labels": torch.tensor([1])}],
                                 tiny_host.model.config)
    assert own.item() == pytest.approx(torch.nn.functional.softplus(torch.tensor(-10.0)).item(), abs=1e-6)
    assert other.item() == pytest.approx(10.0, abs=1e-3)
    targets = [{"class_labels": torch.tensor([0, 2]), "boxes": torch.tensor([[.3, .3, .2, .2], [.6, .6, .3, .2]])},
               {"class_labels": torch.tensor([3]), "boxes": torch.tensor([[.5, .5, .4, .4]])}]
    batch = Batch("detection", _pixels(), PHRASES, targets=targets)
    plain, _ = tiny_host.loss(batch)
    tiny_host.phrase_contrast = 2.0
    try:
        weighted, parts = tiny_host.loss(batch)
    finally:
        tiny_host.phrase_contrast = 0.0
    assert weighted.item() == pytest.approx(plain.item() + 2.0 * parts["loss_phrase"].item(), rel=1e-5)


def test_unknown_builtin_checkpoint():
    with pytest.raises(HostError, match="unknown built-in host 'builtin:nothing-here'; known: .*tiny-base"):
        build_host("builtin:nothing-here")


def test_the_t_sized_host_saved_loads_back_with_identical_outputs(tmp_path):
    """Its BERT-base text tower is not MiniLM's, so it is saved with the rest (it was left out, and the folder
    then failed to load with a size mismatch)."""
    host = GroundingDinoHost.build_t_size(image_size=224)
    host.save_pretrained(tmp_path / "t-size")
    again = build_host(tmp_path / "t-size")
    assert again.fingerprint() == host.fingerprint() and again.image_size == 224
    pixels = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before, after = (h.raw_outputs(pixels, h.prompts(["fish", "crab"])[0]) for h in (host, again))
    assert torch.equal(before.logits, after.logits) and torch.equal(before.pred_boxes, after.pred_boxes)


def test_coop_on_a_tokenizer_without_placeholder_tokens_fills_marked_positions(tiny_host, monkeypatch):
    """Grounding DINO with a tokenizer that has no [unusedN] (as CLIP's BPE has none): ordinary tokens at the
    context slots, their positions marked; the same predictions as with placeholder tokens."""
    from prompts import Stack, build_module

    stack = Stack(tiny_host)
    try:
        stack.push(build_module("coop", {"tokens": 3}, task="t"))
        batch = Batch("detection", _pixels(), PHRASES)
        with torch.no_grad():
            with_slots = tiny_host.raw_outputs(batch.pixels, tiny_host.prompts(PHRASES)[0]).logits
            assert tiny_host.context_index is None
            monkeypatch.setattr(tiny_host, "context_slot_ids", lambda count: None)
            monkeypatch.setattr(tiny_host, "_prompt_cache", {})  # (a host's tokenizer never changes: prompts are cached)
            (prompt,) = tiny_host.prompts(PHRASES)
            by_position = tiny_host.raw_outputs(batch.pixels, prompt).logits
    finally:
        stack.clear()
    assert tiny_host.tokenizer.convert_ids_to_tokens(prompt.input_ids[0, 1:5].tolist()) == ["x", "x", "x", "red"]
    assert prompt.context_index[0, :5].tolist() == [-1, 0, 1, 2, -1]
    assert torch.equal(tiny_host.context_index, prompt.context_index.expand(len(batch.pixels), -1))
    assert torch.allclose(by_position, with_slots, atol=1e-5)
