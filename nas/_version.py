"""The version of lightnas (one place: the package face, the API and the CLI read it)."""

__version__ = "0.1.0"
