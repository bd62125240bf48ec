"""The random states a loader's epoch order depends on, captured and put back: the
loader's `generator`, torch's global RNG (a sampler made without a generator draws from
it, even when the loader has one) and the generators its samplers hold themselves."""
from __future__ import annotations

from typing import Any

import torch


def sampler_generators(sampler) -> list[torch.Generator]:
    """The torch.Generators of a sampler and of the samplers it wraps (a BatchSampler's
    `.sampler`...), each once."""
    found: list[torch.Generator] = []
    for _ in range(8):  # a chain of wrappers, not a cycle
        g = getattr(sampler, "generator", None)
        if isinstance(g, torch.Generator) and all(g is not f for f in found):
            found.append(g)
        sampler = getattr(sampler, "sampler", None)
        if sampler is None:
            break
    return found


def capture(loader) -> dict[str, Any]:
    g = loader.generator
    return {"loader": None if g is None else g.get_state(), "global": torch.get_rng_state(),
            "samplers": [s.get_state() for s in sampler_generators(loader._index_sampler)]}


def restore(loader, state, with_global: bool = True) -> None:
    """Puts `state` back; torch's global RNG only `with_global` (the caller keeps the
    user's own). A state saved before this format holds one tensor: the loader's
    generator's state, or the global RNG's where it had none."""
    if isinstance(state, torch.Tensor):
        state = ({"loader": state, "global": None, "samplers": []} if loader.generator is not None
                 else {"loader": None, "global": state, "samplers": []})
    if state["loader"] is not None and loader.generator is not None:
        loader.generator.set_state(state["loader"])
    if with_global and state["global"] is not None:
        torch.set_rng_state(state["global"])
    generators = sampler_generators(loader._index_sampler)
    if len(generators) == len(state["samplers"]):
        for gen, s in zip(generators, state["samplers"]):
            gen.set_state(s)
