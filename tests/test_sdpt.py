"""SDPT exactly as docs/methods.md (SDPT) specifies."""
import copy

import pytest
import torch

from prompts import build_module
from prompts.sdpt import inverse_projection
from prompts.tokens import FusionKeys, add_fusion_keys

pytestmark = pytest.mark.fast  # unit-level: `make test-fast`

FUSION0 = "model.encoder.layers.0.fusion_layer.attn"


def _fusion_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    vision, text = torch.randn(2, 20, 64, generator=g), torch.randn(2, 6, 64, generator=g)
    masks = {"vision_attention_mask": torch.zeros(2, 20, dtype=torch.bool),
             "text_attention_mask": torch.tensor([[False] * 6, [False] * 4 + [True] * 2])}
    return vision, text, masks


def test_inverse_projection_is_the_least_squares_reconstruction(tiny_host):
    module = build_module("sdpt", {"k": 7}).attach(tiny_host)
    try:
        attn = tiny_host.sites("fusion")[FUSION0]
        p_v, p_t = module.projected(0, attn)
        prototypes = module.prototypes[0].detach().float()
        for linear, back in ((attn.vision_proj, p_v), (attn.text_proj, p_t)):
            # direct solve of min_x || x W^T + b - P ||, i.e. W x^T = (P - b)^T in the least-squares sense
            w, b = linear.weight.detach().float(), linear.bias.detach().float()
            reference = torch.linalg.lstsq(w, (prototypes - b).t()).solution.t()
            assert torch.allclose(back, reference, atol=1e-4)
            # projecting forward gives the least-squares reconstruction of P (E > d: not P itself)
            assert torch.allclose(linear(back), linear(reference), atol=1e-4)
            assert not torch.allclose(linear(back), prototypes, atol=1e-2)
    finally:
        module.detach()


def test_pinv_is_computed_once_in_float32(tiny_host):
    attn = tiny_host.sites("fusion")[FUSION0]
    pinv = inverse_projection(attn.vision_proj)
    assert pinv.dtype == torch.float32 and pinv.shape == (attn.vision_proj.out_features, attn.vision_proj.in_features)
    module = build_module("sdpt").attach(tiny_host)
    try:
        assert torch.equal(module.pinv_v0, pinv)
        assert "pinv_v0" not in module.state_dict()  # derived from the host, never saved
    finally:
        module.detach()


def test_gradients_reach_only_the_prototypes(tiny_host):
    module = build_module("sdpt").attach(tiny_host)
    try:
        tiny_host.requires_grad_(True)
        vision, text, masks = _fusion_inputs()
        attn = tiny_host.sites("fusion")[FUSION0]
        (v_out, _), (t_out, _) = attn(vision, text, **masks)
        (v_out.sum() + t_out.sum()).backward()
        assert module.prototypes[0].grad is not None and module.prototypes[0].grad.abs().sum() > 0
        assert module.pinv_v0.grad is None  # a buffer, not trained
    finally:
        tiny_host.zero_grad(set_to_none=True)
        tiny_host.requires_grad_(False)
        module.prototypes[0].grad = None
        module.detach()


def _attention_outputs(tiny_host, config):
    vision, text, masks = _fusion_inputs()
    attn = tiny_host.sites("fusion")[FUSION0]
    with torch.no_grad():
        plain = attn(vision, text, **masks)
        module = build_module("sdpt", config).attach(tiny_host)
        try:
            prompted = attn(vision, text, **masks)
        finally:
            module.detach()
    return plain, prompted


def test_official_mode_leaves_image_side_unchanged_and_sync_does_not(tiny_host):
    plain, official = _attention_outputs(tiny_host, {"k": 10, "text_prompt_mask": "official"})
    _, sync = _attention_outputs(tiny_host, {"k": 10, "text_prompt_mask": "sync"})
    (plain_v, _), (plain_t, _) = plain
    # image queries cannot see the masked text-side prototypes; only the global
    # max subtracted before the softmax moves, which cancels up to rounding
    assert torch.allclose(official[0][0], plain_v, atol=1e-6)
    assert not torch.allclose(sync[0][0], plain_v, atol=1e-3)
    # text queries see the image-side prototypes in both modes
    assert not torch.allclose(official[1][0], plain_t, atol=1e-3)
    assert official[0][0].shape == plain_v.shape and official[1][0].shape == plain_t.shape


@pytest.mark.parametrize("k, layers", [(10, None), (3, [1])])
def test_parameter_count_is_k_times_width_times_layers(tiny_host, k, layers):
    module = build_module("sdpt", {"k": k, "layers": layers}).attach(tiny_host)
    try:
        width = tiny_host.sites("fusion")[FUSION0].vision_proj.out_features  # E
        n_layers = len(tiny_host.sites("fusion")) if layers is None else len(layers)
        assert sum(p.numel() for p in module.trainable_parameters()) == k * width * n_layers
    finally:
        module.detach()


def test_bad_sdpt_configs(tiny_host):
    from prompts import MethodError

    for config, message in (({"text_prompt_mask": "half"}, "text_prompt_mask"), ({"layers": [5]}, "out of range")):
        with pytest.raises(MethodError, match=message):
            build_module("sdpt", config).attach(tiny_host)


def _appended(attn, vision, text, masks, sides):
    """The method as docs/methods.md words it, the way it was computed before it was brought to its cost
    floor: append every (image-side, text-side, text hidden) triple of tokens to both sequences, run the
    host's attention unchanged, slice the extra rows off both outputs."""
    batch, v_mask, t_mask = vision.shape[0], masks["vision_attention_mask"], masks["text_attention_mask"]
    for p_v, p_t, hidden in sides:
        vision, text = torch.cat([vision, p_v.expand(batch, -1, -1)], 1), torch.cat([text, p_t.expand(batch, -1, -1)], 1)
        v_mask = torch.cat([v_mask, v_mask.new_zeros(batch, p_v.shape[0])], 1)
        t_mask = torch.cat([t_mask, t_mask.new_full((batch, p_t.shape[0]), hidden)], 1)
    (v_out, _), (t_out, _) = type(attn).forward(attn, vision, text, v_mask, t_mask)
    n_image, n_text = masks["vision_attention_mask"].shape[1], masks["text_attention_mask"].shape[1]
    return v_out[:, :n_image], t_out[:, :n_text]


@pytest.mark.parametrize("modes", [["sync"], ["official"], ["sync", "official"]])
def test_cost_floor_attention_equals_append_and_slice_in_float64(tiny_host, modes):
    """The prototypes as keys only (no query rows, no masked keys) give the appended method's outputs;
    several modules on one layer (policy all) read all their prototypes."""
    attn = copy.deepcopy(tiny_host.sites("fusion")[FUSION0]).double()
    vision, text, masks = _fusion_inputs()
    vision, text = vision.double(), text.double()
    modules = [build_module("sdpt", {"k": 5 + i, "text_prompt_mask": mode}).attach(tiny_host)
               for i, mode in enumerate(modes)]
    try:
        sides = [(*(p.double() for p in m.projected(0, tiny_host.sites("fusion")[FUSION0])), mode == "official")
                 for m, mode in zip(modules, modes)]
    finally:
        for m in modules:
            m.detach()
    with torch.no_grad():
        reference = _appended(attn, vision, text, masks, sides)
        handles = [add_fusion_keys(attn, lambda v, t, s=side: FusionKeys(s[0], None if s[2] else s[1]))
                   for side in sides]
        (v_out, v_weights), (t_out, t_weights) = attn(vision, text, **masks)
        for handle in handles:
            handle.remove()
        plain = attn(vision, text, **masks)
    assert torch.allclose(v_out, reference[0], atol=1e-6, rtol=0) and torch.allclose(t_out, reference[1], atol=1e-6, rtol=0)
    assert not torch.allclose(t_out, plain[1][0], atol=1e-3)  # the image-side prototypes act in every mode
    assert v_weights.shape == plain[0][1].shape and t_weights.shape == plain[1][1].shape
    assert "forward" not in attn.__dict__  # the last removal gives the attention its own forward back


@pytest.mark.parametrize("mode", ["sync", "official"])
def test_sdpt_on_the_host_equals_append_and_slice(tiny_host, mode):
    vision, text, masks = _fusion_inputs()
    attn = tiny_host.sites("fusion")[FUSION0]
    module = build_module("sdpt", {"k": 10, "text_prompt_mask": mode}).attach(tiny_host)
    try:
        with torch.no_grad():
            (v_out, _), (t_out, _) = attn(vision, text, **masks)
            reference = _appended(attn, vision, text, masks, [(*module.projected(0, attn), mode == "official")])
    finally:
        module.detach()
    assert torch.allclose(v_out, reference[0], atol=1e-5) and torch.allclose(t_out, reference[1], atol=1e-5)
