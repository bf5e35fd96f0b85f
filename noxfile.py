"""Developer and CI sessions: ``nox`` (tests, lint, docs) or ``nox -s <session>``.

    nox -s tests -- tests/test_registry.py -x     # arguments after -- go to pytest
    HYPOTHESIS_PROFILE=thorough nox -s tests      # 100 examples per property test (CI: 8)
    nox -s tests_x64 tests_debug_infs             # the suite with jax_enable_x64, then with jax_debug_infs
    nox -s gpu                                    # the GPU profile (pytest -m gpu), on an NVIDIA GPU
    nox -s ring                                   # ring attention on 8 forced host devices, Pallas included
    nox -s ring_tpu_compile                       # the ring's ppermute/compute overlap, compiled for v5e (libtpu)
    nox -s benchmarks                             # not run by default: minutes of CPU
"""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "docs"]
nox.options.reuse_existing_virtualenvs = True

LINTED = ("ejkernel", "tests", "benchmarks")


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite on the CPU (Pallas kernels in interpret mode), docs build included."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)  # HYPOTHESIS_PROFILE passes through from the environment


@nox.session(name="tests_x64")
def tests_x64(session: nox.Session) -> None:
    """The test suite with ``jax_enable_x64`` on: every backend must work with 64-bit types enabled."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs, env={"JAX_ENABLE_X64": "1"})


@nox.session(name="tests_debug_infs")
def tests_debug_infs(session: nox.Session) -> None:
    """The test suite under ``jax_debug_infs``: no call with a finite result may raise a false alarm."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs, env={"JAX_DEBUG_INFS": "1"})


@nox.session
def gpu(session: nox.Session) -> None:
    """The GPU profile natively on an NVIDIA GPU (``pytest -m gpu``, under 8 minutes on an H200): parity
    property tests and bad-input tests for Triton, Mosaic-GPU (on Hopper), cuDNN and the chunked XLA path. Needs jax with CUDA
    (``pip install -e ".[test,cuda]"``); without a GPU every test is deselected, with the reason printed."""
    session.install("-e", ".[test]")
    session.run("pytest", "-m", "gpu", *session.posargs, env={"XLA_PYTHON_CLIENT_PREALLOCATE": "false"})


@nox.session
def ring(session: nox.Session) -> None:
    """Ring attention on 8 forced host devices: every CPU case, the Pallas kernels in interpret mode, bfloat16."""
    session.install("-e", ".[test]")
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu", "PYTHONPATH": "tests"}
    session.run("python", "tests/ring_cases.py", "--extended", *session.posargs, env=env)


@nox.session
def lint(session: nox.Session) -> None:
    """``ruff check`` with the configuration in pyproject.toml (the version bounds of the ``lint`` extra)."""
    session.install("ruff>=0.15,<1")
    session.run("ruff", "check", *LINTED, *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    """The HTML documentation, warnings as errors, into docs/_build/html."""
    session.install("-e", ".[docs]")
    session.run("sphinx-build", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html", *session.posargs)


@nox.session
def benchmarks(session: nox.Session) -> None:
    """Our XLA reference against jax.nn.dot_product_attention on this CPU (exits 1 above the 1.15x bar)."""
    session.install("-e", ".")
    session.run("python", "benchmarks/xla_reference_cpu.py", *session.posargs)


# tpu_compile: full Mosaic compiles of the Pallas-TPU kernel without a TPU (needs jax[tpu], i.e. libtpu).
# Added by the Pallas-TPU work; it installs its own extra and runs its compile checks.


@nox.session(name="tpu_compile")
def tpu_compile(session: nox.Session) -> None:
    """Compiles every configuration the TPU flash attention claims, for v5e and v6e, without a TPU.

    Installs libtpu through ``jax[tpu]`` pinned to the jax version the package resolved to, then runs
    ``ejkernel.kernels.pallas_tpu.compile_check`` (forward and forward+backward of each dtype,
    head dim and feature class through the Mosaic compiler; catches layout errors and VMEM overuse).
    Downloads ~210 MB and takes ~10 CPU-minutes: run it by hand or nightly, not in the per-commit CI.
    """
    session.install("-e", ".")
    version = session.run("python", "-c", "import jax; print(jax.__version__)", silent=True).strip()
    session.install(f"jax[tpu]=={version}")
    topologies = session.posargs or ["v5e:2x2", "v6e:2x2"]
    args = [a for t in topologies for a in ("--topology", t)]
    session.run("python", "-m", "ejkernel.kernels.pallas_tpu.compile_check", *args)


@nox.session(name="ring_tpu_compile")
def ring_tpu_compile(session: nox.Session) -> None:
    """Compiles the ring (forward and forward+backward, the XLA step and the Pallas TPU kernel) for a TPU
    topology without a TPU, and checks that every K/V and dK/dV ppermute is asynchronous with the step's
    compute scheduled between its start and done (``benchmarks/ring_overlap.py --topology``, ``docs/ring.rst``).

    Installs libtpu through ``jax[tpu]`` pinned like ``tpu_compile``; about a CPU-minute after the download.
    Arguments after ``--`` replace the default ``--topology v5e:2x2``.
    """
    session.install("-e", ".")
    version = session.run("python", "-c", "import jax; print(jax.__version__)", silent=True).strip()
    session.install(f"jax[tpu]=={version}")
    session.run("python", "benchmarks/ring_overlap.py", *(session.posargs or ["--topology", "v5e:2x2"]))
