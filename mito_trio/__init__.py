"""mito-trio: a Mitosis worker on Trio, wire-compatible with the Mitosis coordinator 0.6.x."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mito-trio")
except PackageNotFoundError:  # pragma: no cover - running from a bare source tree
    __version__ = "0.0.0"

__all__ = ["__version__"]
