"""Manifests and archives: a folder's or an archive's manifest.sha256 checked against the bytes it lists.

An archive is read in memory (its manifest checked against the bytes of its members) and unpacked only into
a temporary folder outside the working tree, removed afterwards; a folder's manifest.sha256 (in it or up to
two levels above it) is checked too.
"""

from __future__ import annotations

import hashlib
import re
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from ...common.cli import UserError, sha256_file
from .model import Finding, ManifestCheck

MANIFEST = "manifest.sha256"
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


def parse_manifest(text: str) -> tuple[dict[str, str], list[str]]:
    """`<sha256>  <path>` lines, as package.py writes them: (path -> digest, malformed lines)."""
    entries, malformed = {}, []
    for line in text.splitlines():
        if not line.strip():
            continue
        digest, sep, name = line.partition("  ")
        if not sep or not name or not re.fullmatch(r"[0-9a-f]{64}", digest):
            malformed.append(line[:120])
        else:
            entries[name] = digest
    return entries, malformed


def check_manifest(label: str, text: str, digests: dict[str, Callable[[], str]], scope: str = "") -> ManifestCheck:
    """Compare a manifest with the files present (path relative to the manifest -> digest function).
    Only entries under `scope` are checked; a present file is unlisted if it lies in a folder the manifest
    covers and the manifest does not name it."""
    entries, malformed = parse_manifest(text)
    covered = {name.split("/", 1)[0] for name in entries}
    check = ManifestCheck(label, malformed=malformed)
    for name, digest in sorted(entries.items()):
        if not name.startswith(scope):
            continue
        if name not in digests:
            check.missing.append(name)
        elif digests[name]() != digest:
            check.mismatched.append(name)
        else:
            check.verified += 1
    check.unlisted = sorted(name for name in digests if name.startswith(scope) and name not in entries
                            and name.split("/", 1)[0] in covered and name != MANIFEST)
    return check


def folder_manifest(sub: Path) -> ManifestCheck | None:
    """The manifest.sha256 in `sub` or up to two levels above it (package.py writes it beside the division
    folder), checked for the files under `sub`."""
    sub = sub.resolve()
    for root in (sub, *list(sub.parents)[:2]):
        path = root / MANIFEST
        if not path.is_file():
            continue
        scope = "" if root == sub else sub.relative_to(root).as_posix() + "/"
        text = path.read_text(errors="replace")
        if scope and not any(name.startswith(scope) for name in parse_manifest(text)[0]):
            continue
        digests = {p.relative_to(root).as_posix(): (lambda p=p: sha256_file(p)) for p in sub.rglob("*") if p.is_file()}
        return check_manifest(str(path), text, digests, scope)
    return None


def unpack(archive: Path, dest: Path) -> ManifestCheck | None:
    """Check an archive's manifest against its members' bytes, in memory, then unpack its plain files and
    folders into `dest`; a member with an absolute or `..` path is refused before anything is written."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            digests, keep = {}, []
            for m in members:
                name = m.name.removeprefix("./")
                if name.startswith("/") or ".." in PurePosixPath(name).parts:
                    raise UserError(f"{archive}: member {m.name!r} points outside the archive: refusing to unpack it")
                if m.isfile():
                    digest = hashlib.sha256()
                    reader = tar.extractfile(m)
                    while chunk := reader.read(1 << 20):
                        digest.update(chunk)
                    digests[name] = digest.hexdigest()
                    keep.append(m)
                elif m.isdir():
                    keep.append(m)
            manifest = None
            if MANIFEST in digests:
                member = next(m for m in members if m.name.removeprefix("./") == MANIFEST)
                text = tar.extractfile(member).read().decode(errors="replace")
                manifest = check_manifest(f"{archive.name}:{MANIFEST}", text,
                                          {n: (lambda d=d: d) for n, d in digests.items()})
            tar.extractall(dest, members=keep, filter="data")
    except (tarfile.TarError, EOFError, zlib.error) as e:
        raise UserError(f"{archive}: not a readable archive ({e})") from None
    return manifest


@contextmanager
def opened(sub: Path) -> Iterator[tuple[Path, ManifestCheck | None, str]]:
    """(folder to audit, manifest check, kind) for a folder or an archive; an archive's temporary folder is
    removed when the block ends."""
    sub = Path(sub)
    if sub.is_file() and sub.name.endswith(ARCHIVE_SUFFIXES):
        with tempfile.TemporaryDirectory(prefix="mlperf-audit.") as tmp:
            manifest = unpack(sub, Path(tmp))
            yield Path(tmp), manifest, "archive"
    elif sub.is_dir():
        yield sub, folder_manifest(sub), "folder"
    elif sub.exists():
        raise UserError(f"{sub} is neither a folder nor a .tar.gz archive")
    else:
        raise UserError(f"no folder or archive {sub}: give a submitter folder, its parent, or a .tar.gz from "
                        "`make submit`")


def manifest_findings(check: ManifestCheck) -> list[Finding]:
    out = [Finding("error", "manifest-mismatch", name,
                   f"sha256 differs from {check.file}: the file changed after it was packaged")
           for name in check.mismatched]
    out += [Finding("error", "manifest-missing-file", name, f"listed in {check.file} but absent")
            for name in check.missing]
    out += [Finding("warning", "manifest-unlisted-file", name, f"present but not listed in {check.file}")
            for name in check.unlisted]
    out += [Finding("error", "manifest-malformed", check.file, f"line is not `<sha256>  <path>`: {line!r}")
            for line in check.malformed]
    return out

