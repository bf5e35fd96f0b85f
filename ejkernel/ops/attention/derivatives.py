"""Which derivatives an implementation gives, and the error that says so.

Every fused kernel and the chunked path define their gradient with ``jax.custom_vjp``: reverse mode only
(``jax.grad``, ``jax.vjp``, ``jax.jacrev``). Forward mode raises JAX's "can't apply forward-mode autodiff
(jvp) to a custom_vjp function", which names neither the cause nor the way out; ``reverse_mode_only``
turns it into one that does. (Under ``jax.jit(jax.jvp(...))`` JAX raises later, outside the call.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

__all__ = ["reverse_mode_only", "forward_mode_message"]


def forward_mode_message(implementation: str, detail: str = "") -> str:
    """What a forward-mode derivative of ``implementation`` gets told."""
    return (
        f"{implementation} is differentiable in reverse mode only (jax.grad, jax.vjp, jax.jacrev{detail}): its "
        "gradient is a jax.custom_vjp. For jax.jvp or jax.jacfwd, call the dense reference, "
        "ejkernel.kernels.xla.reference.attention, which supports every JAX transformation"
    )


@contextlib.contextmanager
def reverse_mode_only(implementation: str, detail: str = "") -> Iterator[None]:
    """Re-raises JAX's forward-mode error of a ``custom_vjp`` call in the block with ``forward_mode_message``."""
    try:
        yield
    except TypeError as e:
        if "forward-mode" not in str(e):
            raise
        raise TypeError(forward_mode_message(implementation, detail)) from e
