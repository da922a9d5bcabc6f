"""hvkit: plugin-based deep metric learning for handwriting verification."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("hvkit")
except PackageNotFoundError:
    __version__ = "0+unknown"
