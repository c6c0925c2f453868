"""Pretrained loading through the real hub code path, one model per family, offline.

For each family a timm model (random weights) is saved into a local Hugging Face cache
(``models--timm--<arch>.<tag>/snapshots/<commit>/model.safetensors`` + ``refs/main``), then
``create_model(name, pretrained=True)`` runs with ``HF_HUB_OFFLINE=1`` / ``HF_HUB_CACHE`` and must
give timm's logits. The same model then goes through ``vitfer.save`` / ``vitfer.load`` (bit-exact)
and the family's original release format is converted back to identical tensors.
"""
from __future__ import annotations

import argparse
import gc
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
from parity import assert_logits_close, randomize_
from weights_helpers import (
    FAMILY_MODELS,
    fast_random_timm,
    make_hub_cache,
    model_input,
    offline_env,
    state_dicts_equal,
    timm_crossvit_to_ibm,
    timm_vgg_to_torchvision,
    timm_vit_to_npz,
)

import vitfer
from vitfer.models.registry import create_model, get_model_spec
from vitfer.weights.convert import build_meta, import_family, meta_init
from vitfer.weights.hub import converted_cache_path, fetch_state_dict
from vitfer.weights.pretrained import adapt_state_dict, load_state_dict_strict

# All six families (one model each), each through every step below.
TESTED_FAMILIES = ("vit", "convit", "crossvit", "vit_hybrid", "resnet", "vgg")
# Big models: batch 1, and the save/load round trip compares tensors and configs, not outputs.
HEAVY = {"vit_hybrid", "resnet", "vgg"}


@dataclass
class Case:
    family: str
    name: str
    cfg: Any  # PretrainedCfg
    ref: torch.nn.Module  # timm model holding the "pretrained" weights
    sd: dict
    x: torch.Tensor
    ref_out: torch.Tensor
    root: Path
    model: Any = None  # the vitfer model loaded from the hub (filled by the first test)


@pytest.fixture(scope="module", params=TESTED_FAMILIES)
def case(request, tmp_path_factory):
    fam = request.param
    name = FAMILY_MODELS[fam]
    assert import_family(fam) is not None, f"vitfer.models.{fam} is missing"
    cfg = get_model_spec(name).pretrained_cfg
    root = tmp_path_factory.mktemp(f"hub_{fam}")
    # The hub checkpoint has the head of the default checkpoint (none for vit_base_r50_s16_224.orig_in21k).
    if fam in HEAVY:
        ref = fast_random_timm(name, seed=1, num_classes=cfg.num_classes)
    else:
        ref = timm.create_model(name, pretrained=False, num_classes=cfg.num_classes)
        randomize_(ref, seed=1)
        ref.eval()
    sd = ref.state_dict()
    x = model_input(cfg.to_dict(), batch=1 if fam in HEAVY else 2)
    with torch.no_grad():
        ref_out = ref(x)
    with offline_env(root) as env:
        make_hub_cache(env["hub"], cfg.hf_hub_id, sd, config={"architecture": name, "num_classes": cfg.num_classes})
        yield Case(fam, name, cfg, ref, sd, x, ref_out, root)
    del ref, sd
    gc.collect()


def _loaded(case):
    """The vitfer model loaded from the hub by the first test (built here if that one did not run)."""
    if case.model is None:
        case.model = create_model(case.name, pretrained=True, num_classes=case.cfg.num_classes).eval()
    return case.model


def test_pretrained_from_offline_hub(case):
    """create_model(name, pretrained=True): hub -> convert -> cache -> load; timm's logits."""
    model = create_model(case.name, pretrained=True, num_classes=case.cfg.num_classes).eval()
    assert state_dicts_equal(model.state_dict(), case.sd) == []
    with torch.no_grad():
        out = model(case.x)
    diff = assert_logits_close(out, case.ref_out, f"{case.name} pretrained logits")
    print(f"\n{case.name}: pretrained (offline hub) vs timm, max |logits diff| = {diff:.2e}")
    cache = converted_cache_path(case.cfg.hf_hub_id)
    assert cache.is_file()
    assert [p.name for p in cache.parent.iterdir()] == [cache.name]  # no temp files left
    assert model.pretrained_source == f"hf-hub:{case.cfg.hf_hub_id}@main"
    case.model = model


def test_pretrained_other_num_classes(case, caplog):
    """A different num_classes re-initialises only the head (logged); every other tensor is timm's.

    Big models run the same adaptation and strict-load code on a meta-device model (shapes only)
    instead of being built once more."""
    n = 7 if case.cfg.num_classes != 7 else 5
    classifiers = (case.cfg.classifier,) if isinstance(case.cfg.classifier, str) else case.cfg.classifier
    with caplog.at_level(logging.INFO, logger="vitfer.weights"):
        if case.family in HEAVY:
            model = build_meta(case.name, num_classes=n)
            res = fetch_state_dict(case.name, True)
            sd, fresh = adapt_state_dict(model, res.state_dict, case.name, res.source)
            with warnings.catch_warnings():  # "copying into a meta parameter is a no-op"
                warnings.simplefilter("ignore", UserWarning)
                load_state_dict_strict(model, sd, res.source, allow_missing=fresh)
            heads = [k for k in model.state_dict() if k.rsplit(".", 1)[0] in classifiers]
            assert sorted(fresh) == sorted(heads)
        else:
            model = create_model(case.name, pretrained=True, num_classes=n).eval()
            sd = model.state_dict()
            heads = [k for k in sd if k.rsplit(".", 1)[0] in classifiers]
    assert "re-initialised" in caplog.text or "no classifier" in caplog.text, caplog.text
    assert model.num_classes == n
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert heads and all(shapes[k][0] == n for k in heads), heads
    assert state_dicts_equal({k: v for k, v in sd.items() if k not in heads},
                             {k: v for k, v in case.sd.items() if k not in heads}) == []


# Input sizes for the img_size test (CrossViT: a multiple of 12 whose 224/240 is a multiple of 16).
OTHER_IMG_SIZE = {"vit": 160, "convit": 160, "crossvit": 120}


def test_pretrained_other_img_size(case):
    """Another img_size: the family's checkpoint_filter_fn resamples the position embeddings;
    every other tensor is the checkpoint's."""
    if case.family in ("resnet", "vgg"):  # CNNs: the pretrained model itself takes another size
        with torch.no_grad():
            out = _loaded(case)(torch.randn(1, 3, 160, 160))
        assert out.shape == (1, case.cfg.num_classes) and torch.isfinite(out).all()
        return
    if case.family == "vit_hybrid":  # same adaptation + strict load on a meta-device model
        model = build_meta(case.name, img_size=192, num_classes=case.cfg.num_classes)
        res = fetch_state_dict(case.name, True)
        sd, fresh = adapt_state_dict(model, res.state_dict, case.name, res.source)
        assert fresh == [] and sd["pos_embed"].shape == model.pos_embed.shape == (1, 1 + 12 * 12, 768)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            load_state_dict_strict(model, sd, res.source)
        return
    size = OTHER_IMG_SIZE[case.family]
    model = create_model(case.name, pretrained=True, img_size=size, num_classes=case.cfg.num_classes)
    sd = model.state_dict()
    pos = [k for k in sd if "pos_embed" in k]
    assert pos and all(sd[k].shape != case.sd[k].shape for k in pos)
    assert state_dicts_equal({k: v for k, v in sd.items() if k not in pos},
                             {k: v for k, v in case.sd.items() if k not in pos}) == []
    with torch.no_grad():
        out = model(torch.randn(1, 3, size, size))
    assert out.shape == (1, case.cfg.num_classes) and torch.isfinite(out).all()


def test_save_load_roundtrip(case, tmp_path):
    """vitfer.save / vitfer.load: bit-exact tensors and outputs, metadata restored."""
    model = _loaded(case)
    n = model.num_classes
    names = [f"class{i}" for i in range(n)] if n else None
    path = vitfer.save(model, tmp_path / "m.safetensors", class_names=names, note="round trip")
    loaded = vitfer.load(path)
    assert not loaded.training
    assert type(loaded) is type(model)
    assert state_dicts_equal(loaded.state_dict(), model.state_dict()) == []
    assert loaded.cfg == model.cfg
    if case.family not in HEAVY:
        with torch.no_grad():
            assert torch.equal(loaded(case.x[:1]), model(case.x[:1]))
    assert loaded.class_names == names
    info = loaded.checkpoint_info
    assert info["model"] == case.name and info["family"] == case.family and info["note"] == "round trip"
    assert info["source"] == f"hf-hub:{case.cfg.hf_hub_id}@main"
    assert tuple(loaded.pretrained_cfg["mean"]) == tuple(case.cfg.mean)
    assert tuple(loaded.pretrained_cfg["input_size"]) == tuple(case.cfg.input_size)


def _orig_file(case, tmp_path: Path) -> tuple[Path, str]:
    """Write the family's original-release file from the timm weights; returns (path, layout)."""
    fam, sd = case.family, case.sd
    if fam in ("vit", "vit_hybrid"):
        import numpy as np

        heads = case.ref.blocks[0].attn.num_heads
        path = tmp_path / "orig.npz"
        np.savez(path, **timm_vit_to_npz(sd, heads))
        # timm's own .npz loader must read our file back to the same weights (checks the inverse map)
        with meta_init():
            t2 = timm.create_model(case.name, pretrained=False, num_classes=case.cfg.num_classes)
        t2 = t2.to_empty(device="cpu")
        t2.load_pretrained(str(path))
        assert state_dicts_equal(t2.state_dict(), sd) == []
        return path, "google-npz"
    if fam == "convit":
        path = tmp_path / f"{case.name}.pth"
        torch.save({"model": sd, "epoch": 299, "args": argparse.Namespace(lr=5e-4)}, path)
        return path, "timm"
    if fam == "crossvit":
        path = tmp_path / f"{case.name}.pth"
        ibm = timm_crossvit_to_ibm(sd)
        assert any(k.startswith("pos_embed.0") for k in ibm)
        torch.save(ibm, path)
        return path, "ibm-crossvit-pth"
    if fam == "vgg":
        import torchvision
        from timm.models.vgg import _filter_fn

        tv = timm_vgg_to_torchvision(sd)
        with torch.device("meta"):
            tv_ref = getattr(torchvision.models, case.name)(weights=None).state_dict()
        assert {k: tuple(v.shape) for k, v in tv.items()} == {k: tuple(v.shape) for k, v in tv_ref.items()}
        assert state_dicts_equal(_filter_fn(tv), sd) == []  # timm reads our torchvision dict back to sd
        path = tmp_path / f"{case.name}-tv.pth"
        torch.save(tv, path)
        return path, "torchvision-pth"
    if fam == "resnet":
        path = tmp_path / f"{case.name}_ra2.pth"
        torch.save(sd, path)
        return path, "timm"
    raise AssertionError(fam)


def test_original_release_format(case, tmp_path):
    """The family's original release layout converts to exactly timm's tensors."""
    path, layout = _orig_file(case, tmp_path)
    res = fetch_state_dict(case.name, path)
    assert res.layout == layout
    expect = {k: v for k, v in case.sd.items()}
    assert state_dicts_equal(res.state_dict, expect) == []
    if case.family == "vit":  # end to end: logits from the .npz file equal timm's
        model = create_model(case.name, pretrained=str(path), num_classes=case.cfg.num_classes).eval()
        with torch.no_grad():
            diff = assert_logits_close(model(case.x), case.ref_out)
        print(f"\n{case.name}: from Google .npz, max |logits diff| = {diff:.2e}")
