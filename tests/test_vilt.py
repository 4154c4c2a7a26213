"""The ViLT host: Hugging Face folders through from_pretrained, the tiny host's save/load, its forward."""
import json

import pytest
import torch
from transformers import AutoTokenizer, ViltConfig, ViltForQuestionAnswering

from continual.hosts.base import Batch, build_host, host_class, minilm_path
from continual.hosts.vilt import WORD_EMBEDDINGS, ViltHost

pytestmark = pytest.mark.fast  # unit-level: `make test-fast`

ANSWERS = ["yes", "no", "2", "red", "fish"]


@pytest.fixture(scope="module")
def random_vilt_folder(tmp_path_factory):
    """A tiny random ViltForQuestionAnswering saved the Hugging Face way, with its tokenizer and processor."""
    folder = tmp_path_factory.mktemp("vilt-random")
    config = ViltConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        image_size=32, patch_size=8, max_position_embeddings=40, num_labels=len(ANSWERS),
                        id2label=dict(enumerate(ANSWERS)), label2id={a: i for i, a in enumerate(ANSWERS)})
    torch.manual_seed(0)
    ViltForQuestionAnswering(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_processor_type": "ViltImageProcessor",
                                                                 "size": {"shortest_edge": 32}}))
    return folder


def _batch(host, n=2):
    pixels = torch.randn(n, 3, host.image_size, host.image_size, generator=torch.Generator().manual_seed(0))
    return Batch("vqa", pixels, ANSWERS, questions=["is there a fish?", "how many red circles?"][:n])


def test_a_hugging_face_vilt_folder_loads_and_answers(random_vilt_folder):
    assert host_class(random_vilt_folder) is ViltHost
    host = build_host(random_vilt_folder)
    assert host.image_size == 32 and not host.text_from_package
    scores = host.predict(_batch(host))
    assert len(scores) == 2 and scores[0]["scores"].shape == (len(ANSWERS),)
    # the host's image embedding is ViLT's own (which draws a random patch order each call)
    text = host.tokenizer(["is there a fish?", "how many red circles?"], padding=True, return_tensors="pt")
    batch = _batch(host)
    with torch.no_grad():
        own = host.model(**text, pixel_values=batch.pixels).logits
        ours = host.logits(batch)
    assert torch.allclose(ours, own, atol=1e-5)


def test_tiny_vilt_saves_without_minilm_words_and_loads_them_back(tiny_vilt_host, tmp_path):
    tiny_vilt_host.save_pretrained(tmp_path / "tiny")
    from safetensors.torch import load_file
    saved = load_file(tmp_path / "tiny" / "model.safetensors")
    assert WORD_EMBEDDINGS not in saved and json.loads((tmp_path / "tiny" / "host.json").read_text())["text_backbone"]
    loaded = build_host(tmp_path / "tiny")
    assert loaded.fingerprint() == tiny_vilt_host.fingerprint()
    with torch.no_grad():
        assert torch.equal(loaded.logits(_batch(loaded)), tiny_vilt_host.logits(_batch(tiny_vilt_host)))


def test_the_tiny_vilt_text_embeddings_are_minilms(tiny_vilt_host):
    from transformers import AutoModel
    minilm = AutoModel.from_pretrained(minilm_path()).embeddings
    text = tiny_vilt_host.model.vilt.embeddings.text_embeddings
    assert torch.equal(text.word_embeddings.weight, minilm.word_embeddings.weight)
    assert torch.equal(text.position_embeddings.weight, minilm.position_embeddings.weight[:40])


def test_a_vqa_batch_needs_a_question_per_image(tiny_vilt_host):
    batch = _batch(tiny_vilt_host)
    batch.questions = batch.questions[:1]
    with pytest.raises(ValueError, match="one question per image"):
        tiny_vilt_host.predict(batch)
