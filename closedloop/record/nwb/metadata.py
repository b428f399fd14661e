"""Who, where and what for: the subject, lab and recording hardware an archive (DANDI) asks for.

They come from the session's ``rig.json`` (its ``subject``, ``lab`` and ``recording`` tables, as the
rig file had them) and ``protocol.json`` (``protocol.description`` and ``keywords``); the command
line's ``--subject-id`` ... ``--lab`` replace rig fields (:func:`closedloop.config.with_metadata`).
A session directory named ``sub-<subject>_ses-<session>`` gives the subject id when the rig has none.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import ValidationError

from closedloop.config import LabSpec, RecordingSpec, Rig, SubjectSpec, with_metadata
from closedloop.errors import ClosedLoopError
from closedloop.record.naming import parse_dirname
from closedloop.record.schema import SessionRecord

REQUIRED = {"id": ("id", "subject-id"), "species": ("species", "species"), "sex": ("sex", "sex"),
            "age": ("age", "age")}
"""Subject fields an archive needs: field -> (rig file key under [subject], command-line option)."""


@dataclass(frozen=True)
class ArchiveMetadata:
    """The export's metadata, every field an archive needs present."""

    subject: SubjectSpec
    lab: LabSpec
    recording: RecordingSpec
    session_id: str
    description: str | None
    keywords: list[str]


def archive_metadata(record: SessionRecord, subject: dict | None = None, lab: dict | None = None
                     ) -> ArchiveMetadata:
    """The session's metadata with the command line's ``subject`` and ``lab`` fields over the rig's.

    Raises
    ------
    ClosedLoopError
        One line: a rig table that does not validate (naming ``rig.json`` and the field), a bad
        command-line value (naming the option), or a subject field an archive needs that is missing
        (naming the field and how to give it).
    """
    rig_json = record.path / "rig.json"
    tables = {}
    for table, model in (("subject", SubjectSpec), ("lab", LabSpec), ("recording", RecordingSpec)):
        try:
            tables[table] = model.model_validate(record.rig.get(table) or {})
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(map(str, (table, *error["loc"])))
            raise ClosedLoopError(f"session file {rig_json}: field '{where}': {error['msg']}") from None
    rig = with_metadata(Rig.model_construct(**tables), subject, lab)  # only these tables: no full rig needed
    dir_subject, session_id = parse_dirname(record.path.name)
    spec = rig.subject if rig.subject.id or not dir_subject else rig.subject.model_copy(update={"id": dir_subject})
    for field, (key, option) in REQUIRED.items():
        if getattr(spec, field) is None:
            raise ClosedLoopError(f"NWB export of {record.path}: an archive needs the subject's {key}: set "
                                  f"[subject] {key} in the rig file or pass --{option}")
    head = record.protocol.get("protocol", {})
    return ArchiveMetadata(subject=spec, lab=rig.lab, recording=rig.recording, session_id=session_id,
                           description=head.get("description"), keywords=list(head.get("keywords") or []))


def file_fields(meta: ArchiveMetadata) -> dict:
    """``NWBFile`` keyword arguments: subject, experimenter, institution, lab, experiment description
    and session id (absent ones left out, so no empty string is written).

    The keywords end the experiment description (``keywords: V4, closed loop``) rather than fill
    ``/general/keywords``: neo 0.14's NWBIO cannot read a file that has them (pynwb hands it the
    string dataset, which neo refuses as a Block annotation).
    """
    from pynwb.file import Subject

    s = meta.subject
    subject = Subject(subject_id=s.id, species=s.species, sex=s.sex, age=s.age,
                      **({"description": s.description} if s.description else {}))
    keywords = f"keywords: {', '.join(meta.keywords)}" if meta.keywords else None
    description = "; ".join(t for t in (meta.description, keywords) if t) or None
    fields = {"subject": subject, "session_id": meta.session_id, "experimenter": list(meta.lab.experimenter),
              "institution": meta.lab.institution, "lab": meta.lab.lab, "experiment_description": description}
    return {k: v for k, v in fields.items() if v not in (None, [])}
