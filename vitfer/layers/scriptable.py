"""TorchScript forms of the transformer layers.

The eager layers run fused and chunked kernels chosen in Python (workspaces, in-place GEMM
accumulation, hook checks) that TorchScript cannot compile. ``torch.jit.script(model)`` calls each
module's ``__prepare_scriptable__``; the transformer layers answer with one of these modules: same
submodules and parameters (the same parameter names), plain ``forward(x) -> Tensor`` code that
TorchScript compiles. The attention dispatch is kept: on CUDA tensors (``impl="auto"``) the
scripted graph calls ``F.scaled_dot_product_attention``, elsewhere the hand-written
``softmax(q k^T * scale) v`` (both branches are in the graph, chosen per call by ``q.is_cuda``).
Outputs equal the eager layers' up to float rounding.
"""
from typing import List

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ScriptAttention", "ScriptBlock", "ScriptCrossAttention", "ScriptCrossAttentionBlock", "ScriptGPSA",
    "ScriptGPSABlock", "ScriptMlp", "ScriptMultiScaleBlock", "manual_attention", "use_sdpa",
]


def use_sdpa(impl: str, q: Tensor) -> bool:
    """The dispatch of :func:`vitfer.layers.attention.resolve_impl`: SDPA for ``"sdpa"``, and for
    ``"auto"`` on CUDA tensors; the hand-written path otherwise."""
    return impl == "sdpa" or (impl == "auto" and q.is_cuda)


def manual_attention(q: Tensor, k: Tensor, v: Tensor, scale: float, dropout_p: float) -> Tensor:
    """``dropout(softmax((q k^T) * scale)) v`` (the hand-written path, scriptable)."""
    a = torch.matmul(q, k.transpose(-2, -1)).mul_(scale).softmax(dim=-1)
    if dropout_p > 0.0:
        a = F.dropout(a, p=dropout_p, training=True)
    return torch.matmul(a, v)


class ScriptMlp(nn.Module):
    def __init__(self, mlp: nn.Module) -> None:
        super().__init__()
        self.fc1, self.act, self.drop1, self.fc2, self.drop2 = mlp.fc1, mlp.act, mlp.drop1, mlp.fc2, mlp.drop2

    def forward(self, x: Tensor) -> Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class ScriptAttention(nn.Module):
    def __init__(self, attn: nn.Module) -> None:
        super().__init__()
        self.num_heads: int = attn.num_heads
        self.head_dim: int = attn.head_dim
        self.scale: float = attn.scale
        self.impl: str = attn.impl
        self.qkv, self.attn_drop, self.proj, self.proj_drop = attn.qkv, attn.attn_drop, attn.proj, attn.proj_drop

    def forward(self, x: Tensor) -> Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        p = self.attn_drop.p if self.training else 0.0
        if use_sdpa(self.impl, q):
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=p, scale=self.scale)
        else:
            out = manual_attention(q, k, v, self.scale, p)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, N, C)))


class ScriptBlock(nn.Module):
    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.norm1, self.norm2 = block.norm1, block.norm2
        self.attn, self.mlp = block.attn, block.mlp  # made scriptable in turn
        self.drop_path1, self.drop_path2 = block.drop_path1, block.drop_path2

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class ScriptGPSA(nn.Module):
    def __init__(self, gpsa: nn.Module) -> None:
        super().__init__()
        self.num_heads: int = gpsa.num_heads
        self.head_dim: int = gpsa.head_dim
        self.scale: float = gpsa.scale
        self.impl: str = gpsa.impl
        self.qk, self.v, self.attn_drop, self.proj = gpsa.qk, gpsa.v, gpsa.attn_drop, gpsa.proj
        self.pos_proj, self.proj_drop, self.gating_param = gpsa.pos_proj, gpsa.proj_drop, gpsa.gating_param
        self.rel_indices = gpsa.rel_indices  # derived, not part of the state dict (as in GPSA)

    def forward(self, x: Tensor) -> Tensor:
        B, N, C = x.shape
        H, d = self.num_heads, self.head_dim
        q, k = self.qk(x).view(B, N, 2, H, d).permute(2, 0, 3, 1, 4).unbind(0)
        v = self.v(x).view(B, N, H, d).transpose(1, 2)
        ri = self.rel_indices.to(device=x.device, dtype=x.dtype)
        pos = self.pos_proj(ri).permute(2, 0, 1).softmax(dim=-1)  # (H, N, N)
        g = torch.sigmoid(self.gating_param).to(x.dtype).view(1, H, 1, 1)
        p = self.attn_drop.p if self.training else 0.0
        if use_sdpa(self.impl, q) and p == 0.0:
            content = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
            out = torch.lerp(content, torch.matmul(pos, v), g)
        else:
            a = torch.matmul(q, k.transpose(-2, -1)).mul_(self.scale).softmax(dim=-1)
            a = torch.lerp(a, pos.unsqueeze(0), g)
            if p > 0.0:
                a = F.dropout(a, p=p, training=True)
            out = torch.matmul(a, v)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, N, C)))


class ScriptGPSABlock(nn.Module):
    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.norm1, self.attn, self.drop_path = block.norm1, block.attn, block.drop_path
        self.norm2, self.mlp = block.norm2, block.mlp

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class ScriptCrossAttention(nn.Module):
    def __init__(self, attn: nn.Module) -> None:
        super().__init__()
        self.num_heads: int = attn.num_heads
        self.head_dim: int = attn.head_dim
        self.scale: float = attn.scale
        self.impl: str = attn.impl
        self.wq, self.wk, self.wv = attn.wq, attn.wk, attn.wv
        self.attn_drop, self.proj, self.proj_drop = attn.attn_drop, attn.proj, attn.proj_drop

    def forward(self, x: Tensor) -> Tensor:
        B, N, C = x.shape
        H, d = self.num_heads, self.head_dim
        q = self.wq(x[:, 0:1]).reshape(B, 1, H, d).transpose(1, 2)
        k = self.wk(x).reshape(B, N, H, d).transpose(1, 2)
        v = self.wv(x).reshape(B, N, H, d).transpose(1, 2)
        p = self.attn_drop.p if self.training else 0.0
        if use_sdpa(self.impl, q):
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=p, scale=self.scale)
        else:
            out = manual_attention(q, k, v, self.scale, p)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, 1, C)))


class ScriptCrossAttentionBlock(nn.Module):
    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.norm1, self.attn, self.drop_path = block.norm1, block.attn, block.drop_path

    def forward(self, x: Tensor) -> Tensor:
        return x[:, 0:1] + self.drop_path(self.attn(self.norm1(x)))


class ScriptMultiScaleBlock(nn.Module):
    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.num_branches: int = block.num_branches
        self.num_prefix_tokens: int = block.num_prefix_tokens
        self.blocks, self.projs = block.blocks, block.projs
        self.fusion, self.revert_projs = block.fusion, block.revert_projs

    def forward(self, xs: List[Tensor]) -> List[Tensor]:
        outs_b: List[Tensor] = []
        for d, blocks in enumerate(self.blocks):
            outs_b.append(blocks(xs[d]))
        cls_new: List[Tensor] = []
        for d, proj in enumerate(self.projs):
            o = (d + 1) % self.num_branches
            cls_new.append(torch.cat([proj(outs_b[d][:, 0:1]), outs_b[o][:, self.num_prefix_tokens :]], dim=1))
        fused: List[Tensor] = []
        for d, fusion in enumerate(self.fusion):
            fused.append(fusion(cls_new[d]))
        outs: List[Tensor] = []
        for d, revert in enumerate(self.revert_projs):
            outs.append(torch.cat([revert(fused[d][:, 0:1]), outs_b[d][:, 1:]], dim=1))
        return outs
