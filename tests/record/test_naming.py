"""Session and NWB file names as an archive (DANDI's organize) makes them."""

from __future__ import annotations

import datetime

import pytest

from closedloop.record.naming import archive_id, modalities, nwb_filename, parse_dirname, session_dirname, session_id

WHEN = datetime.datetime(2026, 12, 7, 10, 15, 0, 123456)


def test_a_session_id_is_its_start_and_protocol_in_letters_digits_and_hyphens():
    assert session_id("demo", WHEN) == "20261207T101500123456-demo"
    assert session_id("v4 twins_2", WHEN) == "20261207T101500123456-v4-twins-2"
    assert archive_id("__") == "x"


@pytest.mark.parametrize("subject", ["M1", None])
def test_directory_names_parse_back(subject):
    session = session_id("demo", WHEN)
    name = session_dirname(session, subject)
    assert name == (f"sub-M1_ses-{session}" if subject else f"ses-{session}")
    assert parse_dirname(name) == (subject, session)


def test_an_older_directory_name_is_its_own_session_id():
    assert parse_dirname("20261206-101500-123456_demo") == (None, "20261206-101500-123456-demo")


def test_the_nwb_file_is_named_as_organize_names_it():
    """``dandi organize --required-field session_id`` named a file with an electrode group, an
    IndexSeries and eye tracking ``sub-M1_ses-<session>_behavior+ecephys+image.nwb``."""
    assert nwb_filename("M1", "20261207T101500123456-demo", ["image", "ecephys", "behavior"]) == \
        "sub-M1_ses-20261207T101500123456-demo_behavior+ecephys+image.nwb"
    assert nwb_filename("M1", "1-a", []) == "sub-M1_ses-1-a.nwb"


def test_modalities_are_the_pynwb_modules_of_the_file_s_types():
    from datetime import datetime, timezone

    from pynwb import NWBFile, TimeSeries
    from pynwb.behavior import EyeTracking, SpatialSeries

    nwbfile = NWBFile(session_description="x", identifier="x", session_start_time=datetime.now(timezone.utc))
    nwbfile.add_acquisition(TimeSeries(name="light", data=[0.0, 1.0], unit="V", rate=1.0))
    assert modalities(nwbfile) == []  # a plain TimeSeries is no modality
    device = nwbfile.create_device("array")
    nwbfile.create_electrode_group("g", description="x", location="V4", device=device)
    module = nwbfile.create_processing_module("behavior", "eye")
    module.add(EyeTracking(spatial_series=SpatialSeries(name="gaze", data=[[0.0, 0.0]], rate=1.0,
                                                        reference_frame="fixation point", unit="degrees")))
    assert modalities(nwbfile) == ["behavior", "ecephys"]
