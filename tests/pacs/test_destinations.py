"""Bad DICOM settings stop the service at startup with a message naming the setting: the UID root, destinations."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tumorsynth.settings import Settings


@pytest.mark.parametrize(
    ("root", "says"),
    [
        ("1.2.826.0.1.3680043.8.498", "ending with '.'"),
        ("1.2.03.", "without leading zeros"),
        ("1.2.x.", "digits"),
        ("7.1.", "must start with 0, 1 or 2"),
        ("1." + "123456789." * 5, "at most 40"),
    ],
)
def test_an_invalid_org_root_is_refused_naming_the_setting(root, says):
    with pytest.raises(ValidationError) as err:
        Settings(dicom_uid_root=root)
    assert "TUMORSYNTH_DICOM_UID_ROOT" in str(err.value) and says in str(err.value)


def test_a_valid_org_root_gives_fresh_uids_under_it():
    from tumorsynth.imaging.dicom import Study

    s = Settings(dicom_uid_root="1.2.826.0.1.3680043.10.543.")
    a, b = (Study.new(s.dicom_uid_root, "job_x", "ldm/x@1", "0" * 64) for _ in range(2))
    uids = {a.study_uid, b.study_uid, a.frame_of_reference_uid, a.uid(), a.uid()}
    assert len(uids) == 5 and all(u.startswith("1.2.826.0.1.3680043.10.543.") and len(u) <= 64 for u in uids)


@pytest.mark.parametrize(
    ("destination", "field"),
    [
        ({"kind": "dimse", "host": "pacs", "port": 104, "called_ae": "A" * 17}, "called_ae"),
        ({"kind": "dimse", "host": "pacs", "port": 104, "called_ae": "BAD\\AE"}, "called_ae"),
        ({"kind": "dimse", "host": "pacs", "port": 104, "called_ae": "   "}, "called_ae"),
        ({"kind": "dimse", "host": "pacs", "port": 0, "called_ae": "PACS"}, "port"),
        ({"kind": "stow-rs", "url": "ftp://pacs/dicom-web"}, "url"),
        ({"kind": "hl7", "host": "pacs"}, "kind"),
    ],
)
def test_a_bad_destination_is_refused_naming_tenant_and_field(destination, field):
    with pytest.raises(ValidationError) as err:
        Settings(pacs_destinations={"radiology": destination})
    assert "pacs_destinations.radiology" in str(err.value) and field in str(err.value)


def test_destinations_come_from_the_environment_as_json(monkeypatch):
    monkeypatch.setenv(
        "TUMORSYNTH_PACS_DESTINATIONS",
        '{"radiology": {"kind": "dimse", "host": "10.0.0.5", "port": 11112, "called_ae": "PACS"}}',
    )
    dest = Settings().pacs_destinations["radiology"]
    assert dest.describe() == "DIMSE PACS@10.0.0.5:11112" and dest.calling_ae == "TUMORSYNTH"


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_the_service_does_not_start_with_an_invalid_org_root(command, tmp_path):
    import os
    import subprocess
    import sys

    env = dict(os.environ, TUMORSYNTH_DICOM_UID_ROOT="1.2.03.", TUMORSYNTH_STORAGE_DIR=str(tmp_path / "s"))
    argv = [sys.executable, "-m", "tumorsynth.cli", command] + (["--port", "0"] if command == "serve" else [])
    r = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode != 0
    assert "TUMORSYNTH_DICOM_UID_ROOT '1.2.03.' is not a UID root" in " ".join((r.stdout + r.stderr).split())
