"""The data directory's format version: written by the first start, checked by every later
one, so that a directory written by a newer mq is refused rather than misread."""
from __future__ import annotations

import os

FORMAT = 1
FORMAT_FILE = "format"


class StoreError(Exception):
    """The data directory cannot be used (newer format, locked by another broker)."""


def check_format(directory: str) -> None:
    path = os.path.join(directory, FORMAT_FILE)
    try:
        with open(path) as fh:
            text = fh.read().strip()
    except FileNotFoundError:
        tmp = path + ".tmp"
        with open(tmp, "w") as fh:
            fh.write(f"mq-data-format {FORMAT}\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        return
    parts = text.split()
    if len(parts) != 2 or parts[0] != "mq-data-format" or not parts[1].isdigit():
        raise StoreError(f"{path} is not an mq format file (found {text[:40]!r})")
    if int(parts[1]) > FORMAT:
        raise StoreError(f"data directory {directory} has format {parts[1]}, written by "
                         f"a newer mq; this mq reads format {FORMAT} and older")
