"""Every registered method, through one life cycle: attach, train a step, save, load, detach.

Like timm's registry-wide tests: a method is tested the day it is registered.
"""
import pytest
import torch

from prompts import METHODS, Stack, build_module, load_module, parameter_counts, save_module

PHRASES = ["red circle", "fish", "one way arrow"]
TARGETS = [{"class_labels": torch.tensor([0, 2]), "boxes": torch.tensor([[.3, .3, .2, .2], [.6, .6, .3, .2]])},
           {"class_labels": torch.tensor([1]), "boxes": torch.tensor([[.5, .5, .4, .4]])}]
# Methods whose fresh module is exactly the identity, and token methods at k = 0.
IDENTITY_CONFIGS = {"adapter": {}, "lora": {}, "bitfit": {}, "linear_probe": {}, "full_ft": {},
                    "sdpt": {"k": 0}, "vpt": {"tokens": 0}, "coop": {"tokens": 0}}


def _pixels():
    return torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(1))


def _outputs(host, phrases=PHRASES):
    with torch.no_grad():
        out = host._forward(_pixels(), host.prompts(phrases)[0])
    return out.pred_boxes.clone(), out.logits.clone()


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


def test_identity_configs_cover_the_registry():
    assert set(IDENTITY_CONFIGS) == set(METHODS)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_identity_attach_and_detach_restore_outputs(tiny_host, method):
    before = _outputs(tiny_host)
    module = build_module(method, IDENTITY_CONFIGS[method]).attach(tiny_host)
    try:
        assert _same(_outputs(tiny_host), before), "a fresh identity module changed the host's outputs"
    finally:
        module.detach()
    assert _same(_outputs(tiny_host), before)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_life_cycle(tiny_host, method, tmp_path):
    base_outputs, fingerprint = _outputs(tiny_host), tiny_host.fingerprint()
    stack = Stack(tiny_host)
    module = stack.push(build_module(method, task="t0"))
    params = stack.train_only(module)
    assert params and all(p.requires_grad for p in params)
    trainable_ids = {id(p) for p in params}
    frozen = [p for p in tiny_host.parameters() if id(p) not in trainable_ids]
    assert all(not p.requires_grad for p in frozen)
    counts = parameter_counts(tiny_host, module)
    assert counts["trainable_params"] == sum(p.numel() for p in params)

    optimizer = torch.optim.AdamW(params, lr=1e-2)
    before_step = [p.detach().clone() for p in params]
    loss, _ = tiny_host.loss(_pixels(), PHRASES, TARGETS)
    loss.backward()
    optimizer.step()
    assert any(not torch.equal(b, p) for b, p in zip(before_step, params)), "one step changed nothing"
    trained = _outputs(tiny_host)
    if method != "full_ft":
        assert tiny_host.fingerprint() == fingerprint, "training a module changed the frozen host"

    save_module(module, tmp_path / "m", tiny_host, metrics={"mAP": 0.5})
    stack.clear()
    assert tiny_host.fingerprint() == fingerprint and _same(_outputs(tiny_host), base_outputs)

    loaded = load_module(tmp_path / "m", tiny_host)
    try:
        assert loaded.method == method and loaded.task == "t0"
        assert _same(_outputs(tiny_host), trained), "save -> load is not bit-identical"
    finally:
        loaded.detach()
    assert _same(_outputs(tiny_host), base_outputs)
    tiny_host.requires_grad_(False)


def test_unknown_method_and_config_key():
    from prompts import MethodError

    with pytest.raises(MethodError, match="unknown method 'prefix'"):
        build_module("prefix")
    with pytest.raises(MethodError, match=r"sdpt: unknown config key\(s\) \['kk'\]"):
        build_module("sdpt", {"kk": 3})
