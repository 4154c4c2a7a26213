"""Stack policies, frozen-state integrity, and the module store's refusals."""
import copy
import json

import pytest
import torch

from continual.hosts.base import Batch
from safetensors.torch import save_file

from prompts import Stack, StoreError, build_module, load_module, save_module
from prompts.base import MethodError

pytestmark = pytest.mark.fast  # unit-level: `make test-fast`

PHRASES = ["red circle", "fish"]


def _outputs(host):
    pixels = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = host.raw_outputs(pixels, host.prompts(PHRASES)[0])
    return out.pred_boxes.clone(), out.encoder_last_hidden_state_vision.clone()


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


def _perturb(module):
    with torch.no_grad():
        for p in module.trainable_parameters():
            p.add_(torch.randn_like(p) * 0.5)


@pytest.fixture
def stack(tiny_host):
    stack = Stack(tiny_host)
    yield stack
    stack.clear()


def test_own_policy_reproduces_earlier_outputs_and_all_uses_every_module(stack, tiny_host):
    plain = _outputs(tiny_host)
    first = stack.push(build_module("adapter", task="base"))
    _perturb(first)
    after_first = _outputs(tiny_host)
    second = stack.push(build_module("sdpt", task="aquarium"))
    _perturb(second)
    with stack.using("own", "base"):
        assert _same(_outputs(tiny_host), after_first)
        assert first.enabled and not second.enabled
    with stack.using("all"):
        both = _outputs(tiny_host)
        assert not _same(both, after_first)
    with stack.using("own", "aquarium"):  # trained on top of the base adapter: both on
        assert _same(_outputs(tiny_host), both)
    with stack.using("own", "never-trained"):
        assert _same(_outputs(tiny_host), plain)
    with pytest.raises(MethodError, match="unknown composition policy"):
        stack.use("some")


def test_route_policy_enables_the_modules_whose_phrases_the_prompt_names(stack, tiny_host, tmp_path):
    plain = _outputs(tiny_host)
    first = stack.push(build_module("adapter", task="base"))
    first.phrases = ("red circle", "blue square")
    _perturb(first)
    after_first = _outputs(tiny_host)
    second = stack.push(build_module("sdpt", task="aquarium"))
    second.phrases = ("fish", "crab")
    _perturb(second)
    both = _outputs(tiny_host)
    with stack.using("route", phrases=["blue square"]):
        assert first.enabled and not second.enabled and _same(_outputs(tiny_host), after_first)
    with stack.using("route", phrases=["crab", "kite"]):  # and what the aquarium module was trained on top of
        assert first.enabled and second.enabled and _same(_outputs(tiny_host), both)
    with stack.using("route", phrases=["kite"]):  # no known phrase: the plain host
        assert not first.enabled and not second.enabled and _same(_outputs(tiny_host), plain)
    save_module(second, tmp_path / "aquarium", tiny_host)
    loaded = load_module(tmp_path / "aquarium", tiny_host)
    loaded.detach()
    assert loaded.phrases == ("fish", "crab")  # recorded in meta.json
    stack.route_threshold = 0.75  # new wording: MiniLM puts fish~fishes at 0.89, fish~crab at 0.54
    with stack.using("route", phrases=["fishes"]):
        assert first.enabled and second.enabled and _same(_outputs(tiny_host), both)
    with stack.using("route", phrases=["kite"]):
        assert not first.enabled and not second.enabled


@pytest.mark.parametrize("fixture", ["tiny_host", "tiny_clip_host", "tiny_vilt_host"])
def test_every_host_embeds_phrases_for_routing_by_similarity(fixture, request):
    host = request.getfixturevalue(fixture)
    vectors = torch.nn.functional.normalize(host.phrase_embeddings(["fish", "fishes", "kite"]), dim=-1)
    assert vectors.shape[0] == 3 and torch.isfinite(vectors).all()
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]


def test_training_a_new_module_leaves_host_and_earlier_modules_bit_identical(stack, tiny_host):
    first = stack.push(build_module("lora", task="base"))
    _perturb(first)
    new = stack.push(build_module("sdpt", task="aquarium"))
    before = stack.frozen_hashes(except_module=new)
    params = stack.train_only(new)
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    targets = [{"class_labels": torch.tensor([1]), "boxes": torch.tensor([[.5, .5, .3, .3]])}] * 2
    for _ in range(3):
        loss, _ = tiny_host.loss(Batch("detection", torch.randn(2, 3, 128, 128), PHRASES, targets=targets))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert stack.frozen_hashes(except_module=new) == before
    # and the check does fire when a frozen tensor moves
    with torch.no_grad():
        first.lora_A[0].weight[0, 0] += 1
    assert stack.frozen_hashes(except_module=new) != before


def test_full_ft_does_not_stack(stack):
    stack.push(build_module("adapter", task="a"))
    with pytest.raises(MethodError, match="full_ft"):
        stack.push(build_module("full_ft", task="b"))


@pytest.fixture
def saved(tiny_host, tmp_path):
    module = build_module("adapter", task="base").attach(tiny_host)
    _perturb(module)
    folder = save_module(module, tmp_path / "adapter_base", tiny_host)
    module.detach()
    return folder


def test_store_layout(saved, tiny_host):
    assert sorted(p.name for p in saved.iterdir()) == ["adapter_config.json", "adapter_model.safetensors", "meta.json"]
    meta = json.loads((saved / "meta.json").read_text())
    assert meta["host_fingerprint"] == tiny_host.fingerprint() and meta["method"] == "adapter"
    assert not [p for p in saved.parent.iterdir() if p.name.startswith(".")]  # no temp folder left


def test_refuses_another_host(saved):
    from continual.hosts.grounding_dino import GroundingDinoHost

    other = GroundingDinoHost.build_tiny(seed=5)
    with pytest.raises(StoreError, match="trained on host .* not on this one"):
        load_module(saved, other)


def test_refuses_tampered_and_truncated_weights(saved, tiny_host):
    weights = saved / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="sha256 does not match"):
        load_module(saved, tiny_host)
    weights.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(StoreError, match="sha256 does not match"):
        load_module(saved, tiny_host)


def test_refuses_unknown_method_incomplete_folder_and_pickle(saved, tiny_host):
    config = json.loads((saved / "adapter_config.json").read_text())
    (saved / "adapter_config.json").write_text(json.dumps({**config, "method": "prefix_tuning"}))
    with pytest.raises(StoreError, match="unknown method 'prefix_tuning'"):
        load_module(saved, tiny_host)
    (saved / "adapter_config.json").write_text(json.dumps(config))
    (saved / "adapter_model.safetensors").rename(saved / "adapter_model.bin")
    with pytest.raises(StoreError, match="only pickle weights .*never loaded"):
        load_module(saved, tiny_host)
    (saved / "meta.json").unlink()
    with pytest.raises(StoreError, match="incomplete module"):
        load_module(saved, tiny_host)


def test_refuses_weights_of_the_wrong_shape(saved, tiny_host):
    save_file({"adapters.0.down.weight": torch.zeros(3, 3)}, str(saved / "adapter_model.safetensors"))
    meta = json.loads((saved / "meta.json").read_text())
    from prompts.store import file_sha256

    meta["sha256"] = file_sha256(saved / "adapter_model.safetensors")
    (saved / "meta.json").write_text(json.dumps(meta))
    hooks_before = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in tiny_host.modules())
    with pytest.raises(StoreError, match="do not fit"):
        load_module(saved, tiny_host)
    # nothing of the refused module stays attached
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in tiny_host.modules()) == hooks_before


def test_loads_a_lora_folder_saved_by_hf_peft(tiny_host, tmp_path):
    from peft import LoraConfig, get_peft_model

    base = copy.deepcopy(tiny_host.model)
    base.config.tie_word_embeddings = False  # peft's tied-embedding check needs this on Grounding DINO
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["vision_proj", "fc2"]))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    peft_model.save_pretrained(tmp_path / "hf_lora")
    pixels = torch.randn(1, 3, 128, 128)
    prompt = tiny_host.prompts(PHRASES)[0]
    peft_model.eval()
    with torch.no_grad():
        expected = peft_model(pixel_values=pixels, input_ids=prompt.input_ids, attention_mask=prompt.attention_mask,
                              token_type_ids=prompt.token_type_ids).pred_boxes
    module = load_module(tmp_path / "hf_lora", tiny_host)
    try:
        assert module.method == "lora"
        with torch.no_grad():
            got = tiny_host.raw_outputs(pixels, prompt).pred_boxes
        assert torch.allclose(got, expected, atol=1e-6)
    finally:
        module.detach()


def test_digests_in_use_follow_the_policy_and_every_change_of_a_module(tiny_host):
    stack = Stack(tiny_host)
    try:
        first = stack.push(build_module("sdpt", task="a"))
        first.phrases = ("fish",)
        stack.push(build_module("adapter", task="b"))
        both = stack.digests_in_use("all")
        assert len(both) == 2 and stack.digests_in_use("own", "a") == both[:1]
        assert stack.digests_in_use("route", "x", ("kite",)) == []  # a prompt naming no known phrase: none on
        with torch.no_grad():
            first.prototypes[0].add_(1.0)  # changed in place: the cached digest must not be reused
        assert stack.digests_in_use("all")[0] != both[0] and stack.digests_in_use("all")[1] == both[1]
    finally:
        stack.clear()
