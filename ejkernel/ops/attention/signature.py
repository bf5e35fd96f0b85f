"""The one attention signature: the XLA reference's, shared by every registered implementation."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from ejkernel.kernels._xla.attention._interface import attention as _reference

__all__ = ["SIGNATURE", "with_reference_signature"]

SIGNATURE = inspect.signature(_reference)


def with_reference_signature(impl: Callable[..., Any], doc: str) -> Callable[..., Any]:
    """``impl`` exposed with exactly the reference's parameters, order and defaults.

    ``impl`` receives all sixteen reference parameters positionally, defaults filled in (it may take
    keyword-only extras, which the wrapper never passes). Arguments are bound against ``SIGNATURE``, so a
    wrong name or count is the same ``TypeError`` on every backend.
    """

    def attention(*args: Any, **kwargs: Any) -> Any:
        bound = SIGNATURE.bind(*args, **kwargs)
        bound.apply_defaults()
        return impl(*bound.args)

    attention.__signature__ = SIGNATURE
    attention.__doc__ = doc
    return attention
