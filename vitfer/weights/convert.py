"""Checkpoint conversion: every family's weights into vitfer's (= timm's) state-dict layout.

vitfer keeps timm's parameter names and shapes, so the timm converters are identities that
*validate*: the key set and every shape are compared with the architecture's own state dict
(built on the meta device, no memory, no init cost). The converters from the original releases
rename and reshape explicitly, one function per format:

============  =====================================================  ==============================
family        original release                                       converter
============  =====================================================  ==============================
vit           Google JAX ``.npz`` (vision_transformer / AugReg)      :func:`convert_vit_npz`
convit        facebookresearch/convit ``.pth`` (``{"model": sd}``)   :func:`convert_convit_original`
crossvit      IBM/CrossViT ``.pth`` (``pos_embed.0``, ``cls_token.0``)  :func:`convert_crossvit_ibm`
vit_hybrid    Google JAX ``.npz`` (R50+ViT-B/16)                     :func:`convert_vit_hybrid_npz`
resnet        timm's own release (timm layout)                       :func:`convert_timm_resnet`
vgg           torchvision ``.pth`` (``classifier.0/3/6``)           :func:`convert_vgg_torchvision`
============  =====================================================  ==============================

:func:`convert_checkpoint` detects which layout a file uses and dispatches.
"""
from __future__ import annotations

import functools
import json
import logging
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor, nn

from vitfer.models.families import (  # noqa: F401 - the model lookups, re-exported here
    FAMILIES,
    build_meta,
    classifier_names,
    default_config,
    first_conv_names,
    import_all_families,
    import_family,
    meta_init,
    model_spec,
)

from .errors import CheckpointError

__all__ = [
    "FAMILIES",
    "MODEL_RELEASES",
    "ORIGINAL_RELEASES",
    "OriginalRelease",
    "build_empty",
    "build_meta",
    "checkpoint_architecture",
    "classifier_names",
    "convert_checkpoint",
    "convert_convit_original",
    "convert_crossvit_ibm",
    "convert_timm",
    "convert_vgg_torchvision",
    "convert_vit_hybrid_npz",
    "convert_vit_npz",
    "default_config",
    "first_conv_names",
    "format_mismatch",
    "guess_family",
    "import_all_families",
    "import_family",
    "meta_init",
    "original_release",
    "reference_shapes",
    "validate_state_dict",
]

_logger = logging.getLogger(__name__)

def build_empty(name: str, device: Union[str, torch.device] = "cpu", **overrides: Any) -> Optional[nn.Module]:
    """Build ``name`` with *uninitialised* storage on ``device`` (no init cost), for a caller that
    then loads every persistent tensor. ``None`` when that is not safe: the model has
    non-persistent buffers or plain tensor attributes (derived state that ``to_empty`` would leave
    uninitialised) -- build it normally then."""
    model = build_meta(name, **overrides)
    if not any(t.is_meta for t in model.state_dict().values()):
        return None  # the meta build fell back to a normal CPU build
    persistent = set(model.state_dict())
    if any(n not in persistent for n, _ in model.named_buffers()):
        return None
    for m in model.modules():
        if any(isinstance(v, Tensor) for v in vars(m).values()):
            return None
    return model.to_empty(device=device)


def tuplify(v: Any) -> Any:
    """JSON lists -> tuples (config overrides read back from checkpoint metadata)."""
    if isinstance(v, list):
        return tuple(tuplify(x) for x in v)
    if isinstance(v, dict):
        return {k: tuplify(x) for k, x in v.items()}
    return v


@functools.lru_cache(maxsize=64)
def _reference(name: str, overrides_json: str = "") -> tuple[tuple[tuple[str, tuple[int, ...]], ...], Any]:
    overrides = tuplify(json.loads(overrides_json)) if overrides_json else {"num_classes": 1000}
    model = build_meta(name, **overrides)
    shapes = tuple((k, tuple(v.shape)) for k, v in model.state_dict().items())
    return shapes, getattr(model, "cfg", None)


def reference_shapes(name: str, overrides: Optional[Mapping[str, Any]] = None) -> dict[str, tuple[int, ...]]:
    """``{key: shape}`` of the architecture ``name`` at its default config with a 1000-class head,
    or, given ``overrides`` (a vitfer checkpoint's config overrides), of the model they describe."""
    key = json.dumps(dict(overrides), sort_keys=True, default=list) if overrides else ""
    return dict(_reference(model_spec(name).name, key)[0])


def _shape(t: Any) -> tuple[int, ...]:
    return tuple(int(s) for s in t.shape)


def format_mismatch(
    source: str,
    target: str,
    missing: Sequence[str],
    unexpected: Sequence[str],
    shapes: Sequence[tuple[str, tuple[int, ...], tuple[int, ...]]],
    hint: str = "",
) -> str:
    """One message naming every missing key, unexpected key and (checkpoint, model) shape pair."""
    lines = [f"{source}: the checkpoint does not fit {target}"]
    if missing:
        lines.append(f"  missing keys ({len(missing)}): " + ", ".join(missing))
    if unexpected:
        lines.append(f"  unexpected keys ({len(unexpected)}): " + ", ".join(unexpected))
    if shapes:
        lines.append(f"  shape mismatches ({len(shapes)}), checkpoint vs model:")
        lines += [f"    {k}: {tuple(a)} vs {tuple(b)}" for k, a, b in shapes]
    if hint:
        lines.append("  " + hint)
    return "\n".join(lines)


_FAMILY_SIGNATURES: tuple[tuple[str, Callable[[set[str]], bool]], ...] = (
    ("vit_hybrid", lambda ks: any(k.startswith("patch_embed.backbone.") for k in ks)),
    ("crossvit", lambda ks: any(k.startswith(("pos_embed_0", "pos_embed.0", "cls_token_0")) for k in ks)),
    ("convit", lambda ks: any(".attn.qk.weight" in k or ".attn.gating_param" in k for k in ks)),
    ("vgg", lambda ks: any(k.startswith(("features.", "pre_logits.fc1", "classifier.0")) for k in ks)),
    ("resnet", lambda ks: any(k.startswith("layer1.0.conv1") for k in ks)),
    ("vit", lambda ks: any(k.endswith(".attn.qkv.weight") for k in ks) and "pos_embed" in ks),
)


def guess_family(keys: Iterable[str]) -> Optional[str]:
    """The family whose key pattern ``keys`` show, or ``None``."""
    ks = set(keys)
    for fam, test in _FAMILY_SIGNATURES:
        if test(ks):
            return fam
    return None


def _guess_model(sd: Mapping[str, Any], family: str) -> Optional[str]:
    """A registered model of ``family`` whose non-adaptable shapes all agree with ``sd``."""
    from vitfer.models.registry import get_pretrained_cfg, list_models

    if import_family(family) is None:
        return None
    fits = []
    for cand in list_models(family=family):
        try:
            ref = reference_shapes(cand)
        except Exception:  # pragma: no cover - a broken family module must not hide the real error
            continue
        cls = {f"{c}.{p}" for c in classifier_names(get_pretrained_cfg(cand)) for p in ("weight", "bias")}
        common = [k for k in ref if k in sd and k not in cls and "pos_embed" not in k]
        if common and set(sd) - cls <= set(ref) and all(_shape(sd[k]) == ref[k] for k in common):
            if set(ref) - cls <= set(sd):
                return cand  # every key of the candidate is there (a ViT is not taken for its DeiT twin)
            fits.append(cand)
    return fits[0] if fits else None


def _mismatch_hint(name: str, family: str, sd: Mapping[str, Any], metadata_model: Optional[str]) -> str:
    if metadata_model and metadata_model != name:
        return f"the file's vitfer metadata says it is a checkpoint of {metadata_model!r}, not {name!r}"
    fam = guess_family(sd)
    if fam is not None and fam != family:
        guess = _guess_model(sd, fam)
        what = f"{guess!r}" if guess else f"a {fam} model"
        return f"its keys look like {what} (family {fam!r}), not {name!r} (family {family!r})"
    if fam == family:
        guess = _guess_model(sd, fam)
        if guess and guess != name:
            return f"its shapes fit {guess!r}, not {name!r}"
    return ""


def validate_state_dict(
    name: str,
    sd: Mapping[str, Any],
    source: str,
    metadata_model: Optional[str] = None,
    overrides: Optional[Mapping[str, Any]] = None,
) -> None:
    """Check ``sd`` (timm layout) against architecture ``name``; raise :class:`CheckpointError`.

    Exact key set and shapes, except for what loading adapts to the model being built: the
    classifier (may be absent; its output size may differ, its input size may not), position
    embeddings (token count may differ: resampled) and the first conv's input channels.

    Args:
        overrides: the config overrides a vitfer checkpoint's metadata records (``patch_size``,
            ``img_size`` ...): ``sd`` is checked against the model they describe instead of the
            architecture's default.
    """
    spec = model_spec(name)
    try:
        ref = reference_shapes(spec.name, overrides)
    except (TypeError, ValueError) as e:
        raise CheckpointError(
            f"{source}: its vitfer metadata describes {spec.name} with the config overrides {dict(overrides or {})}, "
            f"which this vitfer cannot build: {e}"
        ) from e
    cfg = spec.pretrained_cfg
    heads = classifier_names(cfg)
    if any(k.startswith("head_dist") for k in ref):  # a distilled model (distilled=True): two heads per branch
        from vitfer.models.base import distilled_classifier

        heads = distilled_classifier(heads)
    cls_keys = {f"{c}.{p}" for c in heads for p in ("weight", "bias")}
    conv_keys = {f"{c}.weight" for c in first_conv_names(cfg)}
    present_cls = {c for c in heads if f"{c}.weight" in sd or f"{c}.bias" in sd}
    missing = [
        k for k in ref
        if k not in sd and (k not in cls_keys or any(k.startswith(c + ".") for c in present_cls))
    ]
    unexpected = [k for k in sd if k not in ref]
    shapes = []
    for k, want in ref.items():
        if k not in sd:
            continue
        got = _shape(sd[k])
        if k in cls_keys:
            ok = len(got) == len(want) and got[1:] == want[1:]
        elif "pos_embed" in k:
            ok = len(got) == len(want) and got[0] == want[0] and got[-1] == want[-1]
        elif k in conv_keys:
            ok = len(got) == len(want) and got[0] == want[0] and got[2:] == want[2:]
        else:
            ok = got == want
        if not ok:
            shapes.append((k, got, want))
    if missing or unexpected or shapes:
        hint = _mismatch_hint(spec.name, spec.family, sd, metadata_model)
        target = f"{spec.name} with overrides {dict(overrides)}" if overrides else spec.name
        raise CheckpointError(format_mismatch(source, target, missing, unexpected, shapes, hint))


# --------------------------------------------------------------------------------------------
# timm layout (identity + family-specific spellings)
# --------------------------------------------------------------------------------------------
def convert_timm_vit(name: str, sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """ViT: vitfer keeps timm's names (``blocks.i.attn.qkv``, ``pos_embed``...): identity."""
    return dict(sd)


def convert_timm_convit(name: str, sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """ConViT: identity (``rel_indices`` is a derived buffer; dropped if a file carries it)."""
    return {k: v for k, v in sd.items() if not k.endswith("rel_indices")}


def convert_timm_crossvit(name: str, sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """CrossViT: identity, except IBM's ``pos_embed.0`` / ``cls_token.0`` become ``pos_embed_0`` ..."""
    return convert_crossvit_ibm(sd)


def convert_timm_vit_hybrid(name: str, sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """ViT-R50 hybrid: identity (``patch_embed.backbone.*``, ``patch_embed.proj``, ViT blocks)."""
    return dict(sd)


def convert_timm_resnet(name: str, sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """ResNet-D: identity (timm trained and released these weights in its own layout)."""
    return dict(sd)


def convert_timm_vgg(name: str, sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """VGG: identity for timm's layout; torchvision's ``classifier.*`` keys are converted."""
    if any(k.startswith("classifier.") for k in sd):
        return convert_vgg_torchvision(sd)
    return dict(sd)


_CONVERT_TIMM: dict[str, Callable[[str, Mapping[str, Tensor]], dict[str, Tensor]]] = {
    "vit": convert_timm_vit,
    "convit": convert_timm_convit,
    "crossvit": convert_timm_crossvit,
    "vit_hybrid": convert_timm_vit_hybrid,
    "resnet": convert_timm_resnet,
    "vgg": convert_timm_vgg,
}


def convert_timm(
    model_name: str, state_dict: Mapping[str, Tensor], source: str = "state dict",
    metadata_model: Optional[str] = None, overrides: Optional[Mapping[str, Any]] = None,
) -> dict[str, Tensor]:
    """A timm state dict of ``model_name`` -> vitfer's, validated against the architecture (as
    ``overrides`` configure it, for a vitfer checkpoint)."""
    spec = model_spec(model_name)
    out = _CONVERT_TIMM[spec.family](spec.name, state_dict)
    validate_state_dict(spec.name, out, source, metadata_model, overrides)
    return out


def checkpoint_architecture(metadata: Optional[Mapping[str, Any]]) -> tuple[Optional[str], dict[str, Any]]:
    """``(model name, config overrides)`` that a checkpoint's metadata describes: the ``"vitfer"``
    JSON of safetensors metadata (str -> str), or that JSON already parsed; ``(None, {})`` if none."""
    if not metadata:
        return None, {}
    info: Any = metadata
    if "vitfer" in metadata and isinstance(metadata["vitfer"], str):
        try:
            info = json.loads(metadata["vitfer"])
        except ValueError:
            return None, {}
    if not isinstance(info, Mapping):
        return None, {}
    model = info.get("model")
    overrides = info.get("overrides") or {}
    return (model if isinstance(model, str) else None), (tuplify(dict(overrides)) if isinstance(overrides, Mapping) else {})


# --------------------------------------------------------------------------------------------
# Original releases
# --------------------------------------------------------------------------------------------
def convert_convit_original(checkpoint: Mapping[str, Any]) -> dict[str, Tensor]:
    """facebookresearch/convit ``convit_*.pth``: ``{"model": state_dict, ...}``; keys equal timm's."""
    sd = checkpoint.get("model", checkpoint) if isinstance(checkpoint, Mapping) else checkpoint
    if not isinstance(sd, Mapping):
        raise CheckpointError("ConViT checkpoint: expected a state dict under 'model'")
    return {k: v for k, v in sd.items() if not k.endswith("rel_indices")}


_IBM_RE = re.compile(r"^(pos_embed|cls_token)\.(\d+)$")


def convert_crossvit_ibm(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """IBM CrossViT (``nn.ParameterList``: ``pos_embed.0``, ``cls_token.1``) -> timm (``pos_embed_0``)."""
    out = {}
    for k, v in sd.items():
        m = _IBM_RE.match(k)
        out[f"{m.group(1)}_{m.group(2)}" if m else k] = v
    return out


def convert_vgg_torchvision(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """torchvision VGG -> timm: ``classifier.0`` (4096, 25088) -> ``pre_logits.fc1`` (4096, 512, 7, 7),
    ``classifier.3`` (4096, 4096) -> ``pre_logits.fc2`` (4096, 4096, 1, 1), ``classifier.6`` -> ``head.fc``.
    ``features.*`` keep their indices."""
    names = {"classifier.0": "pre_logits.fc1", "classifier.3": "pre_logits.fc2", "classifier.6": "head.fc"}
    out = {}
    for k, v in sd.items():
        prefix, _, leaf = k.rpartition(".")
        if prefix in names:
            if prefix == "classifier.0" and leaf == "weight":
                if v.ndim != 2 or v.shape[1] % 49 != 0:
                    raise CheckpointError(f"torchvision VGG: {k} has shape {tuple(v.shape)}, expected (O, C*7*7)")
                v = v.reshape(v.shape[0], -1, 7, 7)
            elif prefix == "classifier.3" and leaf == "weight":
                v = v.reshape(v.shape[0], -1, 1, 1)
            k = f"{names[prefix]}.{leaf}"
        elif prefix.startswith("classifier."):
            raise CheckpointError(f"torchvision VGG: unexpected classifier key {k!r}")
        out[k] = v
    return out


class _Npz:
    """Access to a JAX checkpoint's arrays with timm's layout rules (``_n2p``)."""

    def __init__(self, w: Mapping[str, np.ndarray], source: str) -> None:
        self.w = w
        self.source = source
        self.prefix = ""
        for p in ("opt/target/", "params/", "params/img/"):
            if f"{p}embedding/kernel" in w:
                self.prefix = p
                break
        if f"{self.prefix}embedding/kernel" not in w:
            raise CheckpointError(
                f"{source}: not a Google ViT .npz (no 'embedding/kernel'; keys start with {sorted(w)[:5]})"
            )
        p = self.prefix
        self.big_vision = p.startswith("params/") or f"{p}pos_embedding" in w
        self.stacked = f"{p}Transformer/encoderblock/LayerNorm_0/scale" in w
        self.used: set[str] = set()

    def has(self, key: str) -> bool:
        return self.prefix + key in self.w

    def raw(self, key: str, idx: Optional[int] = None) -> Tensor:
        full = self.prefix + key
        if full not in self.w:
            raise CheckpointError(f"{self.source}: missing array {full!r}")
        self.used.add(full)
        a = np.asarray(self.w[full])
        if idx is not None:
            a = a[idx]
        if a.dtype.kind not in "fc":
            raise CheckpointError(f"{self.source}: {full} has non-float dtype {a.dtype}")
        return torch.from_numpy(np.ascontiguousarray(a.astype(np.float32, copy=False)))

    def dense(self, key: str, idx: Optional[int] = None) -> Tensor:
        """(in, out) kernel -> (out, in)."""
        return self.raw(key, idx).t().contiguous()

    def conv(self, key: str) -> Tensor:
        """HWIO kernel -> OIHW."""
        return self.raw(key).permute(3, 2, 0, 1).contiguous()

    def unused(self) -> list[str]:
        return sorted(k for k in self.w if k not in self.used)


def _npz_transformer(z: _Npz, out: dict[str, Tensor]) -> None:
    """The ViT part shared by ViT and the hybrid: tokens, blocks, final norm, head."""
    p = ""
    out["cls_token"] = z.raw("cls")
    out["pos_embed"] = z.raw("pos_embedding" if z.big_vision else "Transformer/posembed_input/pos_embedding")
    if out["pos_embed"].ndim == 2:
        out["pos_embed"] = out["pos_embed"].unsqueeze(0)
    mha, mlp, ln2 = (0, 0, 1) if z.big_vision else (1, 3, 2)
    if z.stacked:
        depth = int(z.w[f"{z.prefix}Transformer/encoderblock/LayerNorm_0/scale"].shape[0])
    else:
        ids = {int(m.group(1)) for k in z.w for m in [re.search(r"Transformer/encoderblock_(\d+)/", k)] if m}
        depth = max(ids) + 1 if ids else 0
    for i in range(depth):
        bp, idx = ("Transformer/encoderblock/", i) if z.stacked else (f"Transformer/encoderblock_{i}/", None)
        ap = f"{bp}MultiHeadDotProductAttention_{mha}/"
        o = f"blocks.{i}."
        out[o + "norm1.weight"] = z.raw(f"{bp}LayerNorm_0/scale", idx)
        out[o + "norm1.bias"] = z.raw(f"{bp}LayerNorm_0/bias", idx)
        # query/key/value kernels are (D, H, hd): flatten to (D, H*hd), transpose, stack q|k|v.
        out[o + "attn.qkv.weight"] = torch.cat(
            [z.raw(f"{ap}{n}/kernel", idx).flatten(1).t() for n in ("query", "key", "value")]
        ).contiguous()
        out[o + "attn.qkv.bias"] = torch.cat(
            [z.raw(f"{ap}{n}/bias", idx).reshape(-1) for n in ("query", "key", "value")]
        )
        # out kernel is (H, hd, D): flatten to (H*hd, D), transpose.
        out[o + "attn.proj.weight"] = z.raw(f"{ap}out/kernel", idx).flatten(0, 1).t().contiguous()
        out[o + "attn.proj.bias"] = z.raw(f"{ap}out/bias", idx)
        out[o + "norm2.weight"] = z.raw(f"{bp}LayerNorm_{ln2}/scale", idx)
        out[o + "norm2.bias"] = z.raw(f"{bp}LayerNorm_{ln2}/bias", idx)
        for r in range(2):
            out[o + f"mlp.fc{r + 1}.weight"] = z.dense(f"{bp}MlpBlock_{mlp}/Dense_{r}/kernel", idx)
            out[o + f"mlp.fc{r + 1}.bias"] = z.raw(f"{bp}MlpBlock_{mlp}/Dense_{r}/bias", idx)
    out["norm.weight"] = z.raw(f"{p}Transformer/encoder_norm/scale")
    out["norm.bias"] = z.raw(f"{p}Transformer/encoder_norm/bias")
    if z.has("head/kernel"):
        out["head.weight"] = z.dense("head/kernel")
        out["head.bias"] = z.raw("head/bias")
    if z.has("pre_logits/kernel"):
        z.raw("pre_logits/kernel"), z.raw("pre_logits/bias")
        _logger.info("%s: dropping the in21k pre_logits (Dense+tanh) layer, as timm does", z.source)


def _check_npz_used(z: _Npz) -> None:
    left = z.unused()
    if left:
        raise CheckpointError(f"{z.source}: arrays not converted (unknown .npz layout?): {', '.join(left)}")


def convert_vit_npz(w: Mapping[str, np.ndarray], source: str = ".npz") -> dict[str, Tensor]:
    """Google ViT ``.npz`` (google-research/vision_transformer; big_vision spellings accepted).

    ``embedding/kernel`` HWIO -> ``patch_embed.proj.weight`` OIHW; dense kernels (in, out) are
    transposed; ``query/key/value`` (D, H, hd) are flattened, transposed and stacked into
    ``attn.qkv``; ``out`` (H, hd, D) -> ``attn.proj``; ``pre_logits`` (in21k) is dropped.
    """
    z = _Npz(w, source)
    out = {"patch_embed.proj.weight": z.conv("embedding/kernel"), "patch_embed.proj.bias": z.raw("embedding/bias")}
    _npz_transformer(z, out)
    _check_npz_used(z)
    return out


def convert_vit_hybrid_npz(w: Mapping[str, np.ndarray], source: str = ".npz") -> dict[str, Tensor]:
    """Google R50+ViT ``.npz``: the ViT part as :func:`convert_vit_npz` plus the ResNetV2 backbone
    (``conv_root``/``gn_root`` -> ``patch_embed.backbone.stem.{conv,norm}``;
    ``block{s}/unit{j}/{conv,gn}{r}`` -> ``patch_embed.backbone.stages.{s-1}.blocks.{j-1}.{conv,norm}{r}``;
    ``conv_proj``/``gn_proj`` -> ``downsample.{conv,norm}``). The 1x1 ``embedding`` is ``patch_embed.proj``.

    Note: the JAX model computes GroupNorm with eps 1e-6 and weight standardisation with
    (w - mean) / (std + 1e-5); timm (and vitfer) use 1e-5 and sqrt(var + 1e-8), so logits of an
    npz-converted hybrid differ slightly from the JAX model's (timm's HF weights are the target).
    """
    z = _Npz(w, source)
    bb = "patch_embed.backbone."
    out = {
        bb + "stem.conv.weight": z.conv("conv_root/kernel"),
        bb + "stem.norm.weight": z.raw("gn_root/scale"),
        bb + "stem.norm.bias": z.raw("gn_root/bias"),
    }
    units = sorted(
        {(int(m.group(1)), int(m.group(2))) for k in w for m in [re.search(r"(?:^|/)block(\d+)/unit(\d+)/", k)] if m}
    )
    for s, j in units:
        src, dst = f"block{s}/unit{j}/", f"{bb}stages.{s - 1}.blocks.{j - 1}."
        for r in (1, 2, 3):
            out[f"{dst}conv{r}.weight"] = z.conv(f"{src}conv{r}/kernel")
            out[f"{dst}norm{r}.weight"] = z.raw(f"{src}gn{r}/scale")
            out[f"{dst}norm{r}.bias"] = z.raw(f"{src}gn{r}/bias")
        if z.has(f"{src}conv_proj/kernel"):
            out[f"{dst}downsample.conv.weight"] = z.conv(f"{src}conv_proj/kernel")
            out[f"{dst}downsample.norm.weight"] = z.raw(f"{src}gn_proj/scale")
            out[f"{dst}downsample.norm.bias"] = z.raw(f"{src}gn_proj/bias")
    out["patch_embed.proj.weight"] = z.conv("embedding/kernel")
    out["patch_embed.proj.bias"] = z.raw("embedding/bias")
    _npz_transformer(z, out)
    _check_npz_used(z)
    return out


_NPZ_CONVERTERS: dict[str, Callable[[Mapping[str, np.ndarray], str], dict[str, Tensor]]] = {
    "vit": convert_vit_npz,
    "vit_hybrid": convert_vit_hybrid_npz,
}


@dataclass(frozen=True)
class OriginalRelease:
    """Where a family's weights were first released, in which format, and how vitfer reads them."""

    family: str
    fmt: str
    description: str
    converter: str
    url_template: Optional[str] = None  # "{name}" is the vitfer model name, "{orig}" the original name

    def url(self, name: str) -> Optional[str]:
        if not self.url_template:
            return None
        return self.url_template.format(name=name, orig=_ORIGINAL_NAMES.get(name, name))


_ORIGINAL_NAMES = {
    # IBM released *_224 / *_384; timm renamed them *_240 / *_408 (the input size actually used).
    **{
        f"crossvit_{v}_240": f"crossvit_{v}_224"
        for v in ("tiny", "small", "base", "9", "15", "18", "9_dagger", "15_dagger", "18_dagger")
    },
    **{f"crossvit_{v}_dagger_408": f"crossvit_{v}_dagger_384" for v in ("15", "18")},
    "vit_tiny_patch16_224": "augreg/Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0"
    "--imagenet2012-steps_20k-lr_0.03-res_224",
    "vit_small_patch16_224": "augreg/S_16-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.0-sd_0.0"
    "--imagenet2012-steps_20k-lr_0.03-res_224",
    "deit_tiny_distilled_patch16_224": "deit_tiny_distilled_patch16_224-b40b3cf7",
    "deit_small_distilled_patch16_224": "deit_small_distilled_patch16_224-649709d9",
    "deit_base_distilled_patch16_224": "deit_base_distilled_patch16_224-df68dfff",
    "vgg16": "vgg16-397923af",
    "vgg19": "vgg19-dcbb9e9d",
    "resnet50d": "resnet50d_ra2-464e36ba",
}

ORIGINAL_RELEASES: dict[str, OriginalRelease] = {
    "vit": OriginalRelease(
        "vit", "google-npz", "Google JAX/Flax .npz (google-research/vision_transformer, AugReg)",
        "convert_vit_npz", "https://storage.googleapis.com/vit_models/{orig}.npz",
    ),
    "convit": OriginalRelease(
        "convit", "convit-pth", "facebookresearch/convit .pth, state dict under 'model', timm's key names",
        "convert_convit_original", "https://dl.fbaipublicfiles.com/convit/{name}.pth",
    ),
    "crossvit": OriginalRelease(
        "crossvit", "ibm-crossvit-pth",
        "IBM/CrossViT .pth, bare state dict, nn.ParameterList keys pos_embed.0 / cls_token.0",
        "convert_crossvit_ibm", "https://github.com/IBM/CrossViT/releases/download/weights-0.1/{orig}.pth",
    ),
    "vit_hybrid": OriginalRelease(
        "vit_hybrid", "google-npz", "Google JAX/Flax .npz (R50+ViT-B_16); timm re-released it as a timm-layout .pth",
        "convert_vit_hybrid_npz", None,
    ),
    "resnet": OriginalRelease(
        "resnet", "timm-pth", "timm's own GitHub release .pth (timm layout)",
        "convert_timm_resnet",
        "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-weights/{orig}.pth",
    ),
    "vgg": OriginalRelease(
        "vgg", "torchvision-pth", "torchvision .pth (features.*, classifier.0/3/6 Linear layers)",
        "convert_vgg_torchvision", "https://download.pytorch.org/models/{orig}.pth",
    ),
}


# Models whose first release is not their family's (the vit family's DeiT models: Facebook's .pth).
MODEL_RELEASES: dict[str, OriginalRelease] = {
    name: OriginalRelease(
        "vit", "deit-pth", "facebookresearch/deit .pth, state dict under 'model', timm's key names",
        "convert_timm_vit", "https://dl.fbaipublicfiles.com/deit/{orig}.pth",
    )
    for name in ("deit_tiny_distilled_patch16_224", "deit_small_distilled_patch16_224", "deit_base_distilled_patch16_224")
}


def original_release(name: str, family: str) -> Optional[OriginalRelease]:
    """Where model ``name`` (of ``family``) was first released: its own entry in
    :data:`MODEL_RELEASES`, else its family's in :data:`ORIGINAL_RELEASES` (``None`` if neither)."""
    return MODEL_RELEASES.get(name) or ORIGINAL_RELEASES.get(family)


def convert_checkpoint(
    model_name: str,
    tensors: Mapping[str, Any],
    fmt: str,
    source: str,
    metadata: Optional[Mapping[str, str]] = None,
) -> tuple[dict[str, Tensor], str]:
    """Any supported checkpoint of ``model_name`` -> a validated timm-layout state dict.

    Args:
        tensors: what :func:`vitfer.weights.io.read_checkpoint` returned.
        fmt: ``"safetensors"``, ``"torch"`` or ``"npz"``.
        source: the file / hub id, used in error messages.
        metadata: the safetensors metadata, if any (a vitfer checkpoint names its model there).

    Returns:
        ``(state_dict, layout)``, layout one of ``"timm"``, ``"vitfer"``, ``"google-npz"``,
        ``"ibm-crossvit-pth"``, ``"torchvision-pth"``.
    """
    spec = model_spec(model_name)
    meta_model, overrides = checkpoint_architecture(metadata)
    # A vitfer checkpoint of this architecture is checked against the model it describes.
    arch_overrides = overrides if meta_model is not None and same_arch(meta_model, spec.name) else None
    if fmt == "npz":
        conv = _NPZ_CONVERTERS.get(spec.family)
        if conv is None:
            raise CheckpointError(
                f"{source}: a JAX .npz checkpoint cannot be converted to {spec.name} (family {spec.family!r}); "
                f".npz is supported for families {sorted(_NPZ_CONVERTERS)}"
            )
        sd, layout = conv(tensors, source), "google-npz"
    else:
        bad = [k for k, v in tensors.items() if not isinstance(v, Tensor)]
        if bad:
            raise CheckpointError(f"{source}: entries that are not tensors: {bad[:10]}")
        keys = set(tensors)
        if spec.family == "crossvit" and any(_IBM_RE.match(k) for k in keys):
            sd, layout = convert_crossvit_ibm(tensors), "ibm-crossvit-pth"
        elif spec.family == "vgg" and any(k.startswith("classifier.") for k in keys):
            sd, layout = convert_vgg_torchvision(tensors), "torchvision-pth"
        else:
            sd, layout = dict(tensors), ("vitfer" if meta_model else "timm")
    return convert_timm(spec.name, sd, source, meta_model, arch_overrides), layout


def same_arch(a: str, b: str) -> bool:
    if a == b:
        return True
    try:
        return model_spec(a).name == model_spec(b).name
    except KeyError:
        return False
