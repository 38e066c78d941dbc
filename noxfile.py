"""Project sessions: `nox -s lint`, `nox -s tests`, `nox -s interop`, `nox -s bench`."""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "tests"]

PYTHON = "3.11"


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff (lint and format) and mypy --strict."""
    session.install("-e", ".[lint,test]")
    session.run("ruff", "check", "mito_trio", "tests", "bench", "noxfile.py")
    session.run("ruff", "format", "--check", "mito_trio", "tests", "bench", "noxfile.py")
    session.run("mypy", "--strict", "mito_trio")


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Unit and end-to-end tests against LocalCoordinator."""
    session.install("-e", ".[test]")
    session.run("pytest", "-q", *session.posargs)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Side-by-side benchmarks against the Rust worker (~/.cargo/bin/mito), if installed."""
    session.install("-e", ".")
    session.run("python", "bench/run_all.py", *session.posargs)


@nox.session(python=PYTHON)
def interop(session: nox.Session) -> None:
    """Both workers against the real coordinator 0.6.8 (see docs/interop.md)."""
    session.install("-e", ".[test,interop]")
    session.run("pytest", "-m", "interop", "tests/interop", "-v", *session.posargs)
