"""Building the model of a run: sizes and patch overrides per family, parameter groups."""
from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from .config import FinetuneConfig, patch_override

_logger = logging.getLogger(__name__)


def build_model(cfg: FinetuneConfig, num_classes: int) -> nn.Module:
    from vitfer.models import create_model, get_model_spec
    from vitfer.models.families import default_config, import_family

    spec = get_model_spec(cfg.model)
    import_family(spec.family)
    img_size, patch_size = cfg.sizes()
    overrides: dict[str, Any] = {"num_classes": num_classes}
    fields = _config_fields(spec)
    if img_size is not None and "img_size" in fields:
        overrides["img_size"] = img_size
    multi_conv = cfg.model_overrides.get("multi_conv", getattr(default_config(spec.name), "multi_conv", False))
    patch = patch_override(spec.family, patch_size, multi_conv)
    if patch is not None and "patch_size" in fields:
        overrides["patch_size"] = patch
    if cfg.drop_path_rate and "drop_path_rate" in fields:
        overrides["drop_path_rate"] = cfg.drop_path_rate
    if cfg.head == "mlp":
        if "head_hidden" not in fields:
            raise ValueError(f"head 'mlp' (--head mlp) is available for the ResNet-D models, not for {spec.name}")
        overrides["head_hidden"] = tuple(cfg.mlp_hidden)
    overrides.update(cfg.model_overrides)
    if cfg.pretrained and "patch_size" in overrides:
        raise ValueError(
            f"patch_size={overrides['patch_size']!r} cannot take {spec.name}'s pretrained patch-embedding weights, "
            f"which only fit the model's own patch size: leave patch_size at 'auto' or None (on the command line "
            f"leave out --patch-size, or pass --patch-size 0)"
        )
    # A timm-style "arch.tag" name keeps its tag: the pretrained weights are that tag's.
    model = create_model(cfg.model, pretrained=cfg.pretrained, **overrides)
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    pcfg = model.pretrained_cfg
    if pcfg:
        c = int(getattr(model, "in_chans", pcfg.get("input_size", (3,))[0]))
        h, w = pcfg.get("input_size", (3, 224, 224))[1:]
        if img_size is not None and "img_size" not in fields:
            h = w = img_size  # CNNs take any input size: train and evaluate at the requested one.
        pcfg["input_size"] = (c, h, w)
    return model


def _config_fields(spec) -> set[str]:
    from vitfer.models.families import default_config

    cfg = default_config(spec.name)
    return set(getattr(cfg, "__dataclass_fields__", {}))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on biases, norms, tokens and position embeddings."""
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name in skip or name.endswith(".bias"):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def trunk_blocks(model: nn.Module) -> list[nn.Module]:
    """The model's blocks or stages in forward order, the unit of ``freeze=N``: transformer
    blocks (ViT, ConViT, the hybrid's, CrossViT's multi-scale blocks), ResNet stages, VGG's
    convolution groups (split at the max-pools) followed by its ``pre_logits`` MLP."""
    if isinstance(getattr(model, "blocks", None), nn.ModuleList | nn.Sequential):
        return list(model.blocks)
    if all(hasattr(model, f"layer{i}") for i in range(1, 5)):
        return [getattr(model, f"layer{i}") for i in range(1, 5)]
    feats = getattr(model, "features", None)
    if isinstance(feats, nn.Sequential):
        groups, cur = [], []
        for m in feats:
            cur.append(m)
            if isinstance(m, nn.MaxPool2d):
                groups.append(nn.ModuleList(cur))
                cur = []
        if cur:
            groups.append(nn.ModuleList(cur))
        return groups + ([model.pre_logits] if hasattr(model, "pre_logits") else [])
    raise ValueError(f"{type(model).__name__} has no blocks or stages that freeze=N can count")


def _head_prefixes(model: nn.Module) -> list[str]:
    from vitfer.models.families import classifier_names

    return list(classifier_names(model.pretrained_cfg) or ["head"])


def apply_freeze(model: nn.Module, freeze: str) -> dict[str, int]:
    """Freeze the backbone (``"backbone"``), or all but its last ``N`` blocks / stages (``"N"``);
    the classifier, and the norms between the last block and it, always train. Returns the
    trainable and frozen parameter counts. Frozen BatchNorm layers are kept in eval mode by
    :func:`set_train_mode`."""
    if freeze == "none":
        n = sum(p.numel() for p in model.parameters())
        return {"trainable": n, "frozen": 0}
    for p in model.parameters():
        p.requires_grad_(False)
    train: list[nn.Module] = []
    if freeze != "backbone":
        blocks = trunk_blocks(model)
        n = int(freeze)
        if n > len(blocks):
            raise ValueError(f"freeze={n}: {model.model_name} has only {len(blocks)} blocks / stages")
        train += blocks[len(blocks) - n:] if n else []
    for m in train:
        for p in m.parameters():
            p.requires_grad_(True)
    heads = _head_prefixes(model)
    post = ("norm.", "fc_norm.", "head_norm.")
    for name, p in model.named_parameters():
        if any(name == h or name.startswith(h + ".") for h in heads) or (freeze != "backbone" and name.startswith(post)):
            p.requires_grad_(True)
    counts = {"trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
              "frozen": sum(p.numel() for p in model.parameters() if not p.requires_grad)}
    _logger.info("freeze=%s: %.2fM trainable, %.2fM frozen parameters", freeze, counts["trainable"] / 1e6,
                 counts["frozen"] / 1e6)
    return counts


def set_train_mode(model: nn.Module) -> None:
    """``model.train()``, except BatchNorm layers whose parameters are all frozen (their running
    statistics stay those of the pretrained backbone)."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            ps = list(m.parameters(recurse=False))
            if ps and not any(p.requires_grad for p in ps):
                m.eval()


def build_optimizer(cfg: FinetuneConfig, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """AdamW, Adam or SGD (momentum ``cfg.momentum``) over the trainable parameters, without
    weight decay on biases, norms, tokens and position embeddings."""
    groups = param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=lr)
    return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum)
