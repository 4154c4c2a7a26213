"""SDPT exactly as DESIGN section 4 specifies."""
import pytest
import torch

from prompts import build_module
from prompts.sdpt import inverse_projection

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
