"""Atomic file writes shared by every module that saves an artefact.

A reader must never see a half-written checkpoint, manifest, mel `.npy` or WAV as valid (an interrupted
preprocess or a full disk otherwise leaves one behind). So everything is written to a temp file in the
target's own folder (same filesystem, so the rename is atomic), flushed to disk, then renamed over the
target. Temp names start with '.' and end with '.tmp', so folder scans for '*.wav' or '*.pt' skip them.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path to write; on success it replaces `path`, on any failure it is removed.

    The body may write the temp path with any library (soundfile, torch.save, np.save) and close it;
    the data is fsynced before the rename, and the folder after it, so a crash leaves either the old
    target or the new one, never a mix. A missing folder raises FileNotFoundError: callers that face
    users check it first and say so in their own words.
    """
    target = Path(path)
    temp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
    # O_EXCL: never clobber another writer's temp; mode 0o666 lets the umask decide, as open() would.
    os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield temp
        _fsync(temp)
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    # Make the rename itself durable; some filesystems refuse to fsync a folder, which is harmless here.
    with contextlib.suppress(OSError):
        _fsync(target.parent)
