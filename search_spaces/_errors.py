"""The one base of every error that means bad user input: a message, and the field it is about.

Every package's user-input error (``SpaceError``, ``SpecError``, ``objectives.DataError``,
``BudgetError``, ``DeviceError``, ``storage.StorageError``, ``nas.NasError``, ...) derives from
:class:`InputError`, so the field travels with the error: the CLI prints it as its flag
(``--trials: ...``), the HTTP API returns it as the response's ``field``; nobody parses a message.
"""

from __future__ import annotations

from typing import Any

__all__ = ["InputError"]


class InputError(ValueError):
    """Bad input a user can correct, in one line.

    Attributes:
        message: what was wrong and what is accepted, without the field (``"must be between 1 and
            10,000, got 0"``).
        field: the input it is about, or None. Python's spelling (underscores), as the API names it:
            ``"trials"``, ``"input_size"``, ``"budget"``, ``"fidelity.epochs"``.
        argument: True (the default) when ``field`` is an argument of the call that raised, which a
            CLI command fills from its option (``trials`` <- ``--trials``, ``to`` <- ``--to``): the CLI
            prints ``--trials: <message>``. False when ``field`` is a key of a document the user wrote (a
            study spec, a TOML file, an ArchSpec, an API body): the CLI prints it as it is,
            ``budget: <message>``, since the value may have come from a file rather than a flag.

    ``str(e)`` is ``"<field>: <message>"`` (the message alone without a field): the one line a library
    user reads, and the message the API answers with (its ``field`` beside it).
    """

    def __init__(self, message: str, *, field: str | None = None, argument: bool = True) -> None:
        message = " ".join(str(message).splitlines())  # one line, whatever a user's value held (a key "\n")
        super().__init__(message)
        self.message = message
        self.field = field
        self.argument = argument

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message

    @classmethod
    def of(cls, e: BaseException, field: str | None = None) -> InputError:
        """``e`` as this class: an :class:`InputError`'s message and field carried over as they are (never
        re-parsed); another error's text about ``field``."""
        if isinstance(e, InputError) and e.field:
            return cls(e.message, field=e.field, argument=e.argument)
        return cls(str(e), field=field)

    def __reduce__(self) -> tuple[Any, ...]:  # pickled (a worker process's error) with its field
        return (type(self), (self.message,), dict(self.__dict__))
