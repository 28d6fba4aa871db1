"""The trainer's Adam gives torch.optim.Adam's parameters bit for bit (a parameter without a
gradient in some steps included), without importing torch._dynamo."""

from __future__ import annotations

import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

from llama_index_deepmemory.deep_memory.training.adam import Adam, optimizer  # noqa: E402


def _run(make_optimizer, zero_grad) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    weight = torch.nn.Parameter(torch.eye(6) + 0.1 * torch.randn(6, 6, generator=gen))
    bias = torch.nn.Parameter(torch.zeros(6))
    spare = torch.nn.Parameter(torch.randn(4, 6, generator=gen))
    optimizer = make_optimizer([weight, bias, spare])
    for step in range(25):
        zero_grad(optimizer)
        x = torch.randn(8, 6, generator=gen)
        loss = ((x @ weight.T + bias - x.flip(1)) ** 2).mean()
        if step % 3:  # the third parameter has no gradient every third step
            loss = loss + (spare**2).sum() * 1e-3
        loss.backward()
        optimizer.step()
    return [weight.detach().clone(), bias.detach().clone(), spare.detach().clone()]


def test_adam_equals_torch_optim_adam_bit_for_bit() -> None:
    ours = _run(lambda p: Adam(p, lr=2e-3), lambda o: o.zero_grad())
    theirs = _run(lambda p: torch.optim.Adam(p, lr=2e-3), lambda o: o.zero_grad(set_to_none=True))
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)


def test_adam_does_not_import_dynamo() -> None:
    code = (
        "import sys, torch\n"
        "from llama_index_deepmemory.deep_memory.training.adam import Adam, optimizer\n"
        "p = torch.nn.Parameter(torch.ones(3)); o = optimizer([p], lr=0.1)\n"
        "assert isinstance(o, Adam)\n"
        "(p * p).sum().backward(); o.step(); o.zero_grad()\n"
        "assert 'torch._dynamo' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_parameters_off_the_cpu_get_torch_optim_adam() -> None:
    """Bit for bit holds for the CPU update only: elsewhere (here a meta tensor stands for a GPU's) the
    trainer steps with torch.optim.Adam itself."""
    cpu = torch.nn.Parameter(torch.ones(3))
    off = torch.nn.Parameter(torch.empty(3, device="meta"))
    assert isinstance(optimizer([cpu], lr=0.1), Adam)
    assert isinstance(optimizer([cpu, off], lr=0.1), torch.optim.Adam)
