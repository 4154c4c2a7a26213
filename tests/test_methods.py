"""Every registered method on every registered host whose sites it needs, through one life cycle:
attach, train a step, save, load, detach.

Like timm's registry-wide tests: a method (or a host) is tested the day it is registered.
"""
import pytest
import torch

from continual.hosts.base import HOSTS, Batch
from prompts import METHODS, Stack, build_module, load_module, parameter_counts, save_module
from prompts.base import MethodError

pytestmark = pytest.mark.fast  # unit-level: `make test-fast`

# Methods whose fresh module is exactly the identity, and token methods at k = 0.
IDENTITY_CONFIGS = {"adapter": {}, "lora": {}, "bitfit": {}, "linear_probe": {}, "full_ft": {},
                    "sdpt": {"k": 0}, "vpt": {"tokens": 0}, "coop": {"tokens": 0},
                    "dpt": {"text_tokens": 0, "visual_tokens": 0, "class_prompts": 0}, "apt": {"prompts": 0},
                    "deep_prompt": {"tokens": 0}}
HOST_FIXTURES = {"grounding-dino": "tiny_host", "dual-encoder": "tiny_clip_host", "vilt": "tiny_vilt_host"}
VQA_ANSWERS = ["yes", "no", "2", "red", "fish"]
VQA_QUESTIONS = ["is there a fish?", "how many red circle are there?"]
DETECTION_PHRASES = ["red circle", "fish", "one way arrow"]
DETECTION_TARGETS = [{"class_labels": torch.tensor([0, 2]), "boxes": torch.tensor([[.3, .3, .2, .2], [.6, .6, .3, .2]])},
                     {"class_labels": torch.tensor([1]), "boxes": torch.tensor([[.5, .5, .4, .4]])}]


def _pixels(host):
    return torch.randn(2, 3, host.image_size, host.image_size, generator=torch.Generator().manual_seed(1))


def _batch(host, train: bool = False) -> Batch:
    if host.kind == "grounding-dino":
        return Batch("detection", _pixels(host), DETECTION_PHRASES, targets=DETECTION_TARGETS if train else None)
    if host.kind == "vilt":
        targets = [{"answer_ids": torch.tensor([0]), "answer_scores": torch.tensor([1.0])},
                   {"answer_ids": torch.tensor([2, 3]), "answer_scores": torch.tensor([1.0, 0.3])}]
        return Batch("vqa", _pixels(host), VQA_ANSWERS, targets=targets if train else None, questions=VQA_QUESTIONS)
    targets = [{"label": torch.tensor(0)}, {"label": torch.tensor(2)}] if train else None
    return Batch("classification", _pixels(host), DETECTION_PHRASES, "a photo of a {}.", targets)


def _outputs(host):
    """The host's raw outputs on a fixed batch (before any top-k or softmax)."""
    with torch.no_grad():
        if host.kind == "grounding-dino":
            out = host.raw_outputs(_pixels(host), host.prompts(DETECTION_PHRASES)[0])
            return out.pred_boxes.clone(), out.logits.clone()
        return (host.logits(_batch(host)).clone(),)


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


def _case_list():
    for host_kind, cls in sorted(HOSTS.items()):
        for method in sorted(METHODS):
            needs = set(build_module(method).required_sites())
            if needs <= set(cls.site_kinds):
                yield pytest.param(host_kind, method, id=f"{host_kind}-{method}")


CASES = list(_case_list())


def test_the_registries_are_covered():
    assert set(IDENTITY_CONFIGS) == set(METHODS)
    assert set(HOST_FIXTURES) == set(HOSTS)
    # every method runs on some host, and a host with fusion layers runs SDPT
    assert {m for _, m in (c.values for c in CASES)} == set(METHODS)


@pytest.mark.parametrize("host_kind, method", CASES)
def test_identity_attach_and_detach_restore_outputs(request, host_kind, method):
    host = request.getfixturevalue(HOST_FIXTURES[host_kind])
    before = _outputs(host)
    module = build_module(method, IDENTITY_CONFIGS[method]).attach(host)
    try:
        assert _same(_outputs(host), before), "a fresh identity module changed the host's outputs"
    finally:
        module.detach()
    assert _same(_outputs(host), before)


@pytest.mark.parametrize("host_kind, method", CASES)
def test_life_cycle(request, host_kind, method, tmp_path):
    host = request.getfixturevalue(HOST_FIXTURES[host_kind])
    base_outputs, fingerprint = _outputs(host), host.fingerprint()
    stack = Stack(host)
    try:
        module = stack.push(build_module(method, task="t0"))
        params = stack.train_only(module)
        assert params and all(p.requires_grad for p in params)
        trainable_ids = {id(p) for p in params}
        assert all(not p.requires_grad for p in host.parameters() if id(p) not in trainable_ids)
        assert parameter_counts(host, module)["trainable_params"] == sum(p.numel() for p in params)

        optimizer = torch.optim.AdamW(params, lr=1e-2)
        before_step = [p.detach().clone() for p in params]
        loss, _ = host.loss(_batch(host, train=True))
        loss.backward()
        optimizer.step()
        assert any(not torch.equal(b, p) for b, p in zip(before_step, params)), "one step changed nothing"
        trained = _outputs(host)
        if method != "full_ft":
            assert host.fingerprint() == fingerprint, "training a module changed the frozen host"
        save_module(module, tmp_path / "m", host, metrics={"metric": 0.5})
    finally:
        stack.clear()  # the shared host is left as found, even when an assertion failed
        host.requires_grad_(False)
    assert host.fingerprint() == fingerprint and _same(_outputs(host), base_outputs)

    loaded = load_module(tmp_path / "m", host)
    try:
        assert loaded.method == method and loaded.task == "t0"
        assert _same(_outputs(host), trained), "save -> load is not bit-identical"
    finally:
        loaded.detach()
    assert _same(_outputs(host), base_outputs)


def test_a_method_on_a_host_without_its_sites_is_a_clear_error(tiny_clip_host):
    with pytest.raises(MethodError, match=r"sdpt needs site kind\(s\) \['fusion'\], which a dual-encoder host lacks"):
        build_module("sdpt").attach(tiny_clip_host)


def test_unknown_method_and_config_key_and_bad_values():
    with pytest.raises(MethodError, match="unknown method 'prefix'"):
        build_module("prefix")
    with pytest.raises(MethodError, match=r"sdpt: unknown config key\(s\) \['kk'\]"):
        build_module("sdpt", {"kk": 3})
    with pytest.raises(MethodError, match="sdpt: text_prompt_mask must be one of 'sync', 'official', got 'half'"):
        build_module("sdpt", {"text_prompt_mask": "half"})
    with pytest.raises(MethodError, match="adapter: bottleneck must be a number >= 1, got 0"):
        build_module("adapter", {"bottleneck": 0})


@pytest.mark.parametrize("host_kind", sorted(HOST_FIXTURES))
def test_a_second_linear_probe_trains_its_own_copy(request, host_kind):
    """A probe built while another probe's hook sits on the head copies the head without that hook, so its
    copies get the gradients a probe alone gets (not none: the earlier probe's frozen copy answering)."""
    host = request.getfixturevalue(HOST_FIXTURES[host_kind])

    def trained_names(probes: int) -> set[str]:
        stack = Stack(host)
        try:
            modules = [stack.push(build_module("linear_probe", task=f"t{i}")) for i in range(probes)]
            stack.train_only(modules[-1])
            host.zero_grad(set_to_none=True)
            loss, _ = host.loss(_batch(host, train=True))
            loss.backward()
            return {n for n, p in modules[-1].named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
        finally:
            stack.clear()

    alone = trained_names(1)
    assert alone and trained_names(2) == alone
