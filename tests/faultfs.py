"""Real faults of the file system for the fault tests: a small tmpfs, full disks, immutable files.

The tests run as root (here and in CI), so file modes do not stop them:
read-only files and directories are made with the immutable attribute
(``chattr +i``), which binds root too, on a tmpfs the test mounts itself.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def tmpfs(path: Path, size_mb: int = 16) -> Iterator[Path]:
    """A tmpfs of ``size_mb`` mounted at ``path`` for the duration."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs at {path} (fault tests run as root): {done.stderr}")
    try:
        yield path
    finally:
        subprocess.run(["chattr", "-R", "-i", str(path)], capture_output=True)
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(directory: Path) -> Path:
    """Write a filler file until the file system is full; returns it (delete it to grow)."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        size = 1 << 20
        while size:  # big chunks, then smaller ones, down to the last byte
            try:
                os.write(fd, b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                size //= 2
    finally:
        os.close(fd)
    return filler


def immutable(path: Path, on: bool = True) -> None:
    """Make ``path`` read-only even for root (a directory: no file can be created in it)."""
    subprocess.run(["chattr", "+i" if on else "-i", str(path)], check=True)
