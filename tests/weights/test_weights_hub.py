"""The hub code path in detail (vit_tiny): offline flags read at call time, the pytorch_model.bin
fallback, ``hf-hub:repo@rev``, local files, the warm converted cache, the cold-cache error, and
input-channel / image-size adaptation against timm's own loader.

huggingface_hub is imported (by timm) before any environment variable is set here, so these
tests also check that vitfer reads HF_HUB_OFFLINE / HF_HUB_CACHE when it is called, not at import.
"""
from __future__ import annotations

import shutil

import huggingface_hub
import pytest
import timm
import torch
from parity import assert_logits_close, randomize_
from weights_helpers import commit_for, make_hub_cache, model_input, offline_env, state_dicts_equal

from vitfer.models import create_model
from vitfer.weights import CheckpointError, adapt_input_conv
from vitfer.weights.hub import converted_cache_path, fetch_state_dict

NAME = "vit_tiny_patch16_224"
HUB_ID = "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k"


@pytest.fixture(scope="module")
def timm_sd():
    ref = timm.create_model(NAME, pretrained=False)
    randomize_(ref, seed=3)
    return {k: v.detach().clone() for k, v in ref.state_dict().items()}


@pytest.fixture
def env(tmp_path):
    with offline_env(tmp_path) as paths:
        yield paths


def test_env_read_at_call_time(env, timm_sd, monkeypatch):
    """hf_hub_download gets cache_dir from HF_HUB_CACHE and local_files_only from HF_HUB_OFFLINE *now*."""
    make_hub_cache(env["hub"], HUB_ID, timm_sd)
    calls = []
    real = huggingface_hub.hf_hub_download

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", spy)
    model = create_model(NAME, pretrained=True)
    assert state_dicts_equal(model.state_dict(), timm_sd) == []
    (args, kwargs), = calls
    assert args == (HUB_ID, "model.safetensors")
    assert kwargs["cache_dir"] == str(env["hub"]) and kwargs["local_files_only"] is True
    assert kwargs["library_name"] == "vitfer"


def test_fallback_to_pytorch_model_bin(env, timm_sd, monkeypatch):
    """A repo without model.safetensors: pytorch_model.bin, read with torch.load(weights_only=True)."""
    make_hub_cache(env["hub"], "acme/vit-tiny-bin", timm_sd, filename="pytorch_model.bin")
    seen = []
    real_load = torch.load

    def spy_load(*args, **kwargs):
        seen.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy_load)
    model = create_model(NAME, pretrained="hf-hub:acme/vit-tiny-bin")
    assert seen == [True]
    assert state_dicts_equal(model.state_dict(), timm_sd) == []
    assert converted_cache_path("acme/vit-tiny-bin", "main").is_file()


def test_hf_hub_revision(env, timm_sd):
    """'hf-hub:repo@rev' reads that revision, and caches it separately from main."""
    make_hub_cache(env["hub"], "acme/vit-tiny", timm_sd)
    v2 = {k: v + 1.0 if v.is_floating_point() else v for k, v in timm_sd.items()}
    make_hub_cache(env["hub"], "acme/vit-tiny", v2, revision="v2")
    m_v2 = create_model(NAME, pretrained="hf-hub:acme/vit-tiny@v2")
    assert state_dicts_equal(m_v2.state_dict(), v2) == []
    assert m_v2.pretrained_source == "hf-hub:acme/vit-tiny@v2"
    assert state_dicts_equal(fetch_state_dict(NAME, "hf-hub:acme/vit-tiny").state_dict, timm_sd) == []
    assert converted_cache_path("acme/vit-tiny", "v2").name == "acme--vit-tiny@v2.safetensors"
    assert converted_cache_path("acme/vit-tiny", "v2").is_file() and converted_cache_path("acme/vit-tiny").is_file()
    # a commit hash works as a revision too
    res = fetch_state_dict(NAME, f"hf-hub:acme/vit-tiny@{commit_for('acme/vit-tiny', 'v2')}")
    assert state_dicts_equal(res.state_dict, v2) == []


def test_warm_converted_cache_needs_no_hub(env, timm_sd):
    """Once converted, the model loads offline even with the Hugging Face cache gone."""
    make_hub_cache(env["hub"], HUB_ID, timm_sd)
    create_model(NAME, pretrained=True)
    shutil.rmtree(env["hub"])
    model = create_model(NAME, pretrained=True)
    assert state_dicts_equal(model.state_dict(), timm_sd) == []


def test_cold_cache_error(env):
    """Offline with nothing cached: the error names the repo, the files, the caches and the manual steps."""
    with pytest.raises(CheckpointError) as ei:
        create_model(NAME, pretrained=True)
    msg = str(ei.value)
    print("\n" + msg)
    for part in (HUB_ID, "model.safetensors", "pytorch_model.bin", "HF_HUB_OFFLINE", str(env["hub"]),
                 "models--timm--vit_tiny_patch16_224.augreg_in21k_ft_in1k", "refs/main",
                 f"https://huggingface.co/{HUB_ID}/resolve/main/model.safetensors",
                 "pretrained='/path/to/model.safetensors'", str(converted_cache_path(HUB_ID))):
        assert part in msg, part
    assert not (env["home"] / "converted").exists() or not any((env["home"] / "converted").iterdir())


def test_local_files(tmp_path, timm_sd):
    """Local .safetensors, .pth (bare, wrapped, DataParallel 'module.' prefix) and folders."""
    import safetensors.torch

    st = tmp_path / "w.safetensors"
    safetensors.torch.save_file(timm_sd, str(st))
    torch.save(timm_sd, tmp_path / "bare.pth")
    torch.save({"state_dict": timm_sd, "epoch": 3}, tmp_path / "wrapped.bin")
    torch.save({"module." + k: v for k, v in timm_sd.items()}, tmp_path / "dp.pt")
    folder = tmp_path / "snap"
    folder.mkdir()
    shutil.copy(st, folder / "model.safetensors")
    for src in (tmp_path / "bare.pth", tmp_path / "wrapped.bin", tmp_path / "dp.pt", folder):
        res = fetch_state_dict(NAME, src)
        assert state_dicts_equal(res.state_dict, timm_sd) == [], src
        assert res.layout == "timm" and res.source == str(src)
    model = create_model(NAME, pretrained=str(st))
    assert state_dicts_equal(model.state_dict(), timm_sd) == []
    assert model.pretrained_source == str(st)


def test_grey_input_and_other_size_match_timm(env, timm_sd):
    """in_chans=1 (grey FER images) sums the patch-embedding channels and img_size=160 resamples the
    position embeddings, exactly as timm's loader does for the same file."""
    path = make_hub_cache(env["hub"], HUB_ID, timm_sd)
    ours = create_model(NAME, pretrained=True, in_chans=1, img_size=160).eval()
    ref = timm.create_model(NAME, pretrained=True, in_chans=1, img_size=160,
                            pretrained_cfg_overlay=dict(file=str(path))).eval()
    assert state_dicts_equal(ours.state_dict(), ref.state_dict()) == []
    assert ours.patch_embed.proj.weight.shape[1] == 1
    x = model_input(ours, in_chans=1)
    assert x.shape[1:] == (1, 160, 160)
    with torch.no_grad():
        diff = assert_logits_close(ours(x), ref(x))
    print(f"\n{NAME} in_chans=1 img_size=160 vs timm: max |logits diff| = {diff:.2e}")


def test_adapt_input_conv_matches_timm():
    """Other channel counts: channels repeated cyclically and scaled by 3/in_chans, as timm."""
    from timm.models._manipulate import adapt_input_conv as timm_adapt

    w = torch.randn(8, 3, 4, 4)
    for c in (1, 2, 3, 4, 7):
        assert torch.equal(adapt_input_conv(c, w), timm_adapt(c, w.clone())), c
    assert adapt_input_conv(3, w) is w


def test_arch_tag_name_fetches_that_tag(env, timm_sd):
    """A timm-style 'arch.tag' name with pretrained=True reads timm/arch.tag, not the default tag."""
    other = {k: v * 2 if v.is_floating_point() else v for k, v in timm_sd.items()}
    make_hub_cache(env["hub"], HUB_ID, timm_sd)
    make_hub_cache(env["hub"], "timm/vit_tiny_patch16_224.augreg_in1k", other)
    res = fetch_state_dict("vit_tiny_patch16_224.augreg_in1k", True)
    assert res.source == "hf-hub:timm/vit_tiny_patch16_224.augreg_in1k@main"
    assert state_dicts_equal(res.state_dict, other) == []
    res = fetch_state_dict("vit_tiny_patch16_224.augreg_in21k_ft_in1k", True)
    assert state_dicts_equal(res.state_dict, timm_sd) == []


def test_finetuned_vitfer_checkpoint_on_the_hub(env, tmp_path):
    """A fine-tuned vitfer checkpoint shared on the hub: its class names come along when the head is
    kept, and the converted cache file is itself a loadable vitfer checkpoint."""
    import vitfer

    ft = create_model(NAME, num_classes=7)
    names = ["anger", "contempt", "disgust", "fear", "happy", "sadness", "surprise"]
    path = vitfer.save(ft, tmp_path / "ft.safetensors", class_names=names)
    make_hub_cache(env["hub"], "acme/fer-vit", {})
    snap = next((env["hub"] / "models--acme--fer-vit" / "snapshots").iterdir())
    shutil.copy(path, snap / "model.safetensors")
    model = create_model(NAME, pretrained="hf-hub:acme/fer-vit", num_classes=7)
    assert model.class_names == names
    assert state_dicts_equal(model.state_dict(), ft.state_dict()) == []
    cached = vitfer.load(converted_cache_path("acme/fer-vit"))
    assert cached.class_names == names and cached.num_classes == 7
    assert cached.checkpoint_info["source"] == "hf-hub:acme/fer-vit@main"
