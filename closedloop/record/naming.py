"""Names an archive expects: ``sub-<subject>_ses-<session>`` for a session directory and its NWB file.

DANDI's ``organize`` files a subject's NWB files as
``sub-<subject>/sub-<subject>_ses-<session>_<modalities>.nwb``; ids hold letters, digits and
hyphens only. A session directory is named the same way (``sub-M1_ses-20261207T101500-demo``), so
the ids travel with it and the export needs no renaming. A session without a subject id is
``ses-<session>``; it records and replays, but an archive export asks for the subject id.
"""

from __future__ import annotations

import datetime
import re

#: pynwb modules whose neurodata types name a file's modalities, as DANDI's organize reads them
#: (an ElectrodeGroup makes ``ecephys``, an IndexSeries ``image``, eye tracking ``behavior``).
MODALITIES = ("behavior", "ecephys", "icephys", "image", "ogen", "ophys")


def archive_id(text: str) -> str:
    """``text`` with every run of characters other than letters and digits as one hyphen."""
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-") or "x"


def session_id(protocol_name: str, when: datetime.datetime | None = None) -> str:
    """A new session's id: its start, to the microsecond, and the protocol's name
    (``20261207T101500123456-demo``)."""
    when = when or datetime.datetime.now()
    return f"{when:%Y%m%dT%H%M%S%f}-{archive_id(protocol_name)}"


def session_dirname(session: str, subject: str | None) -> str:
    """``sub-<subject>_ses-<session>``, or ``ses-<session>`` without a subject id."""
    return f"sub-{subject}_ses-{session}" if subject else f"ses-{session}"


def parse_dirname(name: str) -> tuple[str | None, str]:
    """(subject id or None, session id) of a directory named by :func:`session_dirname`; a directory
    named otherwise (an older session) is its own session id, made archive-safe."""
    match = re.fullmatch(r"(?:sub-([A-Za-z0-9-]+)_)?ses-([A-Za-z0-9-]+)", name)
    if match is None:
        return None, archive_id(name)
    return match.group(1), match.group(2)


def modalities(nwbfile) -> list[str]:
    """The modalities of a pynwb ``NWBFile``: the :data:`MODALITIES` its objects' types come from."""
    found = {type(obj).__module__.rsplit(".", 1)[-1] for obj in nwbfile.all_children()}
    return sorted(found & set(MODALITIES))


def nwb_filename(subject: str, session: str, kinds: list[str]) -> str:
    """``sub-<subject>_ses-<session>_<kinds joined by +>.nwb``, as DANDI's organize names a file of
    these modalities (:func:`modalities`) when asked to keep the session id."""
    return f"sub-{subject}_ses-{session}" + (f"_{'+'.join(sorted(kinds))}" if kinds else "") + ".nwb"
