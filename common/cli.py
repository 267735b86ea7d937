"""What every command-line entry point shares: one-line errors for bad input, atomic writes."""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


class UserError(Exception):
    """Bad input from the user: printed as one line `error: ...`, exit status 2, no traceback."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line `error: ...` (exit status 2) like any other bad input."""

    def error(self, message: str):
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def entry_point(main: Callable[..., int | None]) -> Callable[..., int]:
    """Wrap a `main(argv)` so that a UserError becomes one line on stderr and exit status 2."""

    @functools.wraps(main)
    def wrapped(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs) or 0
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2

    return wrapped


@contextmanager
def atomic_path(final: Path, *, folder: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `final`, hidden (`.NAME.*`): a file name to write, or with `folder` a made
    folder to fill. When the block succeeds, a file is synced to disk and the path renamed to `final`,
    replacing what was there. On any failure (an exception; SIGINT as KeyboardInterrupt) the temporary path
    is removed, and so are the parent folders made for it; after a SIGKILL only the hidden temporary path
    can remain, which no reader takes for data. This is the package's one atomic write."""
    final = Path(final)
    made = [p for p in (final.parent, *final.parent.parents) if not p.exists()]
    final.parent.mkdir(parents=True, exist_ok=True)
    if folder:
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    else:
        tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        if not folder:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        elif final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        if not final.exists():
            for p in made:  # innermost first
                with contextlib.suppress(OSError):
                    p.rmdir()


def atomic_dir(final: Path) -> contextlib.AbstractContextManager[Path]:
    """`atomic_path` for a folder: yield a temporary folder beside `final`, renamed to `final` on success."""
    return atomic_path(final, folder=True)


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` through a synced temporary file and a rename; no temporary file is left."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def json_checksum(document: dict) -> str:
    """The sha256 of a JSON document's canonical form (sorted keys) without its own `checksum` field: what a
    manifest records of itself, so that a reader can tell it was not edited without reading anything else."""
    body = {k: v for k, v in document.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def sha256_file(path: Path) -> str:
    """The sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
