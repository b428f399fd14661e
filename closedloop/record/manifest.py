"""``session.json``: what a session was created with, to tell later whether it was changed.

Written once, when the session is created, after ``protocol.json``, ``rig.json`` and
``stimuli.npz``: a random session id, the creation time and the SHA-256 of those three files.
A resumed session must still have them as they were (see
:func:`closedloop.record.checks.check_resumable`).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import datetime, timezone
from pathlib import Path

from closedloop.record.atomic import write_atomic

MANIFEST = "session.json"
FIXED = ("protocol.json", "rig.json", "stimuli.npz")  # files a session never rewrites


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(session: Path) -> None:
    """Write ``session/session.json`` (atomically) for the ``FIXED`` files now in ``session``."""
    manifest = {"id": uuid.uuid4().hex, "created": datetime.now(timezone.utc).isoformat(),
                "sha256": {name: sha256(session / name) for name in FIXED}}
    write_atomic(session / MANIFEST, json.dumps(manifest, indent=2))


def changed(session: Path, manifest: dict) -> list[str]:
    """The ``FIXED`` files of ``session`` whose content is not the one ``manifest`` recorded."""
    return [name for name in FIXED if sha256(session / name) != manifest["sha256"][name]]
