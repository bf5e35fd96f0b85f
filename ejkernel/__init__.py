"""ejkernel: attention kernels for JAX with one set of semantics on every backend.

Public names: ``attention``, ``dot_product_attention`` (``jax.nn``'s signature and semantics), ``flax``
(``attention_fn`` for flax's modules; flax itself is imported only when needed), ``get_kernel``,
``list_kernels``, ``register_kernel``, ``explain``, the error types, and context parallelism:
``ring_attention`` (inside ``shard_map``), ``sharded_ring_attention`` and the load-balancing layout
``to_ring_layout``/``from_ring_layout``/``load_balance_permutation``. Importing the package changes no
global state (no JAX config, no environment, no files).
"""

from ejkernel import flax
from ejkernel.errors import (
    DuplicateKernelError,
    EjkernelError,
    FallbackWarning,
    KernelNotFoundError,
    KernelUnavailableError,
)
from ejkernel.ops.attention.api import attention
from ejkernel.ops.attention.api import explain_attention as explain
from ejkernel.ops.attention.jax_nn import dot_product_attention
from ejkernel.parallel.ring import ring_attention
from ejkernel.parallel.ring_layout import from_ring_layout, load_balance_permutation, to_ring_layout
from ejkernel.parallel.sharded import sharded_ring_attention
from ejkernel.registry import KernelSpec, get_kernel, list_kernels, register_kernel

__version__ = "0.1.0"

__all__ = [
    "attention",
    "dot_product_attention",
    "flax",
    "explain",
    "ring_attention",
    "sharded_ring_attention",
    "to_ring_layout",
    "from_ring_layout",
    "load_balance_permutation",
    "get_kernel",
    "list_kernels",
    "register_kernel",
    "KernelSpec",
    "EjkernelError",
    "KernelNotFoundError",
    "KernelUnavailableError",
    "DuplicateKernelError",
    "FallbackWarning",
]
