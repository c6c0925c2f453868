"""DeiT distillation (Touvron et al. 2021): timm's distilled DeiT models against timm with the same
weights (eval and one distilled training step), and the distillation token and head of ConViT and
CrossViT (no timm reference: the interface, the hand-computed mean, gradients, save/load).

Bounds of REFERENCE.md section 4 (fp32 CPU): logits within 1e-4 * max(1, max|ref|), features and
layers within 1e-5, gradients within 1e-4 of the largest gradient of the same tensor (parity.py).
"""
from __future__ import annotations

import copy

import pytest
import timm
import torch
import torch.fx
import torch.nn.functional as F
from parity import (
    GRAD_RTOL, assert_close, assert_logits_close, assert_same_state_dict_layout, copy_weights, randomize_,
)
from timm.models.vision_transformer import checkpoint_filter_fn as timm_filter

import vitfer
from vitfer.analysis import attention_distances, attention_rollout, rollout_map
from vitfer.models import create_model, get_pretrained_cfg, list_models
from vitfer.weights import CheckpointError, read_metadata, validate_state_dict

DEIT = ["deit_tiny_distilled_patch16_224", "deit_small_distilled_patch16_224", "deit_base_distilled_patch16_224"]
DEPTH = 4  # parity at reduced depth (the blocks are ViT's, checked at full depth in test_vit.py)


def _deit_pair(name: str, seed: int = 1, **kw):
    """(timm model, vitfer model) with the same random weights, 7 classes, in eval mode."""
    torch.manual_seed(0)
    ref = timm.create_model(name, num_classes=7, depth=DEPTH, **kw).eval()
    randomize_(ref, seed=seed)  # the default init (zero biases, equal heads' scale) would hide bugs
    ours = create_model(name, num_classes=7, depth=DEPTH, **kw).eval()
    copy_weights(ref, ours)
    return ref, ours


# -- DeiT distilled: timm parity -------------------------------------------------------------------
@pytest.mark.parametrize("name", DEIT)
def test_deit_eval_logits_and_features_match_timm(name):
    ref, ours = _deit_pair(name)
    assert_same_state_dict_layout(ours, ref)  # timm's keys, in timm's order: dist_token after pos_embed
    assert ours.num_prefix_tokens == ref.num_prefix_tokens == 2 and ours.distilled and not ours.distilled_training
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        f_ref = ref.forward_features(x)
        l_ref, p_ref = ref.forward_head(f_ref), ref.forward_head(f_ref, pre_logits=True)
        for impl in ("manual", "sdpa"):
            ours.set_attn_impl(impl)
            f = ours.forward_features(x)
            assert f.shape == (2, 2 + 196, ours.embed_dim)
            assert_close(f, f_ref, 1e-5, f"{impl} features")
            assert_logits_close(ours.forward_head(f), l_ref, f"{impl} logits")
            assert_logits_close(ours.forward_head(f, pre_logits=True), p_ref, f"{impl} pre-logits")
            assert_logits_close(ours(x), l_ref, f"{impl} forward")
        # the eval logits are the mean of the two heads, computed by hand
        by_hand = (ours.head(f[:, 0]) + ours.head_dist(f[:, 1])) / 2
        assert_close(ours.forward_head(f), by_hand, 1e-6, "mean of the heads")
        assert_close(ours.forward_head(f, pre_logits=True), (f[:, 0] + f[:, 1]) / 2, 1e-6, "mean of the tokens")
    ours.set_attn_impl("auto")


@pytest.mark.parametrize("name", DEIT)
def test_deit_distilled_train_step_matches_timm(name):
    """Distilled training on both sides: the (cls, dist) logits, the gradients of a DeiT hard
    distillation loss and the weights after one SGD step (momentum) agree with timm's."""
    ref, ours = _deit_pair(name, seed=4, img_size=64)
    ref.train(), ours.train()
    ref.set_distilled_training(True)
    ours.set_distilled_training(True)
    assert ours.distilled_training
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 3, 64, 64, generator=g)
    y, y_teacher = torch.tensor([0, 3, 6]), torch.tensor([1, 3, 5])
    opts = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (ref, ours)]
    before = {k: v.detach().clone() for k, v in ours.state_dict().items()}
    outs = []
    for m in (ref, ours):
        out = m(x)
        assert isinstance(out, tuple) and len(out) == 2 and out[0].shape == out[1].shape == (3, 7)
        (0.5 * F.cross_entropy(out[0], y) + 0.5 * F.cross_entropy(out[1], y_teacher)).backward()
        outs.append(out)
    assert_logits_close(outs[1][0], outs[0][0], "train-mode class logits")
    assert_logits_close(outs[1][1], outs[0][1], "train-mode distillation logits")
    ref_params = dict(ref.named_parameters())
    for n, p in ours.named_parameters():
        scale = ref_params[n].grad.abs().max().item()
        assert scale > 0, f"no gradient reaches {n}"
        assert_close(p.grad, ref_params[n].grad, GRAD_RTOL * scale, f"grad of {n}")
    for opt in opts:
        opt.step()
    for n, p in ours.named_parameters():
        assert_close(p, ref_params[n], 1e-6, f"{n} after the step")
    moved = {n: (p - before[n]).abs().max().item() for n, p in ours.named_parameters()}
    assert moved["dist_token"] > 0 and moved["head_dist.weight"] > 0
    # out of distilled training, or in eval mode, the forward is the mean again
    ours.set_distilled_training(False)
    assert isinstance(ours(x), torch.Tensor)
    ours.set_distilled_training(True)
    with torch.no_grad():
        cls, dist = ours(x)
        mean = ours.eval()(x)
    assert_close(mean, (cls + dist) / 2, 1e-6, "eval = mean of the training pair")


def test_deit_registry_and_pretrained_cfgs_are_timms():
    assert set(DEIT) <= set(list_models(family="vit"))
    assert list_models("deit_*") == sorted(DEIT)
    for name in DEIT:
        cfg, theirs = get_pretrained_cfg(name), timm.models.get_pretrained_cfg(name).to_dict()
        assert cfg.hf_hub_id == theirs["hf_hub_id"] == f"timm/{name}.fb_in1k"
        for key in ("input_size", "crop_pct", "interpolation", "mean", "std", "num_classes", "first_conv",
                    "classifier", "fixed_input_size", "license"):
            assert getattr(cfg, key) == (tuple(theirs[key]) if isinstance(theirs[key], list) else theirs[key]), key
        assert cfg.classifier == ("head", "head_dist") and cfg.mean == (0.485, 0.456, 0.406)
    m = create_model("deit_tiny_distilled_patch16_224")
    assert m.num_params() == sum(p.numel() for p in timm.create_model("deit_tiny_distilled_patch16_224").parameters())
    assert m.num_params() == 5_910_800
    assert m.get_classifier() == (m.head, m.head_dist)
    assert m.pretrained_cfg["classifier"] == ("head", "head_dist")
    assert {"pos_embed", "cls_token", "dist_token"} <= m.no_weight_decay()
    # the ViT with distilled=True is the same model
    v = create_model("vit_tiny_patch16_224", distilled=True)
    assert [(k, t.shape) for k, t in v.state_dict().items()] == [(k, t.shape) for k, t in m.state_dict().items()]
    assert v.pretrained_cfg["classifier"] == ("head", "head_dist")


def test_deit_checkpoint_converts_and_loads(tmp_path):
    """A DeiT release .pth (state dict under "model", timm's key names) loads 1:1; another class
    count re-initialises both heads; another input size resamples pos_embed behind the 2 prefix rows."""
    name = "deit_tiny_distilled_patch16_224"
    ref = randomize_(timm.create_model(name), seed=3).eval()
    sd = ref.state_dict()
    path = tmp_path / "deit_tiny_distilled_patch16_224-b40b3cf7.pth"
    torch.save({"model": sd}, path)

    full = create_model(name, pretrained=str(path)).eval()
    assert all(torch.equal(full.state_dict()[k], v) for k, v in sd.items())
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        assert_logits_close(full(x), ref(x), "pretrained logits")

    seven = create_model(name, pretrained=str(path), num_classes=7)
    assert seven.head.weight.shape == seven.head_dist.weight.shape == (7, 192)
    for k, v in seven.state_dict().items():
        if k.startswith(("head.", "head_dist.")):
            assert v.shape[0] == 7
        else:
            assert torch.equal(v, sd[k]), k

    small = create_model(name, pretrained=str(path), img_size=32)
    ref32 = timm.create_model(name, img_size=32)
    expected = timm_filter(sd, ref32)["pos_embed"]  # timm keeps the cls and dist rows, resamples the grid
    assert small.pos_embed.shape == expected.shape == (1, 2 + 4, 192)
    assert_close(small.pos_embed, expected, 1e-6, "resampled pos_embed")
    assert torch.equal(small.pos_embed[:, :2], sd["pos_embed"][:, :2])
    moved = full.copy()
    moved.set_input_size(32)  # the same resampling on a built model
    assert_close(moved.pos_embed, expected, 1e-6, "set_input_size pos_embed")
    with torch.no_grad():
        assert_logits_close(moved(x[:, :, :32, :32]), small(x[:, :, :32, :32]), "logits at 32")

    # a ViT checkpoint (no distillation token) does not silently initialise a distilled model, and back
    vit_path = tmp_path / "vit.pth"
    torch.save(timm.create_model("vit_tiny_patch16_224").state_dict(), vit_path)
    with pytest.raises(CheckpointError, match=r"(?s)missing keys \(1\): dist_token.*fit 'vit_tiny_patch16_224'"):
        create_model(name, pretrained=str(vit_path))
    with pytest.raises(CheckpointError, match="unexpected keys.*dist_token"):
        create_model("vit_tiny_patch16_224", pretrained=str(path))
    with pytest.raises(CheckpointError, match="no distillation token.*distilled=True"):
        create_model("vit_tiny_patch16_224", pretrained=str(vit_path), distilled=True)
    # and a ViT checkpoint given to another family is recognised as the ViT, not its DeiT twin
    with pytest.raises(CheckpointError, match="'vit_tiny_patch16_224'"):
        validate_state_dict("convit_tiny", torch.load(vit_path, weights_only=True), "vit.pth")


# -- ConViT and CrossViT with distillation tokens ---------------------------------------------------
FAMILIES = {
    # name, overrides (small and fast), input size
    "convit": ("convit_tiny", dict(img_size=32), 32),
    "crossvit": ("crossvit_tiny_240", dict(depth=((1, 1, 0),) * 2), 240),
}
# the ViT hybrids inherit the ViT's distillation (e.g. the scratch recipe's model); no timm reference
WITH_HYBRID = {**FAMILIES, "hybrid": ("vit_tiny_r18d_48", {}, 48)}


def _perturb_(model, seed: int):
    """Random offsets on every parameter (zero biases and equal heads would hide bugs); unlike
    ``randomize_`` the derived buffers (GPSA's relative indices) stay as they are."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    return model


def _distilled(fam: str, seed: int = 7):
    name, kw, size = WITH_HYBRID[fam]
    torch.manual_seed(seed)
    m = _perturb_(create_model(name, num_classes=5, distilled=True, **kw), seed)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))
    return m, x


def _heads_by_hand(fam: str, m, feats):
    """(cls_logits, dist_logits) from forward_features, computed without forward_head."""
    if fam != "crossvit":
        return m.head(feats[:, 0]), m.head_dist(feats[:, 1])
    cls = torch.stack([m.head[i](t[:, 0]) for i, t in enumerate(feats)]).mean(0)
    dist = torch.stack([m.head_dist[i](t[:, 1]) for i, t in enumerate(feats)]).mean(0)
    return cls, dist


@pytest.mark.parametrize("fam", list(WITH_HYBRID))
def test_distilled_outputs_pair_in_training_mean_at_eval(fam):
    m, x = _distilled(fam)
    assert m.distilled and m.num_prefix_tokens == 2 and not m.distilled_training
    m.eval()
    with torch.no_grad():
        feats = m.forward_features(x)
        cls, dist = _heads_by_hand(fam, m, feats)
        logits = m(x)
        assert_close(logits, (cls + dist) / 2, 1e-6, f"{fam} eval logits = mean of the heads")
        assert_close(m.forward_head(feats), logits, 1e-6, f"{fam} forward_head")
        pre = m.forward_head(feats, pre_logits=True)
        if fam != "crossvit":
            assert feats.shape[1] == 2 + m.patch_embed.num_patches
            assert_close(pre, (feats[:, 0] + feats[:, 1]) / 2, 1e-6, "pre-logits")
        else:
            assert [t.shape[1] for t in feats] == [2 + pe.num_patches for pe in m.patch_embed]
            assert_close(pre, torch.cat([(t[:, 0] + t[:, 1]) / 2 for t in feats], 1), 1e-6, "pre-logits")
    assert pre.shape == (2, m.num_features)
    m.train()
    for bn in m.modules():  # the hybrid's ResNet stages: running statistics, so that train = eval numbers
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.eval()
    assert isinstance(m(x), torch.Tensor)  # train mode without distilled training: the mean
    m.set_distilled_training()
    out = m(x)
    assert isinstance(out, tuple) and len(out) == 2
    assert_close(out[0], cls, 1e-5, f"{fam} train class logits")  # no dropout configured: same as eval
    assert_close(out[1], dist, 1e-5, f"{fam} train distillation logits")
    (F.cross_entropy(out[0], torch.tensor([0, 1])) + F.cross_entropy(out[1], torch.tensor([2, 3]))).backward()
    tokens = ["dist_token"] if fam != "crossvit" else ["dist_token_0", "dist_token_1"]
    params = dict(m.named_parameters())
    for n in tokens + [n for n in params if n.startswith("head_dist.")]:
        assert params[n].grad is not None and params[n].grad.abs().max() > 0, f"no gradient reaches {n}"
    assert m.get_classifier() == (m.head, m.head_dist)
    assert set(tokens) <= m.no_weight_decay()
    # reset_classifier replaces both heads
    m.reset_classifier(3)
    m.eval()
    with torch.no_grad():
        assert m(x).shape == (2, 3)
    heads = [m.head_dist] if fam != "crossvit" else list(m.head_dist)
    assert all(h.out_features == 3 for h in heads)


@pytest.mark.parametrize("fam", list(WITH_HYBRID))
def test_distilled_save_load_round_trip(fam, tmp_path):
    m, x = _distilled(fam)
    m.eval()
    path = vitfer.save(m, tmp_path / f"{fam}.safetensors", class_names=list("abcde"))
    assert read_metadata(path)["overrides"]["distilled"] is True  # recorded from the config diff
    back = vitfer.load(path)
    assert back.distilled and back.num_prefix_tokens == 2
    assert list(back.state_dict()) == list(m.state_dict())
    with torch.no_grad():
        assert torch.equal(back(x), m(x))


@pytest.mark.parametrize("fam", list(FAMILIES))
def test_not_distilled_is_unchanged(fam):
    """distilled=False (the default): timm's keys in timm's order and timm's outputs, no distillation
    attributes in the state dict; set_distilled_training and other pools refuse a distilled model."""
    name, kw, size = FAMILIES[fam]
    ref = randomize_(timm.create_model(name, num_classes=5, **kw), seed=8).eval()
    ours = create_model(name, num_classes=5, **kw).eval()
    assert_same_state_dict_layout(ours, ref)
    copy_weights(ref, ours)
    assert not ours.distilled and ours.num_prefix_tokens == 1 and ours.get_classifier() is ours.head
    assert not any("dist" in k for k in ours.state_dict())
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        assert_logits_close(ours(x), ref(x))
    with pytest.raises(ValueError, match="no distillation token"):
        ours.set_distilled_training(True)
    with pytest.raises(ValueError, match="global_pool must be 'token'"):
        create_model(name, distilled=True, global_pool="avg", **kw)


def test_convit_distillation_token_joins_with_the_class_token():
    """Same weights as timm's ConViT on the shared keys: the GPSA blocks (patches only) give timm's
    outputs exactly, the distillation token joining just before block local_up_to_layer."""
    name, kw, size = FAMILIES["convit"]
    ref = randomize_(timm.create_model(name, num_classes=5, **kw), seed=10).eval()
    ours = create_model(name, num_classes=5, distilled=True, **kw).eval()
    ours.load_state_dict(ref.state_dict(), strict=False)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(11))
    local = ours.local_up_to_layer
    idx = list(range(local + 1))
    with torch.no_grad():
        mine = ours.forward_intermediates(x, indices=idx, output_fmt="NLC", intermediates_only=True)
        theirs = ref.forward_intermediates(x, indices=idx, output_fmt="NLC", intermediates_only=True)
        maps = ours.attention_maps(x)
    for i in range(local):
        assert_close(mine[i], theirs[i], 1e-5, f"GPSA block {i}")
    assert mine[local].shape == theirs[local].shape  # both tokens removed from the intermediates
    assert maps[local - 1].shape[-1] == 4 and maps[local].shape[-1] == 2 + 4  # (cls, dist, patches)


def test_crossvit_fusion_exchanges_class_tokens_only():
    """One multi-scale block by hand: each branch's blocks see (cls, dist, patches); the fusion of
    branch d reads [projected cls_d; patches of the other branch] (no distillation token) and the
    output keeps branch d's own distillation token and patches."""
    m, x = _distilled("crossvit")
    m.eval()
    blk = m.blocks[0]
    with torch.no_grad():
        xs = _embed_tokens(m, x)
        for mine, built in zip(xs, m._embed(x)):
            assert_close(built, mine, 1e-6, "embedding (cls, dist, patches) + pos_embed")
        out = blk(xs)
        outs_b = [blk.blocks[d](xs[d]) for d in range(2)]
        for d in range(2):
            o = 1 - d
            tmp = torch.cat([blk.projs[d](outs_b[d][:, :1]), outs_b[o][:, 2:]], dim=1)
            cls = blk.revert_projs[d](blk.fusion[d](tmp))
            assert_close(out[d], torch.cat([cls, outs_b[d][:, 1:]], dim=1), 1e-6, f"branch {d}")
        maps = m.attention_maps(x)
    for d in range(2):
        n_o = m.patch_embed[1 - d].num_patches
        assert maps[d]["cross"][0].shape[-2:] == (1, 1 + n_o)
        assert maps[d]["self"][0].shape[-1] == 2 + m.patch_embed[d].num_patches


def _embed_tokens(m, x):
    """The per-branch (cls, dist, patches) tokens with positions, as CrossViT's forward builds them."""
    out = []
    for i, pe in enumerate(m.patch_embed):
        xi = F.interpolate(x, size=m.img_size_scaled[i], mode="bicubic", align_corners=False) \
            if tuple(x.shape[-2:]) != tuple(m.img_size_scaled[i]) else x
        t = pe(xi)
        cls, dist, pos = [getattr(m, f"{p}_{i}") for p in ("cls_token", "dist_token", "pos_embed")]
        out.append(torch.cat([cls.expand(len(t), -1, -1), dist.expand(len(t), -1, -1), t], dim=1) + pos)
    return out


@pytest.mark.parametrize("name", ["deit_tiny_distilled_patch16_224", "convit_tiny"])
def test_attention_analysis_with_two_prefix_tokens(name):
    m = create_model(name, num_classes=5, img_size=32, distilled=True).eval()
    x = torch.randn(2, 3, 32, 32)
    R = attention_rollout(m, x)
    assert R.shape == (2, 2 + 4, 2 + 4)
    assert_close(R.sum(-1), torch.ones(2, 6), 1e-5, "rollout rows sum to one")
    assert rollout_map(m, x).shape == (2, 2, 2)
    assert attention_distances(m, x).shape == (len(m.blocks), m.blocks[-1].attn.num_heads)


def test_distilled_scripts_and_traces():
    """TorchScript and torch.fx of the distilled ConViT and CrossViT give the eager logits (the
    DeiT ViT is in test_timm_contract's families)."""
    for fam in FAMILIES:
        m, x = _distilled(fam)
        m.eval()
        with torch.no_grad():
            eager = m(x)
            assert_close(torch.jit.script(copy.deepcopy(m))(x), eager, 1e-5, f"{fam} scripted")
            assert torch.equal(torch.fx.symbolic_trace(m)(x), eager)


@pytest.mark.parametrize("fam", list(FAMILIES))
def test_distilled_intermediates_features_only_and_checkpointing(fam):
    """forward_intermediates drops both prefix tokens (maps of the non-distilled model's shapes);
    features_only gives forward_intermediates' maps; grad checkpointing gives the same gradients
    in distilled training."""
    name, kw, size = FAMILIES[fam]
    m, x = _distilled(fam)
    m.eval()
    plain = create_model(name, num_classes=5, **kw).eval()
    with torch.no_grad():
        ys = m.forward_intermediates(x, intermediates_only=True)
        ys_plain = plain.forward_intermediates(x, intermediates_only=True)
        assert [y.shape for y in ys] == [y.shape for y in ys_plain]
        feats = create_model(name, num_classes=5, distilled=True, features_only=True, **kw).eval()
        feats.model.load_state_dict(m.state_dict(), strict=False)
        for a, b in zip(feats(x), m.forward_intermediates(x, indices=feats.out_indices, intermediates_only=True)):
            assert_close(a, b, 1e-6, f"{fam} features_only")
    m.train()
    ckpt = copy.deepcopy(m)
    ckpt.set_grad_checkpointing(True)
    for mod in (m, ckpt):
        mod.set_distilled_training(True)
        cls, dist = mod(x)
        (cls.square().mean() + dist.square().mean()).backward()
    for (n, a), (_, b) in zip(m.named_parameters(), ckpt.named_parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-5), n
