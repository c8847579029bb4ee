"""The version of fusedrnn, written here once: the build reads it (pyproject.toml's dynamic
version) and the package exports it as ``fusedrnn.__version__``."""

__version__ = "0.1.0"
