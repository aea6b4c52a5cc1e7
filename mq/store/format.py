"""The data directory's format version: written by the first start, checked by every later
one, so that a directory written by a newer mq is refused rather than misread, and one written
by an older mq is upgraded first (migration.py).

    1  records framed `u32 length | u32 crc32 | type | payload`; arguments pickled
    2  records framed `u32 magic | u32 length | u32 crc32 | type | payload` (B-DUR-7);
       arguments as AMQP field tables (B-DUR-10)
"""
from __future__ import annotations

import os

from mq.store.segments import sync_dir

FORMAT = 2
FORMAT_FILE = "format"


class StoreError(Exception):
    """The data directory cannot be used (newer or unknown format, locked by another broker,
    tampered with)."""


def read_format(directory: str) -> int | None:
    """The directory's format, None when it has no format file yet."""
    path = os.path.join(directory, FORMAT_FILE)
    try:
        with open(path, "rb") as fh:
            raw = fh.read(256)
    except FileNotFoundError:
        return None
    text = raw.decode("utf-8", "replace").strip()
    parts = text.split()
    if len(parts) != 2 or parts[0] != "mq-data-format" or not parts[1].isdecimal() or \
            not parts[1].isascii():
        raise StoreError(f"{path} is not an mq format file (found {text[:40]!r}): refusing "
                         f"to use the data directory {directory}")
    return int(parts[1])


def write_format(directory: str, version: int) -> None:
    """Replace the format file atomically and durably (the upgrade commits with it)."""
    path = os.path.join(directory, FORMAT_FILE)
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        fh.write(f"mq-data-format {version}\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    sync_dir(directory)


def check_format(directory: str) -> None:
    """Before the store reads anything: a new directory gets the current format; an older
    one is upgraded (or an interrupted upgrade finished); a newer, unknown or foreign one is
    refused with StoreError."""
    version = read_format(directory)
    if version is None:
        log_dir = os.path.join(directory, "log")
        if os.path.isdir(log_dir) and any(n.endswith(".seg") for n in os.listdir(log_dir)):
            raise StoreError(f"data directory {directory} holds log segments but no format "
                             f"file: not written by mq, refusing to read it")
        write_format(directory, FORMAT)
        return
    if version > FORMAT:
        raise StoreError(f"data directory {directory} has format {version}, written by "
                         f"a newer mq; this mq reads format {FORMAT} and older")
    if version < 1:
        raise StoreError(f"data directory {directory} has format {version}, which no mq "
                         f"ever wrote: refusing to read it")
    from mq.store import migration
    migration.upgrade(directory, version)
