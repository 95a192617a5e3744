"""A checkpoint's RNG state restores where fewer GPUs are visible than it saw.

The checkpoint keeps one CUDA generator state per GPU visible when it was written. Resumed on
a machine (or under ``CUDA_VISIBLE_DEVICES``) with fewer GPUs, restoring every one of them
raised IndexError from torch's generator table. There is no GPU here, so torch's own CUDA RNG
code runs against a generator table of the visible size made of real (CPU) generators: CUDA
"initialised", ``device_count`` = the table's length; everything else is torch's code.
"""

from __future__ import annotations

import pytest
import torch

from trainer.train.state import rng_state, set_rng_state


@pytest.fixture
def visible_gpus(monkeypatch):
    def make(n: int) -> tuple[torch.Generator, ...]:
        table = tuple(torch.Generator() for _ in range(n))
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
        monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
        monkeypatch.setattr(torch.cuda.random, "is_initialized", lambda: True, raising=False)
        monkeypatch.setattr(torch.cuda, "default_generators", table)
        return table

    return make


def _saved_with_gpus(n: int) -> dict:
    state = rng_state()  # this machine: no "cuda" entry
    state["cuda"] = [torch.Generator().manual_seed(100 + i).get_state() for i in range(n)]
    return state


@pytest.mark.parametrize(("saved", "visible"), [(2, 1), (2, 0), (1, 2), (2, 2)])
def test_restores_the_gpus_both_sides_have_and_says_what_it_left(visible_gpus, saved, visible):
    state = _saved_with_gpus(saved)
    table = visible_gpus(visible)
    note = set_rng_state(state)
    both = min(saved, visible)
    for i in range(both):  # restored: the generator continues the saved stream
        assert torch.equal(table[i].get_state(), state["cuda"][i])
    if both == saved:
        assert note == ""
    else:
        assert note == (
            f"CUDA RNG state restored for {both} of the {saved} GPUs the checkpoint saw "
            f"({visible} visible now)"
        )


def test_host_generators_are_restored_exactly():
    state = rng_state()
    expected = torch.rand(3)
    torch.rand(5)
    assert set_rng_state(state) == ""
    assert torch.equal(torch.rand(3), expected)
