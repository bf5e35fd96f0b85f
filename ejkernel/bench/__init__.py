"""``ejkernel bench``: timing harness for attention implementations and baselines.

Modules, one idea each: ``grids`` (named shapes), ``flops`` (FLOP convention and device peaks),
``timing`` (rounds, medians, buffer rotation), ``implementations`` (what is timed), ``runner`` (one
record per configuration), ``dispatch`` (same program under jit, eager overhead), ``environment``
(device and versions), ``report`` (JSON and table), ``compare`` (regressions beyond noise), ``plots``
(optional PNGs), ``progress`` (stderr bar), ``sweep`` (per-pass block sweep of the Triton kernels) and
``sweep_report`` (its table and the block-table rows), ``parity`` (every capability class at GPU sizes),
``summary`` (curated per-device summaries: compact table and plot)
and ``cli``. Importing this package imports nothing heavy.
"""

__all__: list[str] = []
