"""Errors that mean bad user input (CLI exit code 2, HTTP 4xx), as opposed to bugs."""

from __future__ import annotations


class NasError(ValueError):
    """A one-line message naming what was wrong and what is accepted."""
