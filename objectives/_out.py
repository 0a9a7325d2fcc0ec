"""Writing where a user pointed a command, all or nothing, and refusing a place that cannot be written.

Every file a command writes where a user pointed it (``nas export --to``, ``nas report --to``,
``nas hardware probe --to``, a profile into ``$NAS_HOME/devices``) goes through
:func:`write_files`: each file is written under a temporary name beside its final one and renamed
into place only once every file was written, so a full disk, a read-only or vanished directory
leaves nothing behind (no half file, no directory it created). :func:`check_out_dir` refuses an
unusable place (read-only, immutable, under ``/proc``, a name too long, a file in the way) in one
line before any work, without writing. The reading side is ``objectives/_files.py``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable, Mapping

from search_spaces import InputError

__all__ = ["OUT_DIR_ACCEPTED", "FileContent", "check_out_dir", "write_files"]


def _why(e: OSError) -> str:
    if e.errno == errno.ELOOP:
        return "a symbolic link loop (too many levels of symbolic links)"
    return e.strerror or str(e)


#: What an output directory may be (missing parents are created, as ``mkdir -p`` does).
OUT_DIR_ACCEPTED = "accepted: a directory you may write (created with its parents if missing)"
#: Longest file name most file systems take (bytes of one path component).
_NAME_MAX = 255


def _fail(error: type[InputError], field: str | None, what: str | None, text: str) -> InputError:
    """``error`` about ``field`` (the argument naming the place), led by ``what`` when given."""
    return error(f"{what}: {text}" if what else text, field=field)


def _out_error(field: str | None, what: str | None, out: str | os.PathLike[str], why: str,
               error: type[InputError], accepted: str = OUT_DIR_ACCEPTED) -> InputError:
    return _fail(error, field, what, f"{_shown_path(out)} {why}; {accepted}")


def _shown_path(path: str | os.PathLike[str], limit: int = 160) -> str:
    """A path for a one-line message: shortened, and quoted with escapes when it holds a control
    character (a newline in a name must not break the line)."""
    text = os.fspath(path)
    short = text if len(text) <= limit else text[:limit]
    shown = short if short.isprintable() else repr(short)
    return shown if short == text else f"{shown}... ({len(os.fsencode(text)):,} bytes)"


def _oserror_why(e: OSError) -> str:
    if e.errno == errno.ENOSPC:
        return "no space left on the device"
    if e.errno == errno.EDQUOT:
        return "the disk quota is exceeded"
    if e.errno == errno.EROFS:
        return "a read-only file system"
    if e.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return _why(e)


def check_out_dir(out: str | os.PathLike[str], field: str | None = "to", *, what: str | None = None,
                  error: type[InputError] = InputError, accepted: str = OUT_DIR_ACCEPTED) -> None:
    """Refuse, before any work and without leaving anything behind, an output directory that
    cannot be written: empty, a NUL byte, a name over 255 bytes, a part that is a file, a
    read-only, immutable or pseudo file system place (``/proc``), a missing place under one.

    The check writes a probe file into the nearest existing directory (and removes it), so what
    the kernel would refuse later is refused now; a missing ``out`` is not created here.

    Raises:
        error: about ``field`` (the argument naming the place: ``"to"``, the CLI's ``--to``), one line
            ``[<what>: ]<out> <what is wrong>; accepted: ...``.
    """
    text = os.fspath(out)
    if not text.strip():
        raise _fail(error, field, what, f"empty; {accepted}")
    if "\x00" in text:
        raise _fail(error, field, what, f"the path {text[:100]!r} contains a NUL byte; {accepted}")
    try:
        os.fsencode(text)
    except UnicodeEncodeError as e:  # a lone surrogate (from Python, not a command line): no file system name
        raise _fail(error, field, what, f"the path {text[:100]!r} has a character no file name can hold "
                                        f"({text[e.start]!r}); {accepted}") from None
    long = [p for p in text.split(os.sep) if len(os.fsencode(p)) > _NAME_MAX]
    if long:
        raise _out_error(field, what, out, f"has a name of {len(os.fsencode(long[0])):,} bytes (the limit is "
                                    f"{_NAME_MAX})", error, accepted)
    path = os.path.abspath(text)
    probe_dir = path
    while True:
        try:
            st = os.stat(probe_dir)
        except (FileNotFoundError, NotADirectoryError):  # missing, or below a file: look at the parent
            parent = os.path.dirname(probe_dir)
            if parent == probe_dir:
                raise _out_error(field, what, out, "cannot be created", error, accepted) from None
            probe_dir = parent
            continue
        except OSError as e:
            raise _out_error(field, what, out, f"cannot be used ({_oserror_why(e)})", error, accepted) from None
        break
    if not stat.S_ISDIR(st.st_mode):
        where = "exists and is not a directory" if probe_dir == path else \
            f"cannot be created: {_shown_path(probe_dir)} is not a directory"
        raise _out_error(field, what, out, where, error, accepted)
    if probe_dir != path and os.path.realpath(probe_dir).startswith(("/proc", "/sys")):
        raise _out_error(field, what, out, f"cannot be created under {probe_dir} (a kernel file system)", error,
                         accepted)
    probe = os.path.join(probe_dir, f".lightnas-write-{os.getpid()}")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
    except OSError as e:
        shown = "cannot be written" if probe_dir == path else f"cannot be created in {_shown_path(probe_dir)}"
        raise _out_error(field, what, out, f"{shown} ({_oserror_why(e)})", error, accepted) from None
    os.close(fd)
    os.unlink(probe)


#: A file's content for :func:`write_files`: its bytes, or a function that writes it at the path given.
FileContent = bytes | Callable[[str], None]


def write_files(out: str | os.PathLike[str], files: Mapping[str, FileContent], field: str | None = "to", *,
                what: str | None = None, error: type[InputError] = InputError, accepted: str = OUT_DIR_ACCEPTED,
                before_commit: Callable[[], None] | None = None) -> list[str]:
    """Write ``files`` (relative name -> bytes, or a function writing the file at a path) into
    ``out``, all or nothing; returns the paths written, in order.

    ``out`` and the directories of the names are created if missing (as ``mkdir -p``). Each
    file is first written under a temporary name beside its final one (``.NAME.PID.tmp``); only
    once all are written (then ``before_commit``, e.g. a database write that must succeed first)
    are they renamed into place. On any failure (a full disk, a read-only place, a name too long,
    ``before_commit`` raising) every temporary file and every directory this call created is
    removed: nothing is left behind, and a file of the same name that was there stays intact.

    Raises:
        error: about ``field``, one line naming (after ``what``, when given) the place, what failed and
            ``accepted`` (an exception of ``before_commit`` propagates as it is, after the clean-up).
    """
    root = os.fspath(out)
    created: list[str] = []
    parts: list[tuple[str, str]] = []  # (temporary, final)
    written: list[str] = []
    current = root

    def mkdirs(directory: str) -> None:
        missing = []
        d = os.path.abspath(directory)
        while not os.path.isdir(d):
            missing.append(d)
            parent = os.path.dirname(d)
            if parent == d:
                break
            d = parent
        for d in reversed(missing):
            os.mkdir(d)
            created.append(d)

    def clean() -> None:
        for part, _ in parts:
            with contextlib.suppress(OSError):
                os.unlink(part)
        for d in reversed(created):
            with contextlib.suppress(OSError):
                os.rmdir(d)

    try:
        try:
            mkdirs(root)
            for name, content in files.items():
                current = os.path.join(root, name)
                mkdirs(os.path.dirname(current))
                part = os.path.join(os.path.dirname(current), f".{os.path.basename(current)}.{os.getpid()}.tmp")
                parts.append((part, current))
                if isinstance(content, (bytes, bytearray, memoryview)):
                    with open(part, "xb") as f:
                        f.write(content)
                else:
                    content(part)
            current = root
            if before_commit is not None:
                before_commit()
            for part, final in parts:
                current = final
                os.replace(part, final)
                written.append(final)
            parts.clear()
            return written
        except ValueError as e:  # a NUL byte in a name
            if not isinstance(e, UnicodeError) and "null" not in str(e).lower():
                raise
            raise _out_error(field, what, current, "has a NUL byte in its name", error, accepted) from None
        except OSError as e:
            where = "" if os.fspath(current) == root else f"writing {os.path.relpath(current, root)} "
            kept = f"written: {', '.join(os.path.relpath(w, root) for w in written)}" if written else "nothing written"
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                accepted = "accepted: a place with room for the files (free some space, or choose another)"
            raise _out_error(field, what, root, f"{where}failed ({_oserror_why(e)}); {kept}", error, accepted) from None
    finally:
        clean()
