"""Errors that mean bad user input (CLI exit code 2, HTTP 4xx), as opposed to bugs, and the
signal that a worker was asked to stop."""

from __future__ import annotations

from search_spaces import InputError

__all__ = ["NasError", "StudyExists", "Terminated", "TrialInterrupted", "UnknownStudy", "UnreadableStudy"]


class NasError(InputError):
    """A one-line message naming what was wrong and what is accepted."""


class StudyExists(NasError):
    """A study of that name is in the database already (the HTTP API answers 409)."""


class UnknownStudy(NasError):
    """No study of that name in the database (the message lists the ones there)."""


class UnreadableStudy(NasError):
    """A stored study spec that no longer validates (written by another version, or edited):
    the study can be listed and deleted, not run or queried."""


class TrialInterrupted(Exception):
    """Raised at an epoch boundary when the worker was asked to stop (SIGTERM/SIGINT): the trial
    or refinement step in progress is given back, not failed for good."""


class Terminated(KeyboardInterrupt):
    """SIGTERM while a study runs (``kill``, a service manager, a worker whose parent died): handled
    as Ctrl-C is (a ``KeyboardInterrupt``), the running trial failed and queued again at once; the
    command then says so in one line and ends by SIGTERM (status 143)."""
