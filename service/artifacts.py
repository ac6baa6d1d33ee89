"""Content-addressed blob store: every file lives at blobs/<sha[:2]>/<sha>.

Writes go to a temporary name in the same filesystem and are renamed into
place, so a crash never leaves a half-written blob under a real name.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path


class BlobStore:
    def __init__(self, root: Path, tmp_dir: Path) -> None:
        self.root = root
        self.tmp_dir = tmp_dir

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def put_file(self, source: Path) -> tuple[str, int]:
        """Copy ``source`` into the store; returns (sha256, size)."""
        writer = self.writer()
        try:
            with open(source, "rb") as f:
                shutil.copyfileobj(f, writer, 1 << 20)
        except BaseException:
            writer.discard()
            raise
        return writer.commit()

    def writer(self) -> BlobWriter:
        return BlobWriter(self)


class BlobWriter:
    """Stream bytes in, hashing as they come; ``commit`` moves them into place."""

    def __init__(self, store: BlobStore) -> None:
        self.store = store
        self.hash = hashlib.sha256()
        self.size = 0
        store.tmp_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=store.tmp_dir, prefix="blob-")
        self.tmp_path = Path(name)
        self.file = os.fdopen(fd, "wb")

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.size += len(data)
        return self.file.write(data)

    def staged_path(self) -> Path:
        """The bytes written so far, flushed to a temporary file (to inspect before commit)."""
        self.file.flush()
        return self.tmp_path

    def commit(self) -> tuple[str, int]:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        sha = self.hash.hexdigest()
        target = self.store.path(sha)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.tmp_path, target)
        return sha, self.size

    def discard(self) -> None:
        self.file.close()
        self.tmp_path.unlink(missing_ok=True)
