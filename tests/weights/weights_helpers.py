"""Helpers for the weights tests: an offline Hugging Face hub cache built from timm models, and the
inverse mappings (timm -> original release layouts) used to test the converters."""
from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

import numpy as np
import safetensors.torch
import torch
from torch import Tensor

# One model per family: the family's cheapest variant.
FAMILY_MODELS: dict[str, str] = {
    "vit": "vit_tiny_patch16_224",
    "convit": "convit_tiny",
    "crossvit": "crossvit_tiny_240",
    "vit_hybrid": "vit_base_r50_s16_224",
    "resnet": "resnet50d",
    "vgg": "vgg16",
}


def fast_random_timm(name: str, seed: int = 0, **kwargs: Any) -> torch.nn.Module:
    """A timm model with random weights, built without timm's (slow) init: constructed on the meta
    device, allocated with ``to_empty`` and every state tensor filled here (fan-in scaled normal
    weights, norm weights ~1, positive running variances). Only for models without
    non-persistent buffers (they would stay uninitialised), which is asserted."""
    import timm

    from vitfer.weights.convert import meta_init

    with meta_init():
        model = timm.create_model(name, pretrained=False, **kwargs)
    model = model.to_empty(device="cpu")
    persistent = set(model.state_dict())
    transient = [n for n, _ in model.named_buffers() if n not in persistent]
    assert not transient, f"{name} has non-persistent buffers {transient}; build it normally"
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, t in model.state_dict().items():
            if not t.is_floating_point():
                t.zero_()
            elif n.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) * 0.5 + 0.75)
            elif n.endswith("running_mean"):
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
            elif t.ndim == 1 and n.endswith("weight"):
                t.copy_(1.0 + torch.randn(t.shape, generator=g) * 0.1)
            elif t.ndim >= 2 and "embed" not in n and "token" not in n:
                t.copy_(torch.randn(t.shape, generator=g) * t[0].numel() ** -0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=g) * 0.02)
    return model.eval()


def commit_for(repo_id: str, revision: str = "main") -> str:
    """A deterministic 40-hex 'commit hash' for a fake hub snapshot."""
    return hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()


def make_hub_cache(
    cache_dir: Path,
    repo_id: str,
    state_dict: Mapping[str, Tensor],
    *,
    filename: str = "model.safetensors",
    revision: str = "main",
    config: Optional[dict[str, Any]] = None,
) -> Path:
    """Lay out ``models--<owner>--<repo>/snapshots/<commit>/{filename,config.json}`` and
    ``refs/<revision>`` as huggingface_hub's cache does. Returns the checkpoint path."""
    repo_dir = Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))
    commit = commit_for(repo_id, revision)
    snap = repo_dir / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    path = snap / filename
    sd = {k: v.detach().contiguous() for k, v in state_dict.items()}
    if filename.endswith(".safetensors"):
        safetensors.torch.save_file(sd, str(path), metadata={"format": "pt"})
    else:
        torch.save(sd, str(path))
    cfg = config or {"architecture": repo_id.split("/")[-1].split(".")[0], "num_classes": 1000}
    (snap / "config.json").write_text(json.dumps(cfg))
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / revision).write_text(commit)
    return path


@contextmanager
def offline_env(root: Path) -> Iterator[dict[str, Path]]:
    """HF_HUB_OFFLINE=1, HF_HUB_CACHE=<root>/hub, VITFER_HOME=<root>/vitfer for the duration."""
    import pytest

    paths = {"hub": Path(root) / "hub", "home": Path(root) / "vitfer"}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("HF_HUB_CACHE", str(paths["hub"]))
        mp.setenv("VITFER_HOME", str(paths["home"]))
        mp.delenv("HF_HOME", raising=False)
        yield paths


def model_input(model_or_cfg: Any, batch: int = 2, seed: int = 0, in_chans: Optional[int] = None) -> Tensor:
    cfg = model_or_cfg.pretrained_cfg if hasattr(model_or_cfg, "pretrained_cfg") else model_or_cfg
    c, h, w = cfg["input_size"]
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, in_chans or c, h, w, generator=g)


# ---------------------------------------------------------------------------------------------
# Inverse mappings: timm layout -> original release layouts
# ---------------------------------------------------------------------------------------------
def _hwio(t: Tensor) -> np.ndarray:
    return t.detach().permute(2, 3, 1, 0).contiguous().numpy()


def _dense(t: Tensor) -> np.ndarray:
    return t.detach().t().contiguous().numpy()


def timm_vit_to_npz(sd: Mapping[str, Tensor], num_heads: int, pre_logits: bool = True) -> dict[str, np.ndarray]:
    """A timm ViT / R50-hybrid state dict -> Google's JAX .npz layout (encoderblock_i naming)."""
    w: dict[str, np.ndarray] = {}
    bb = "patch_embed.backbone."
    if f"{bb}stem.conv.weight" in sd:
        w["conv_root/kernel"] = _hwio(sd[f"{bb}stem.conv.weight"])
        w["gn_root/scale"] = sd[f"{bb}stem.norm.weight"].numpy()
        w["gn_root/bias"] = sd[f"{bb}stem.norm.bias"].numpy()
        for k in sd:
            if k.startswith(f"{bb}stages.") and k.endswith(".conv1.weight"):
                s, j = int(k.split(".")[3]), int(k.split(".")[5])
                src, dst = f"{bb}stages.{s}.blocks.{j}.", f"block{s + 1}/unit{j + 1}/"
                for r in (1, 2, 3):
                    w[f"{dst}conv{r}/kernel"] = _hwio(sd[f"{src}conv{r}.weight"])
                    w[f"{dst}gn{r}/scale"] = sd[f"{src}norm{r}.weight"].numpy()
                    w[f"{dst}gn{r}/bias"] = sd[f"{src}norm{r}.bias"].numpy()
                if f"{src}downsample.conv.weight" in sd:
                    w[f"{dst}conv_proj/kernel"] = _hwio(sd[f"{src}downsample.conv.weight"])
                    w[f"{dst}gn_proj/scale"] = sd[f"{src}downsample.norm.weight"].numpy()
                    w[f"{dst}gn_proj/bias"] = sd[f"{src}downsample.norm.bias"].numpy()
    w["embedding/kernel"] = _hwio(sd["patch_embed.proj.weight"])
    w["embedding/bias"] = sd["patch_embed.proj.bias"].numpy()
    w["cls"] = sd["cls_token"].numpy()
    w["Transformer/posembed_input/pos_embedding"] = sd["pos_embed"].numpy()
    D = sd["cls_token"].shape[-1]
    hd = D // num_heads
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    for i in range(depth):
        p, b = f"blocks.{i}.", f"Transformer/encoderblock_{i}/"
        a = f"{b}MultiHeadDotProductAttention_1/"
        w[f"{b}LayerNorm_0/scale"] = sd[p + "norm1.weight"].numpy()
        w[f"{b}LayerNorm_0/bias"] = sd[p + "norm1.bias"].numpy()
        qkv_w, qkv_b = sd[p + "attn.qkv.weight"].chunk(3), sd[p + "attn.qkv.bias"].chunk(3)
        for n, wt, bs in zip(("query", "key", "value"), qkv_w, qkv_b):
            w[f"{a}{n}/kernel"] = wt.t().reshape(D, num_heads, hd).contiguous().numpy()
            w[f"{a}{n}/bias"] = bs.reshape(num_heads, hd).contiguous().numpy()
        w[f"{a}out/kernel"] = sd[p + "attn.proj.weight"].t().reshape(num_heads, hd, D).contiguous().numpy()
        w[f"{a}out/bias"] = sd[p + "attn.proj.bias"].numpy()
        w[f"{b}LayerNorm_2/scale"] = sd[p + "norm2.weight"].numpy()
        w[f"{b}LayerNorm_2/bias"] = sd[p + "norm2.bias"].numpy()
        for r in range(2):
            w[f"{b}MlpBlock_3/Dense_{r}/kernel"] = _dense(sd[p + f"mlp.fc{r + 1}.weight"])
            w[f"{b}MlpBlock_3/Dense_{r}/bias"] = sd[p + f"mlp.fc{r + 1}.bias"].numpy()
    w["Transformer/encoder_norm/scale"] = sd["norm.weight"].numpy()
    w["Transformer/encoder_norm/bias"] = sd["norm.bias"].numpy()
    if "head.weight" in sd:
        w["head/kernel"] = _dense(sd["head.weight"])
        w["head/bias"] = sd["head.bias"].numpy()
    if pre_logits:  # in21k releases carry a Dense+tanh representation layer that timm drops
        w["pre_logits/kernel"] = np.full((D, D), 7.0, np.float32)
        w["pre_logits/bias"] = np.full((D,), 7.0, np.float32)
    return {k: np.ascontiguousarray(v) for k, v in w.items()}


def timm_vgg_to_torchvision(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """timm VGG -> torchvision VGG keys (``classifier.0/3/6`` Linear layers)."""
    out = {}
    for k, v in sd.items():
        if k.startswith(("pre_logits.fc1.", "pre_logits.fc2.")):
            k = ("classifier.0." if ".fc1." in k else "classifier.3.") + k.rsplit(".", 1)[1]
            v = v.reshape(v.shape[0], -1) if k.endswith(".weight") else v
        elif k.startswith("head.fc."):
            k = "classifier.6." + k.rsplit(".", 1)[1]
        out[k] = v.clone()
    return out


def timm_crossvit_to_ibm(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """timm CrossViT -> IBM's ``nn.ParameterList`` spellings (``pos_embed.0``, ``cls_token.1``)."""
    out = {}
    for k, v in sd.items():
        for base in ("pos_embed_", "cls_token_"):
            if k.startswith(base) and k[len(base):].isdigit():
                k = base[:-1] + "." + k[len(base):]
        out[k] = v.clone()
    return out


def state_dicts_equal(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> list[str]:
    """Keys whose tensors differ (or exist on one side only)."""
    bad = sorted(set(a) ^ set(b))
    bad += [
        k for k in a
        if k in b and (a[k].shape != b[k].shape or a[k].dtype != b[k].dtype or not torch.equal(a[k], b[k]))
    ]
    return bad
