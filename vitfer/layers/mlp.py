"""Transformer feed-forward block."""

from typing import Callable, Optional

from torch import Tensor, nn

from .residual import activation, branch_output, call_linear

__all__ = ["Mlp"]


class Mlp(nn.Module):
    """``fc2(drop(act(fc1(x))))`` with timm's parameter names.

    x: (..., in_features) -> (..., out_features).
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: Optional[int] = None,
        out_features: Optional[int] = None,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        bias: bool = True,
        drop: float = 0.0,
    ) -> None:
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_features, out_features, bias=bias)
        self.drop2 = nn.Dropout(drop)

    def __prepare_scriptable__(self) -> nn.Module:
        """``torch.jit.script``: the scriptable form (:mod:`vitfer.layers.scriptable`)."""
        from .scriptable import ScriptMlp

        return ScriptMlp(self)

    def forward(self, x: Tensor, residual: Optional[Tensor] = None, inplace: bool = False) -> Tensor:
        """``fc2(drop(act(fc1(x))))``, or ``residual + ...`` of it with ``residual`` as the
        accumulator of fc2's GEMM (:func:`vitfer.layers.residual.linear_residual`); with
        ``inplace`` the caller allows ``residual`` to be overwritten when no gradient is needed."""
        h = self.drop1(activation(self.act, call_linear(self.fc1, x)))
        return branch_output(h, self.fc2, self.drop2, residual, inplace)
