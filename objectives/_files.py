"""Reading a user's file without hanging: regular files only, of a stated size, one line otherwise.

Every file a command reads because a user named it (a ``--config`` TOML, an ``--enqueue`` spec,
a ``--measurements`` CSV, a device profile given by path or kept in ``$NAS_HOME/devices``) goes
through :func:`read_user_file`. A FIFO would block the read (or the ``open`` itself) forever,
``/dev/zero`` would be read until memory runs out, a directory or a socket cannot be read at
all: each is refused at once, as is a file over the caller's size cap, with one line naming the
file, what it is and what is accepted.

Writing is the other side, in ``objectives/_out.py`` (:func:`write_files`, :func:`check_out_dir`).
"""

from __future__ import annotations

import errno
import os
import stat

from search_spaces import InputError

__all__ = ["MAX_PROFILE_BYTES", "check_user_file", "describe_size", "read_user_file", "read_user_text"]

#: Largest device profile file: a profile with a per-layer lookup table of thousands of layers is
#: a few hundred kilobytes.
MAX_PROFILE_BYTES = 4 << 20

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def describe_size(n: int) -> str:
    """``4 << 20`` -> ``"4 MiB"``; ``1000`` -> ``"1,000 bytes"``."""
    for shift, unit in ((30, "GiB"), (20, "MiB"), (10, "KiB")):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n:,} bytes"


def _kind(mode: int) -> str:
    return next((what for test, what in _KINDS if test(mode)), "not a regular file")


def _why(e: OSError) -> str:
    if e.errno == errno.ELOOP:
        return "a symbolic link loop (too many levels of symbolic links)"
    return e.strerror or str(e)


def _fail(error: type[InputError], field: str | None, what: str | None, text: str) -> InputError:
    """``error`` about ``field`` (the argument that named the file), its message led by ``what`` (how
    the file is called, e.g. ``"device profile 'x'"``) when given."""
    return error(f"{what}: {text}" if what else text, field=field)


def _check_stat(st: os.stat_result, shown: str, field: str | None, what: str | None, max_bytes: int,
                error: type[InputError]) -> None:
    accepted = f"accepted: a regular file of at most {describe_size(max_bytes)}"
    if not stat.S_ISREG(st.st_mode):
        raise _fail(error, field, what, f"{shown} is not a regular file (it is {_kind(st.st_mode)}); {accepted}")
    if st.st_size > max_bytes:
        raise _fail(error, field, what, f"{shown} is {st.st_size:,} bytes; {accepted}")


def check_user_file(path: str | os.PathLike[str], field: str | None, max_bytes: int, *, what: str | None = None,
                    error: type[InputError] = InputError) -> None:
    """Refuse, without opening it, a file that is not a regular file of at most ``max_bytes``
    (for a file another function is about to read).

    Raises:
        error: about ``field``, one line ``[<what>: ]<path> is not a regular file (it is a FIFO); accepted:
            ...``, or that it is too large, or that it cannot be read (missing, a symbolic link loop).
    """
    shown = str(path)
    try:
        st = os.stat(path)
    except OSError as e:
        raise _fail(error, field, what, f"cannot read {shown} ({_why(e)})") from None
    except ValueError:  # a NUL byte in the path
        raise _fail(error, field, what, f"the path {shown!r} contains a NUL byte") from None
    _check_stat(st, shown, field, what, max_bytes, error)


def read_user_file(path: str | os.PathLike[str], field: str | None, max_bytes: int, *, what: str | None = None,
                   error: type[InputError] = InputError) -> bytes:
    """The bytes of a file a user named, never more than ``max_bytes``, and never a hang.

    The path is checked before it is opened (a device is never opened), then opened with
    ``O_NONBLOCK`` (a FIFO put there meanwhile does not block the open) and checked again on the
    descriptor: a regular file of at most ``max_bytes``. At most ``max_bytes + 1`` bytes are read,
    so a file that grows while it is read is refused too.

    Args:
        path: the file.
        field: the argument that named the file (``"config"``: the CLI says ``--config``), the error's
            field; None for a file no argument named.
        max_bytes: the size cap, stated in the message.
        what: how the message names the file after the field, e.g. ``"device profile 'x'"``.
        error: the exception type to raise (the caller's layer's :class:`InputError`).

    Raises:
        error: one line naming the file, what was wrong and what is accepted.

    Example:
        >>> read_user_file("/dev/zero", "config", 1 << 20)
        Traceback (most recent call last):
        ...
        InputError: config: /dev/zero is not a regular file (it is a character device); accepted: ...
    """
    shown = str(path)
    check_user_file(path, field, max_bytes, what=what, error=error)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise _fail(error, field, what, f"cannot read {shown} ({_why(e)})") from None
    try:
        _check_stat(os.fstat(fd), shown, field, what, max_bytes, error)
        chunks, size = [], 0
        while size <= max_bytes:
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as e:
        raise _fail(error, field, what, f"cannot read {shown} ({_why(e)})") from None
    finally:
        os.close(fd)
    if size > max_bytes:
        raise _fail(error, field, what, f"{shown} is larger than {describe_size(max_bytes)}; accepted: a regular "
                                        f"file of at most {describe_size(max_bytes)}")
    return b"".join(chunks)


def read_user_text(path: str | os.PathLike[str], field: str | None, max_bytes: int, *, what: str | None = None,
                   error: type[InputError] = InputError, accepted: str = "a UTF-8 text file") -> str:
    """:func:`read_user_file` decoded as UTF-8; binary bytes are one line too (``accepted`` says what
    the file should be, e.g. ``"a TOML file (TOML is UTF-8)"``)."""
    data = read_user_file(path, field, max_bytes, what=what, error=error)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _fail(error, field, what, f"{path} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); "
                                        f"accepted: {accepted}") from None

