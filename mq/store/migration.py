"""Upgrading a data directory of format 1 to format 2 (B-DUR-7, B-DUR-10), crash-safely.

Format 1 framed records without a magic and pickled the arguments of queues, exchanges and
bindings. The upgrade writes every segment again in format 2 (same numbers, same records:
each reframed, arguments re-encoded as field tables) into log.v2.tmp/, fsyncs them, renames
the directory to log.v2/ (now known complete), and commits by writing the format file
(atomically: tmp, fsync, rename, directory fsync). Only then is the old log/ touched: renamed
to log.v1/, log.v2/ renamed to log/, log.v1/ removed. A crash at any moment leaves one of

    format 1, log/ [, log.v2.tmp/ partial]  the upgrade starts again (the partial copy removed)
    format 1, log/, log.v2/                  the copy is complete: commit and switch
    format 2, log.v2/ [, log/ or log.v1/]    committed: the switch is finished
    format 2, log/ [, log.v1/ partial]       done, but for removing the old log

and every start finishes what the last one left (check_format calls upgrade). The old
segments are only read, never changed, until the commit.

Pickles are read here and nowhere else, by an unpickler that knows only the builtin
containers and scalars, Decimal and datetime (what pamqp decodes an AMQP table into); a pickle
naming anything else is refused with StoreError before anything in it runs, and the directory
stays as it was.
"""
from __future__ import annotations

import fcntl
import io
import logging
import os
import pickle
import shutil
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from mq._core import records as R
from mq.store.arguments import ArgumentsError, encode_arguments
from mq.store.format import FORMAT, StoreError, read_format, write_format
from mq.store.segments import sync_dir
from mq.store.shutdown import leave_clean_marker

log = logging.getLogger("mq.store")

LOG, NEW_TMP, NEW, OLD = "log", "log.v2.tmp", "log.v2", "log.v1"

# Tests: called with the name of each step once it is done (to crash there).
hook: Callable[[str], None] | None = None


def _step(name: str) -> None:
    if hook is not None:
        hook(name)


def upgrade(directory: str, version: int) -> None:
    """Bring directory (of format `version`) to the current format, finishing an upgrade a
    crash interrupted. Nothing to do, quickly, for a current directory."""
    paths = [os.path.join(directory, n) for n in (NEW_TMP, NEW, OLD)]
    if version == FORMAT and not any(os.path.lexists(p) for p in paths):
        return
    with _locked(directory):
        version = read_format(directory)
        if version == 1:
            _convert_all(directory)
        elif version != FORMAT:
            raise StoreError(f"data directory {directory}: no upgrade from format {version}")
        _switch(directory)


@contextmanager
def _locked(directory: str) -> Iterator[None]:
    """The store's lock for the upgrade (released after: Store takes it again)."""
    fd = os.open(os.path.join(directory, "lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreError(f"data directory {directory} is in use by another mq") from None
        yield
    finally:
        os.close(fd)


def _numbers(log_dir: str) -> list[int]:
    if not os.path.isdir(log_dir):
        return []
    return sorted(int(n[:-4]) for n in os.listdir(log_dir)
                  if n.endswith(".seg") and n[:-4].isdigit())


def _convert_all(directory: str) -> None:
    """Up to the commit: log.v2/ complete, then the format file says 2."""
    tmp, new = os.path.join(directory, NEW_TMP), os.path.join(directory, NEW)
    if not os.path.isdir(new):
        if os.path.lexists(tmp):
            log.warning("store: removing %s, left by an upgrade that did not finish", tmp)
            shutil.rmtree(tmp)
        os.mkdir(tmp)
        old_dir = os.path.join(directory, LOG)
        numbers = _numbers(old_dir)
        log.warning("store: upgrading data directory %s from format 1 to %d (%d segments)",
                    directory, FORMAT, len(numbers))
        for i, number in enumerate(numbers):
            name = f"{number:08d}.seg"
            _convert(directory, os.path.join(old_dir, name), os.path.join(tmp, name),
                     i == len(numbers) - 1)
            _step("segment")
        sync_dir(tmp)
        _step("converted")
        os.rename(tmp, new)
        sync_dir(directory)
        _step("ready")
    # Format 1 knew no unclean shutdowns: its delivered flags are taken as they are.
    leave_clean_marker(directory)
    write_format(directory, FORMAT)
    _step("committed")


def _switch(directory: str) -> None:
    """After the commit: log.v2/ becomes log/, the format-1 log is removed."""
    cur, new, old = (os.path.join(directory, n) for n in (LOG, NEW, OLD))
    if os.path.isdir(new):
        if os.path.lexists(cur):
            if os.path.lexists(old):
                shutil.rmtree(old)
            os.rename(cur, old)
            sync_dir(directory)
            _step("moved-old")
        os.rename(new, cur)
        sync_dir(directory)
        _step("switched")
    for leftover in (old, os.path.join(directory, NEW_TMP)):
        if os.path.lexists(leftover):
            shutil.rmtree(leftover)
            sync_dir(directory)
            _step("cleaned")
    log.info("store: data directory %s is in format %d", directory, FORMAT)


def _convert(directory: str, src: str, dst: str, last: bool) -> None:
    """One format-1 segment written again in format 2 (its damaged records left out)."""
    with open(src, "rb") as fh:
        data = fh.read()
    records, damaged = R.scan_v1(data, False)
    if damaged:
        _report_v1_damage(directory, src, len(data), damaged, last)
    out = []
    hdr = R.V1_HEADER_SIZE
    for off, size, f in records:
        rtype = f[0]
        if rtype in (R.QUEUE, R.EXCHANGE, R.BINDING):
            args = _arguments_of(f, f"{src} offset {off}")
            out.append(R.topology_record(rtype, f[1], f[2], tuple(f[3:-1]), args))
        else:
            out.append(R.frame(data[off + hdr:off + size]))  # the same bytes, same CRC
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with os.fdopen(fd, "wb", closefd=False) as fh:
            for chunk in out:
                fh.write(chunk)
        os.fsync(fd)
    finally:
        os.close(fd)


def _report_v1_damage(directory: str, src: str, size: int, damaged: list, last: bool) -> None:
    from mq.store.recovery import keep_aside  # (recovery imports the store's modules)
    tail = damaged[-1] if last and damaged[-1][0] + damaged[-1][1] == size else None
    if tail is not None:
        log.warning("store: damaged tail in %s: %s at offset %d; cutting off %d bytes "
                    "(format-1 segment, upgrading)", src, tail[3], tail[0], tail[1])
    inner = [d for d in damaged if d is not tail]
    for off, length, count, why in inner:
        log.warning("store: damaged records in %s at offset %d: %s; dropping %d bytes (%s) "
                    "and keeping the records before and after them (format-1 segment, "
                    "upgrading)", src, off, why, length,
                    "1 record" if count else "how many records unknown")
    if inner:
        log.warning("store: the damaged segment is kept as %s", keep_aside(directory, src))


# ---- format-1 arguments: restricted pickles -----------------------------------------------

def _bytearray(data: Any = b"") -> bytearray:
    if not isinstance(data, (bytes, bytearray)):
        raise pickle.UnpicklingError("bytearray of something other than bytes")
    return bytearray(data)


def _allowed() -> dict[tuple[str, str], Any]:
    import datetime
    import decimal
    return {("builtins", "bytearray"): _bytearray,
            ("decimal", "Decimal"): decimal.Decimal,
            ("datetime", "datetime"): datetime.datetime,
            ("datetime", "date"): datetime.date,
            ("datetime", "time"): datetime.time,
            ("datetime", "timedelta"): datetime.timedelta,
            ("datetime", "timezone"): datetime.timezone}


class _Unpickler(pickle.Unpickler):
    """Builtin containers and scalars (no lookup needed), Decimal, datetime: nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        found = _allowed().get((module, name))
        if found is None:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}")
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("it holds a persistent id")


def load_format1_arguments(blob: bytes, where: str) -> dict:
    """The arguments a format-1 record pickled, refused unless plain data."""
    try:
        args = _Unpickler(io.BytesIO(blob)).load()
    except Exception as exc:  # noqa: BLE001 - whatever a foreign pickle does, refuse it
        raise StoreError(f"{where}: the arguments are not a pickle of plain data as mq "
                         f"format 1 wrote them ({exc}); the data directory was altered or "
                         f"not written by mq: refusing to upgrade it (nothing in it was "
                         f"run)") from None
    if not isinstance(args, dict):
        raise StoreError(f"{where}: the arguments are a {type(args).__name__}, not a table; "
                         f"refusing to upgrade the data directory")
    return args


def _arguments_of(f: tuple, where: str) -> bytes:
    kind = {R.QUEUE: "queue", R.EXCHANGE: "exchange", R.BINDING: "binding"}[f[0]]
    what = f"{where} ({kind} {f[4]!r} in vhost {f[3]!r})"
    args = load_format1_arguments(f[-1], what)
    try:
        return encode_arguments(args)
    except ArgumentsError as exc:
        raise StoreError(f"{what}: its arguments cannot be kept as an AMQP table: {exc}; "
                         f"refusing to upgrade the data directory") from None
