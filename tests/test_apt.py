"""APT and the deep prompt it approximates, on the tiny ViLT (and APT on the other hosts' attentions)."""
import pytest
import torch

from continual.hosts.base import Batch
from prompts import Stack, build_module
from prompts.apt import ApproximatedPrompt

pytestmark = pytest.mark.fast  # unit-level: `make test-fast`

ANSWERS = ["yes", "no", "2", "red", "fish"]
QUESTIONS = ["is there a fish?", "how many red circle are there in the picture?"]


def _batch(host, questions=QUESTIONS, train=False):
    pixels = torch.randn(len(questions), 3, host.image_size, host.image_size,
                         generator=torch.Generator().manual_seed(3))
    targets = [{"answer_ids": torch.tensor([i % 2]), "answer_scores": torch.tensor([1.0])}
               for i in range(len(questions))] if train else None
    return Batch("vqa", pixels, ANSWERS, targets=targets, questions=list(questions))


def _attention_lengths(host):
    """Token count each self-attention of the host sees, per call."""
    lengths, handles = [], []
    for site in host.attention_sites().values():
        handles.append(site.attention.register_forward_pre_hook(lambda m, args: lengths.append(args[0].shape[1])))
    return lengths, handles


def test_apt_at_attach_keys_are_the_prompts_scale_is_one_and_delta_acts(tiny_vilt_host):
    """W2 = 0 and s = 0 make K_p = P and exp(s) = 1 exactly; the output is then x + max(A) * A P with
    A = ReLU(X P^T): not the host's output (delta acts from the start), but that formula, bit for bit."""
    host = tiny_vilt_host
    module = build_module("apt", {"prompts": 8}).attach(host)
    captured = {}
    site = host.attention_sites()["vilt.encoder.layer.1.attention"]
    handles = [site.attention.register_forward_pre_hook(lambda m, args: captured.setdefault("X", args[0])),
               site.out_proj.register_forward_hook(lambda m, args, out: captured.setdefault("x", out))]
    try:
        block = module.blocks[1]
        assert torch.equal(block.keys(), block.prompts) and block.log_scale.exp().item() == 1.0
        with torch.no_grad():
            module.enabled = False
            plain = host.logits(_batch(host))
            module.enabled = True
            prompted = host.logits(_batch(host))
        X, x = captured["X"], captured["x"]
        A = torch.relu(X @ block.prompts.t())
        expected = x + A.max(-1, keepdim=True).values * (A @ block.prompts)
        assert torch.equal(block(x, X), expected)
        assert not torch.equal(prompted, plain), "delta should act at attach"
    finally:
        for h in handles:
            h.remove()
        module.detach()


def test_apt_leaves_the_token_count_unchanged_while_the_deep_prompt_grows_it(tiny_vilt_host):
    host = tiny_vilt_host
    lengths, handles = _attention_lengths(host)
    try:
        with torch.no_grad():
            host.logits(_batch(host))
            plain = list(lengths)
            for method, config, extra in (("apt", {"prompts": 16}, 0), ("deep_prompt", {"tokens": 16}, 16)):
                lengths.clear()
                module = build_module(method, config).attach(host)
                host.logits(_batch(host))
                module.detach()
                assert lengths == [n + extra for n in plain], method
    finally:
        for h in handles:
            h.remove()


def test_gradients_reach_only_the_module_being_trained(tiny_vilt_host):
    host = tiny_vilt_host
    stack = Stack(host)
    try:
        below = stack.push(build_module("apt", {"prompts": 4}, task="a"))
        top = stack.push(build_module("apt", {"prompts": 4}, task="b"))
        params = stack.train_only(top)
        loss, _ = host.loss(_batch(host, train=True))
        loss.backward()
        assert all(p.grad is not None for p in params)
        # W1's gradient passes through W2, which starts at zero (as LoRA's A through B)
        moved = {n for n, p in top.named_parameters() if p.grad.abs().sum() > 0}
        assert moved == {n for n, _ in top.named_parameters() if not n.endswith(".down")}
        assert all(p.grad is None for p in below.parameters()) and all(p.grad is None for p in host.parameters())
    finally:
        stack.clear()
        host.requires_grad_(False)


def test_no_gradient_flows_through_the_max_weight():
    torch.manual_seed(0)
    block = ApproximatedPrompt(width=6, prompts=5, rank=2, init_std=0.5, dropout=0.0)
    x, X = torch.randn(2, 3, 6), torch.randn(2, 3, 6)

    def manual(detach: bool):
        A = torch.relu(X @ block.keys().t())
        w = A.max(-1, keepdim=True).values
        return (x + (w.detach() if detach else w) * (A @ block.prompts)) * block.log_scale.exp()

    grads = {}
    for name, fn in (("module", lambda: block(x, X)), ("detached", lambda: manual(True)),
                     ("through_max", lambda: manual(False))):
        block.zero_grad()
        fn().pow(2).sum().backward()
        grads[name] = block.prompts.grad.clone()
    assert torch.allclose(grads["module"], grads["detached"])
    assert not torch.allclose(grads["module"], grads["through_max"])


def test_stacked_apt_modules_compose_and_switch(tiny_vilt_host):
    host = tiny_vilt_host
    stack = Stack(host)
    try:
        first = stack.push(build_module("apt", {"prompts": 4}, task="a"))
        with torch.no_grad():
            only_first = host.logits(_batch(host))
            second = stack.push(build_module("apt", {"prompts": 4}, task="b"))
            both = host.logits(_batch(host))
            second.enabled = False
            assert torch.equal(host.logits(_batch(host)), only_first)
            second.enabled, first.enabled = True, False
            only_second = host.logits(_batch(host))
        assert not torch.equal(both, only_first) and not torch.equal(both, only_second)
    finally:
        stack.clear()


def test_the_deep_prompt_keeps_padding_masked(tiny_vilt_host):
    """A question's answer scores do not depend on the padding a longer question in its batch adds:
    the grown attention mask still hides the padding from every token, prompts included."""
    host = tiny_vilt_host
    module = build_module("deep_prompt", {"tokens": 8}).attach(host)
    try:
        with torch.no_grad():
            together = host.logits(_batch(host))[0]
            alone = host.logits(_batch(host, questions=QUESTIONS[:1]))[0]
        assert torch.allclose(together, alone, atol=1e-5)
    finally:
        module.detach()


@pytest.mark.parametrize("fixture", ["tiny_host", "tiny_clip_host"])
def test_apt_acts_on_every_attention_of_the_other_hosts(request, fixture):
    host = request.getfixturevalue(fixture)
    module = build_module("apt", {"prompts": 4}).attach(host)
    try:
        sites = host.attention_sites()
        assert len(module.blocks) == len(sites) > 0
        assert [b.prompts.shape[1] for b in module.blocks] == [s.out_proj.out_features for s in sites.values()]
    finally:
        module.detach()


def test_apt_stacks_on_an_sdpt_module_of_grounding_dino(tiny_host):
    phrases = ["red circle", "fish"]
    targets = [{"class_labels": torch.tensor([0]), "boxes": torch.tensor([[.3, .3, .2, .2]])},
               {"class_labels": torch.tensor([1]), "boxes": torch.tensor([[.5, .5, .4, .4]])}]
    pixels = torch.randn(2, 3, tiny_host.image_size, tiny_host.image_size, generator=torch.Generator().manual_seed(0))
    flags = [p.requires_grad for p in tiny_host.parameters()]
    stack = Stack(tiny_host)
    try:
        sdpt = stack.push(build_module("sdpt", {"k": 2}, task="a"))
        with torch.no_grad():
            sdpt_only = tiny_host.loss(Batch("detection", pixels, phrases, targets=targets))[0]
        apt = stack.push(build_module("apt", {"prompts": 4}, task="b"))
        params = stack.train_only(apt)
        loss, _ = tiny_host.loss(Batch("detection", pixels, phrases, targets=targets))
        loss.backward()
        assert loss.item() != sdpt_only.item()
        assert all(p.grad is not None for p in params) and all(p.grad is None for p in sdpt.parameters())
    finally:
        stack.clear()
        for p, flag in zip(tiny_host.parameters(), flags):  # the shared host as later tests expect it
            p.requires_grad_(flag)


def test_the_keys_values_deep_prompt_gives_the_sequence_prompts_outputs_at_lower_cost(tiny_vilt_host):
    """The APT paper's deep prompt (prompts as each attention's keys and values only) and ours (prompts in
    the sequence, dropped after each layer) give the real tokens the same outputs, padding masked in both;
    the keys-values form never grows the attention's queries, so it costs fewer FLOPs."""
    from torch.utils.flop_counter import FlopCounterMode

    host = tiny_vilt_host
    sequence = build_module("deep_prompt", {"tokens": 8})
    keys_values = build_module("deep_prompt", {"tokens": 8, "keys_values_only": True})
    flops = {}
    outputs = {}
    for name, module in (("sequence", sequence), ("keys_values", keys_values)):
        module.attach(host)
        if name == "keys_values":
            module.load_state_dict(sequence.state_dict())  # the same prompts
        try:
            with torch.no_grad(), FlopCounterMode(display=False) as counter:
                outputs[name] = host.logits(_batch(host))
            flops[name] = counter.get_total_flops()
            with torch.no_grad():
                alone = host.logits(_batch(host, questions=QUESTIONS[:1]))[0]
            assert torch.allclose(outputs[name][0], alone, atol=1e-5), name  # padding stays masked
        finally:
            module.detach()
    with torch.no_grad():
        plain = host.logits(_batch(host))
    assert not torch.allclose(outputs["sequence"], plain, atol=1e-4)  # the prompts act
    assert torch.allclose(outputs["keys_values"], outputs["sequence"], atol=1e-5)
    assert flops["keys_values"] < flops["sequence"]
    assert all("forward" not in site.attention.attention.__dict__ for site in host.attention_sites().values())
