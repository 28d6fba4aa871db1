"""Adam for the trainer without ``torch.optim.Adam``'s import of ``torch._dynamo`` (~2 s of a
training run's start on a busy 2-core machine): the same update, through the functional
``torch.optim.adam.adam`` that ``Adam.step`` calls on CPU (single-tensor, no foreach, no fused), with
the same state, so the parameters come out bit for bit the same. torch is imported inside functions."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:  # pragma: no cover
    import torch

BETAS = (0.9, 0.999)  # torch.optim.Adam's defaults, as the trainer used them
EPS = 1e-8


_NEEDED = {"foreach", "fused", "capturable", "differentiable", "grad_scale", "found_inf", "has_complex", "amsgrad",
           "beta1", "beta2", "lr", "weight_decay", "eps", "maximize"}


def optimizer(params: Sequence["torch.Tensor"], lr: float) -> Any:
    """:class:`Adam` where it is ``torch.optim.Adam``'s CPU update bit for bit (every parameter on the
    CPU, and this torch's functional ``adam`` takes the arguments it is called with); else
    ``torch.optim.Adam`` itself (a GPU's foreach path, another torch release's signature)."""
    import torch

    params = list(params)
    if all(p.device.type == "cpu" for p in params):
        try:
            from torch.optim.adam import adam

            if _NEEDED <= set(inspect.signature(adam).parameters):
                return Adam(params, lr)
        except (ImportError, ValueError, TypeError):  # no such function, or no signature to read
            pass
    return torch.optim.Adam(params, lr=lr)


class Adam:
    """``torch.optim.Adam(params, lr=lr)`` with ``zero_grad`` (to None) and ``step`` only."""

    def __init__(self, params: Sequence["torch.Tensor"], lr: float) -> None:
        import torch

        self.params = list(params)
        self.lr = float(lr)
        scalar = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
        self._steps = [torch.tensor(0.0, dtype=scalar) for _ in self.params]
        self._exp_avgs: list["torch.Tensor | None"] = [None] * len(self.params)
        self._exp_avg_sqs: list["torch.Tensor | None"] = [None] * len(self.params)

    def zero_grad(self) -> None:
        for param in self.params:
            param.grad = None

    def step(self) -> None:
        import torch
        from torch.optim.adam import adam

        used = [i for i, p in enumerate(self.params) if p.grad is not None]
        for i in used:
            if self._exp_avgs[i] is None:
                self._exp_avgs[i] = torch.zeros_like(self.params[i], memory_format=torch.preserve_format)
                self._exp_avg_sqs[i] = torch.zeros_like(self.params[i], memory_format=torch.preserve_format)
        with torch.no_grad():
            adam(
                [self.params[i] for i in used], [self.params[i].grad for i in used],
                [self._exp_avgs[i] for i in used], [self._exp_avg_sqs[i] for i in used], [],
                [self._steps[i] for i in used], foreach=False, fused=False, capturable=False, differentiable=False,
                grad_scale=None, found_inf=None, has_complex=False, amsgrad=False, beta1=BETAS[0],
                beta2=BETAS[1], lr=self.lr, weight_decay=0.0, eps=EPS, maximize=False,
            )
