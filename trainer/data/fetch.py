"""Downloading the datasets that can be downloaded (CIFAR-10, STL-10), with a progress bar.

    got = fetch("cifar10", "./data")     # -> Fetched(name, url, nbytes, folder)

The archive comes from torchvision's own address for the dataset (``torchvision.datasets.
CIFAR10.url`` / ``STL10.url``), is streamed to ``PATH/<archive>.part`` while its md5 is
computed, checked against torchvision's md5, extracted (tar members confined to ``PATH``) and
then deleted: what stays is the extracted folder (``cifar-10-batches-py/``, ``stl10_binary/``).
Progress goes to stderr: one redrawn line on a terminal, else a line per 10 %.

Mirrors: ``HJEPA_DATA_MIRROR=URL`` fetches each archive from ``URL/<archive file name>``
instead (``cifar-10-python.tar.gz``, ``stl10_binary.tar.gz``); ``HJEPA_DATA_MD5=cifar10=<md5>,
stl10=<md5>`` replaces the expected md5 for a mirror that re-packs an archive. Neither is a
config key: where bytes come from is the machine's business, not the recipe's.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tarfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO

MIRROR_ENV = "HJEPA_DATA_MIRROR"
MD5_ENV = "HJEPA_DATA_MD5"
FETCHABLE = ("cifar10", "stl10")
# Archive sizes of torchvision's sources, for messages before anything is downloaded.
APPROX_BYTES = {"cifar10": 170_498_071, "stl10": 2_640_397_119}
CHUNK = 1 << 20


class FetchError(RuntimeError):
    """A download or its extraction failed; the message says what, from where and into where."""


@dataclass(frozen=True)
class Source:
    name: str
    url: str
    filename: str
    md5: str | None
    folder: str  # the folder the archive extracts to


@dataclass(frozen=True)
class Fetched:
    name: str
    url: str
    nbytes: int
    folder: str


def human(nbytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if nbytes < 1000 or unit == "GB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1000
    return f"{nbytes:.1f} GB"


def source(name: str, env: dict[str, str] | None = None) -> Source:
    """Where ``name`` (cifar10 | stl10) is downloaded from: torchvision's address and md5,
    unless the environment names a mirror (see the module docstring)."""
    from torchvision import datasets as tvd

    env = dict(os.environ) if env is None else env
    cls = {"cifar10": tvd.CIFAR10, "stl10": tvd.STL10}.get(name)
    if cls is None:
        raise FetchError(f"{name}: not downloadable (only {', '.join(FETCHABLE)} are)")
    url, md5 = str(cls.url), str(cls.tgz_md5)
    mirror = env.get(MIRROR_ENV, "").strip()
    if mirror:
        url = mirror.rstrip("/") + "/" + cls.filename
    for item in env.get(MD5_ENV, "").split(","):
        key, _, value = item.partition("=")
        if key.strip() == name and value.strip():
            md5 = value.strip()
    return Source(name, url, str(cls.filename), md5, str(cls.base_folder))


def approx_size(name: str) -> str:
    return human(APPROX_BYTES[name]) if name in APPROX_BYTES else "?"


class Progress:
    """A download's progress on ``out``: redrawn in place on a terminal, else every 10 %."""

    def __init__(self, label: str, total: int | None, out: IO[str] | None = None) -> None:
        self.label, self.total = label, total
        self.out = out or sys.stderr
        self.tty = self.out.isatty()
        self.start = time.monotonic()
        self.shown = -1

    def update(self, done: int) -> None:
        rate = done / max(time.monotonic() - self.start, 1e-6)
        if self.total:
            frac = min(done / self.total, 1.0)
            tenth = int(frac * 10)
            if not self.tty and tenth == self.shown:
                return
            self.shown = tenth
            bar = "#" * int(frac * 30)
            text = (
                f"{self.label} [{bar:<30}] {frac:4.0%} {human(done)} / {human(self.total)}"
                f"  {human(rate)}/s"
            )
        else:
            mb = done // (50 * 10**6)
            if not self.tty and mb == self.shown:
                return
            self.shown = mb
            text = f"{self.label} {human(done)}  {human(rate)}/s"
        self.out.write(("\r" + text) if self.tty else text + "\n")
        self.out.flush()

    def close(self) -> None:
        if self.tty:
            self.out.write("\n")
            self.out.flush()


def download(src: Source, dest: Path, out: IO[str] | None = None) -> int:
    """Stream ``src.url`` to ``dest`` (via ``dest.part``), checking the md5; returns bytes."""
    part = dest.with_name(dest.name + ".part")
    digest = hashlib.md5()
    done = 0
    try:
        with urllib.request.urlopen(src.url, timeout=60) as resp, part.open("wb") as fh:
            length = resp.headers.get("Content-Length")
            bar = Progress(f"{src.name}: {src.url}", int(length) if length else None, out)
            while chunk := resp.read(CHUNK):
                fh.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                bar.update(done)
            bar.close()
    except (OSError, ValueError) as exc:  # URLError is an OSError
        part.unlink(missing_ok=True)
        raise FetchError(f"{src.name}: download from {src.url} failed ({exc})") from exc
    if src.md5 and digest.hexdigest() != src.md5:
        part.unlink(missing_ok=True)
        raise FetchError(
            f"{src.name}: {src.url} sent {human(done)} whose md5 {digest.hexdigest()} is not"
            f" {src.md5} (a broken download, or a mirror that re-packs: set {MD5_ENV})"
        )
    part.replace(dest)
    return done


def extract(archive: Path, into: Path) -> None:
    """Extract a .tar.gz into ``into``; members that would land outside it are refused."""
    root = into.resolve()
    with tarfile.open(archive, "r:*") as tar:
        for member in tar.getmembers():
            target = (root / member.name).resolve()
            if root not in (target, *target.parents) or member.issym() or member.islnk():
                raise FetchError(f"{archive}: unsafe member {member.name!r}; not extracted")
        tar.extractall(root)


def fetch(name: str, path: str | Path, out: IO[str] | None = None) -> Fetched:
    """Download and extract ``name`` under ``path``; prints progress and one closing line
    (size and where it went) to ``out`` (stderr). Raises :class:`FetchError`."""
    out = out or sys.stderr
    src = source(name)
    root = Path(path)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FetchError(f"{name}: cannot create {root} ({exc})") from exc
    archive = root / src.filename
    nbytes = download(src, archive, out)
    try:
        extract(archive, root)
    except (OSError, tarfile.TarError) as exc:
        raise FetchError(f"{name}: {archive} does not extract ({exc})") from exc
    finally:
        archive.unlink(missing_ok=True)
    folder = root / src.folder
    out.write(f"{name}: downloaded {human(nbytes)} into {folder.resolve()}\n")
    out.flush()
    return Fetched(name, src.url, nbytes, str(folder.resolve()))
