"""Files a cell reads (compact models), carried by content so a cell runs on any machine of a
cluster, shared folder or not."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from closedloop.errors import ClosedLoopError
from closedloop.record.atomic import write_atomic


def digest(*parts: bytes) -> str:
    """16 hex digits of the SHA-1 of ``parts``."""
    h = hashlib.sha1()
    for part in parts:
        h.update(hashlib.sha1(part).digest())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class Files:
    """Files by relative path (``twins/compact_model_x.pt``) and content; a few MB for a sweep's
    models, put once in Ray's object store."""

    contents: dict[str, bytes]

    @classmethod
    def read(cls, paths: dict[str, Path]) -> Files:
        """The files at ``paths`` (relative path -> file here); one line naming one that cannot be read."""
        contents = {}
        for name, path in paths.items():
            try:
                contents[name] = Path(path).read_bytes()
            except OSError as exc:
                raise ClosedLoopError(f"{path}: cannot read ({exc.strerror or exc})") from None
        return cls(contents)

    def digest(self, *names: str) -> str:
        """Of the files ``names`` (all when none given), names and contents."""
        names = names or tuple(sorted(self.contents))
        return digest(*(part for name in names for part in (name.encode(), self.contents[name])))

    def materialise(self, root: Path) -> Path:
        """The files written under ``root/<digest>/`` (once per machine: a folder already there is
        reused); returns that folder. Each file is written whole and then renamed into place, so
        cells running at once on one machine never see half a file."""
        folder = Path(root) / self.digest()
        for name, content in self.contents.items():
            path = folder / name
            if path.is_file() and path.stat().st_size == len(content):
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, content)
        return folder
