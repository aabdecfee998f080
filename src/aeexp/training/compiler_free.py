"""torch.optim's optimizers made, saved, loaded and stepped without importing ``torch._dynamo`` (torch's compiler).

In torch 2.13 every optimizer's constructor imports the compiler, whatever its arguments (``fused``, ``foreach`` or
neither; Adam, AdamW, SGD): ``Optimizer.__init__`` calls ``add_param_group``, which torch wraps, like
``state_dict``, ``load_state_dict`` and ``zero_grad``, in ``torch._disable_dynamo``, and that wrapper imports
``torch._dynamo`` at its first call, to tell the compiler not to trace the method. ``optimizer.step()`` imports it
too, for two graph breaks. No flag or argument avoids it; the import costs ~1.1 s of CPU (1.3-3.5 s of wall time on
a 2-core machine, BENCHMARKS.md), a fifth of a short run. aeexp compiles only a model's loss (``trainer.compile``),
never code that calls the optimizer, so the wrappers have nothing to do in its process.

Internals of torch used here, each behind one function with a fallback (torch's own path, which imports the
compiler, where they are not as expected):

- the cache ``torch._disable_dynamo`` keeps on the function it wraps (``__dynamo_disable``), filled with the function
  itself (:func:`leave_compiler_unimported`): torch then calls it without the wrapper;
- the optimizer class's own ``step`` under torch.optim's wrappers (``inspect.unwrap``), called under
  ``torch.no_grad`` as they would call it outside the compiler (:func:`own_step`).
"""

from __future__ import annotations

import inspect
import sys

import torch

# torch.optim.Optimizer's methods wrapped in torch._disable_dynamo (torch 2.13)
WRAPPED_METHODS = ("add_param_group", "state_dict", "load_state_dict", "zero_grad")
_CACHE = "__dynamo_disable"  # where torch._disable_dynamo keeps the disabled function once it has made it


def leave_compiler_unimported() -> None:
    """Let ``torch.optim.Optimizer``'s wrapped methods (:data:`WRAPPED_METHODS`) run without importing the compiler,
    in this process from now on: nothing to do once ``torch._dynamo`` is imported (the wrappers have then cached
    their disabled function), or where a method is not wrapped as expected."""
    if "torch._dynamo" in sys.modules:
        return
    for name in WRAPPED_METHODS:
        original = getattr(getattr(torch.optim.Optimizer, name, None), "__wrapped__", None)
        if callable(original) and getattr(original, _CACHE, None) is None:
            setattr(original, _CACHE, original)


def own_step(optimizer: torch.optim.Optimizer) -> None:
    """``optimizer.step()`` as torch.optim runs it outside the compiler, without importing it: the class's own step
    under ``torch.no_grad`` (what its wrapper does for a non-differentiable optimizer, less the graph breaks, the
    profiler's label and the step hooks). ``optimizer.step()`` itself for a differentiable optimizer, one whose step
    is not wrapped, or when the compiler is imported already."""
    step = type(optimizer).step
    own = inspect.unwrap(step)
    if own is step or optimizer.defaults.get("differentiable") or "torch._dynamo" in sys.modules:
        optimizer.step()
        return
    with torch.no_grad():
        own(optimizer)
