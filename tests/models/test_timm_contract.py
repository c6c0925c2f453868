"""timm's model contract on every family, checked against timm's own model with the same weights.

What timm's ``tests/test_models.py`` asks of a model (``num_features`` / ``head_hidden_size``,
``pretrained_cfg`` fields, ``reset_classifier(n, global_pool)``, ``global_pool`` at creation,
``feature_info``, ``forward_intermediates``, ``prune_intermediate_layers``,
``create_model(features_only=True)``), plus gradient checkpointing and torch.fx tracing. Tiny
variants and small inputs; bounds of REFERENCE.md section 4 (features 1e-5, fp32 CPU).
"""
import copy

import pytest
import timm
import torch
import torch.fx

from parity import assert_close as _assert_close
from parity import copy_weights, randomize_
from vitfer.models import create_model

# name -> (overrides given to both sides, input size)
FAMILIES = {
    "vit": ("vit_tiny_patch16_224", dict(img_size=32), 32),
    "deit": ("deit_tiny_distilled_patch16_224", dict(img_size=32), 32),  # two prefix tokens, two heads
    "convit": ("convit_tiny", dict(img_size=32), 32),
    "crossvit": ("crossvit_tiny_240", dict(depth=((1, 1, 0),) * 2), 240),
    "hybrid": ("vit_base_r50_s16_224", dict(img_size=64, depth=2, embed_dim=192, num_heads=3), 64),
    "resnet": ("resnet18d", {}, 64),
    "vgg": ("vgg16", {}, 64),
}
IDS = list(FAMILIES)
ATOL = 1e-5


def assert_close(ours, ref, atol, what):
    """Within ``atol * max(1, max|ref|)``. The hybrid gets the logits bound (1e-4 relative): its
    random R50 (GroupNorm, StdConv) leaves fp32 differences of ~3e-5 relative in the tokens."""
    if what.startswith("hybrid"):
        atol = 1e-4
    return _assert_close(ours, ref, atol * max(1.0, ref.abs().max().item()), what)


def _load_into_timm_features(net, sd):
    """timm's feature nets: FeatureGetterNet (``model.`` prefix) or FeatureListNet (flattened
    ``features_0`` names); every parameter of ``net`` must come from ``sd``."""
    target = net.model if hasattr(net, "model") else net
    keys = set(target.state_dict())
    mapped = {}
    for k, v in sd.items():
        for cand in (k, k.replace(".", "_", 1)):
            if cand in keys:
                mapped[cand] = v
    assert keys == set(mapped), sorted(keys - set(mapped))[:5]
    target.load_state_dict(mapped)


def _pair(family, seed=0, **extra):
    name, kw, _ = FAMILIES[family]
    ref = timm.create_model(name, **kw, **extra)
    randomize_(ref, seed)
    if family == "resnet":  # keep the activations O(1) through the depth (as tests/parity.py)
        with torch.no_grad():
            for blk in ref.modules():
                if hasattr(blk, "zero_init_last"):
                    blk.bn2.weight.mul_(0.2)
    ours = create_model(name, **kw, **extra)
    copy_weights(ref, ours)
    return ours.eval(), ref.eval()


@pytest.fixture(scope="module", params=IDS)
def family(request):
    ours, ref = _pair(request.param)
    size = FAMILIES[request.param][2]
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    return request.param, ours, ref, x


def _flat(out):
    return torch.cat([t.flatten(1) for t in out], 1) if isinstance(out, (list, tuple)) else out


def test_contract_fields_match_timm(family):
    fam, ours, ref, _ = family
    assert ours.num_features == ref.num_features
    assert ours.head_hidden_size == ref.head_hidden_size
    assert ours.feature_info == [dict(d) for d in ref.feature_info]
    for key in ("pool_size", "first_conv", "classifier", "fixed_input_size"):
        theirs = ref.pretrained_cfg.get(key)
        assert ours.pretrained_cfg.get(key) == (tuple(theirs) if isinstance(theirs, list) else theirs), key
    if fam == "vgg":  # timm's VGG: forward_features has 512 channels, the pre-logits 4096
        assert (ours.num_features, ours.head_hidden_size) == (512, 4096)


def test_forward_intermediates_match_timm(family):
    fam, ours, ref, x = family
    n = len(ref.feature_info)
    calls = [dict(), dict(indices=2), dict(indices=[0, -1], norm=True), dict(indices=1, stop_early=True)]
    if fam in ("vit", "deit", "convit", "crossvit", "hybrid"):
        calls.append(dict(indices=[1], output_fmt="NLC"))
    with torch.no_grad():
        for kw in calls:
            f_o, i_o = ours.forward_intermediates(x, **kw)
            f_r, i_r = ref.forward_intermediates(x, **kw)
            assert len(i_o) == len(i_r) <= n, kw
            for a, b in zip(i_o, i_r):
                assert_close(a, b, ATOL, f"{fam} intermediates {kw}")
            assert_close(_flat(f_o), _flat(f_r), ATOL, f"{fam} final features {kw}")
            only = ours.forward_intermediates(x, intermediates_only=True, **kw)
            assert all(torch.equal(a, b) for a, b in zip(only, i_o))
        # timm's test: the final output of forward_intermediates is forward_features
        f_o, _ = ours.forward_intermediates(x)
        assert torch.allclose(_flat(f_o), _flat(ours.forward_features(x)))


def test_intermediate_index_errors(family):
    _, ours, _, x = family
    n = len(ours.feature_info)
    with pytest.raises(AssertionError, match="out of range"):
        ours.forward_intermediates(x, indices=[n])
    with pytest.raises(ValueError, match="output_fmt"):
        ours.forward_intermediates(x, output_fmt="NHWC")


@pytest.mark.parametrize("fam", IDS)
def test_features_only_match_timm(fam):
    name, kw, size = FAMILIES[fam]
    ours_full, ref_full = _pair(fam)
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(2))
    out_indices = {"crossvit": (0, 3), "resnet": (1, 2, 3, 4), "vgg": (1, 3, 5)}.get(fam, (0, 1))
    for idx in ((None,) if fam != "hybrid" else ()) + (out_indices,):
        extra = {} if idx is None else dict(out_indices=idx)
        ref = timm.create_model(name, features_only=True, **kw, **extra).eval()
        ours = create_model(name, features_only=True, feature_cls="getter", **kw, **extra).eval()
        _load_into_timm_features(ref, ref_full.state_dict())
        ours.model.load_state_dict(ours_full.state_dict(), strict=False)
        assert ours.feature_info.channels() == ref.feature_info.channels()
        assert ours.feature_info.reduction() == ref.feature_info.reduction()
        assert ours.feature_info.module_name() == ref.feature_info.module_name()
        with torch.no_grad():
            fo, fr = ours(x), ref(x)
        fr = list(fr.values()) if isinstance(fr, dict) else fr
        assert len(fo) == len(fr) == len(ours.feature_info.channels())
        for a, b in zip(fo, fr):
            assert a.shape[1] == b.shape[1] and a.shape[0] == 1
            assert_close(a, b, ATOL, f"{fam} features_only {idx}")
    # the head and the unused layers are gone; dict output keys are the taps' modules
    assert ours.model.num_classes == 0
    d = create_model(name, features_only=True, feature_cls="dict", out_indices=out_indices, **kw).eval()
    with torch.no_grad():
        assert len(d(x)) == len(d.feature_info.channels())
    with pytest.raises(ValueError, match="feature_cls='hook'"):
        create_model(name, features_only=True, feature_cls="hook", **kw)
    with pytest.raises(TypeError, match="features_only"):
        create_model(name, out_indices=(1,), **kw)


@pytest.mark.parametrize("fam", IDS)
def test_prune_intermediate_layers_matches_timm(fam):
    ours, ref = _pair(fam)
    n = len(ref.feature_info)
    idx = {"crossvit": [0, 2], "hybrid": [0]}.get(fam, [0, 1])
    assert ours.prune_intermediate_layers(idx) == ref.prune_intermediate_layers(idx)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())
    assert ours.num_classes == 0 and ours.num_features == ref.num_features
    size = FAMILIES[fam][2]
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        for a, b in zip(ours.forward_intermediates(x, idx, intermediates_only=True),
                        ref.forward_intermediates(x, idx, intermediates_only=True)):
            assert_close(a, b, ATOL, f"{fam} pruned")
    assert max(idx) < n - 1  # something was pruned


def test_reset_classifier_and_global_pool_like_timm(family):
    """timm's test_model_default_cfgs: pooled features after reset_classifier(0), unpooled
    outputs after reset_classifier(0, '') and with create_model(num_classes=0, global_pool='')."""
    fam, ours, ref, x = family
    ours, ref = copy.deepcopy(ours), copy.deepcopy(ref)
    with torch.no_grad():
        ours.reset_classifier(0)
        ref.reset_classifier(0)
        assert_close(ours(x), ref(x), ATOL, f"{fam} pooled features")
        assert ours(x).shape == (2, ours.num_features if fam != "vgg" else ours.head_hidden_size)
        if fam == "crossvit":  # timm's CrossViT pools always (token or avg)
            with pytest.raises(ValueError, match="global_pool"):
                ours.reset_classifier(0, "")
            return
        ours.reset_classifier(0, "")
        ref.reset_classifier(0, "")
        assert_close(ours(x), ref(x), ATOL, f"{fam} unpooled")
        name, kw, _ = FAMILIES[fam]
        if fam == "deit":  # timm: the distilled heads read the two tokens; "" keeps that, other pools are refused
            assert ours(x).shape == (2, ours.num_features)
            with pytest.raises(AssertionError):
                timm.create_model(name, num_classes=0, global_pool="", **kw)
            with pytest.raises(ValueError, match="global_pool must be 'token'"):
                create_model(name, num_classes=0, global_pool="", **kw)
            with pytest.raises(ValueError, match="global_pool must be 'token'"):
                ours.reset_classifier(5, "avg")
            return
        m = create_model(name, num_classes=0, global_pool="", **kw).eval()
        assert m(x).shape == timm.create_model(name, num_classes=0, global_pool="", **kw).eval()(x).shape
        ours.reset_classifier(5, "avg")
        assert ours(x).shape == (2, 5)
    if fam in ("resnet", "vgg"):
        with pytest.raises(ValueError, match="needs num_classes=0"):
            create_model(name, num_classes=3, global_pool="", **kw)


@pytest.mark.parametrize("fam", IDS)
def test_grad_checkpointing_same_outputs_and_gradients(fam):
    ours, _ = _pair(fam)
    if fam == "vgg":  # checkpointing covers the conv features; its 100M-parameter ConvMlp head only slows the test
        ours.prune_intermediate_layers(5)
    ours.train()
    size = FAMILIES[fam][2]
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(3))
    ckpt = copy.deepcopy(ours)
    ckpt.set_grad_checkpointing(True)
    assert ckpt.grad_checkpointing and not ours.grad_checkpointing
    for m in (ours, ckpt):
        m.zero_grad()
        torch.manual_seed(0)
        _flat(m(x)).square().mean().backward()
    for (n, a), (_, b) in zip(ours.named_parameters(), ckpt.named_parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-5), n
    # the checkpointed path really recomputes: its graph keeps fewer tensors alive
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        _flat(ckpt(x)).sum()
    n_ckpt = sum(saved)
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        _flat(ours(x)).sum()
    assert n_ckpt < sum(saved)


@pytest.mark.parametrize("fam", IDS)
def test_fx_trace_gives_eager_logits(fam):
    ours, _ = _pair(fam)
    size = FAMILIES[fam][2]
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(4))
    g = torch.fx.symbolic_trace(ours)
    with torch.no_grad():
        assert torch.equal(g(x), ours(x))
    targets = {getattr(n.target, "__name__", str(n.target)) for n in g.graph.nodes if n.op == "call_function"}
    assert "_assert" in targets  # the input check is part of the graph
    if fam in ("vit", "deit", "hybrid", "crossvit"):
        # the attention dispatch is one node that picks SDPA or the hand-written path at run time
        assert "attention" in targets
    if fam == "convit":
        assert "gated_attention" in targets
    with pytest.raises(AssertionError, match="input channels"):
        g(torch.randn(1, 4, size, size))
    # timm's test_model_forward_fx_torchscript: the traced graph scripts too
    js = torch.jit.script(g)
    with torch.no_grad():
        assert_close(js(x), ours(x), ATOL, f"{fam} scripted fx graph")


def test_fx_feature_extractor_with_timms_tracer():
    """timm's test_model_forward_fx builds the graph with torchvision's feature extractor."""
    fx = pytest.importorskip("torchvision.models.feature_extraction")
    ours, _ = _pair("vit")
    x = torch.randn(1, 3, 32, 32)
    train_nodes, eval_nodes = fx.get_graph_node_names(ours)
    net = fx.create_feature_extractor(ours, return_nodes=[eval_nodes[-1]])
    with torch.no_grad():
        assert torch.equal(list(net(x).values())[0], ours(x))


@pytest.mark.parametrize("fam", IDS)
def test_torchscript_gives_eager_logits(fam):
    ours, _ = _pair(fam)
    size = FAMILIES[fam][2]
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(5))
    eager_types = [type(m) for m in ours.modules()]
    js = torch.jit.script(ours)
    with torch.no_grad():
        a, b = js(x), ours(x)
    assert_close(a, b, ATOL, f"{fam} scripted logits")
    # scripting compiled a copy of the module tree: the model keeps its fast eager layers
    assert [type(m) for m in ours.modules()] == eager_types
    assert set(js.state_dict()) == set(ours.state_dict())
    with pytest.raises(torch.jit.Error, match="input channels"):
        js(torch.randn(1, 4, size, size))


@pytest.mark.parametrize("fam", ["vit", "deit", "convit", "crossvit"])
def test_scripted_attention_dispatch_has_both_paths(fam):
    """On the CPU the scripted attention runs the hand-written path (its matmul-softmax-matmul in
    the graph, and no SDPA call executed); the SDPA branch for CUDA tensors is compiled into the
    same graph, chosen per call by ``q.is_cuda``."""
    ours, _ = _pair(fam)
    js = torch.jit.script(ours)
    first = getattr(js.blocks, "0")  # (indexing a scripted container gives the Python module)
    attn = getattr(first.fusion, "0").attn if fam == "crossvit" else first.attn
    graph = str(attn.inlined_graph)
    assert "aten::scaled_dot_product_attention" in graph and "prim::is_cuda" in graph
    assert "aten::softmax" in graph
    size = FAMILIES[fam][2]
    x = torch.randn(1, 3, size, size)
    with torch.autograd.profiler.profile() as prof, torch.no_grad():
        js(x)
    names = {e.name for e in prof.function_events}
    assert "aten::softmax" in names and "aten::scaled_dot_product_attention" not in names
