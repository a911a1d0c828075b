"""Per-tenant PACS destinations (``TUMORSYNTH_PACS_DESTINATIONS``, JSON) and the DICOM UID root, checked at startup.

Destinations are set by the operators, never by a client: a job only says ``"send_to": "pacs"``, and a tenant without
a destination gets a 422 for it.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

# DICOM AE titles: up to 16 characters of the default repertoire, no backslash or control characters
AETitle = Annotated[str, StringConstraints(min_length=1, max_length=16, pattern=r"^[ -\[\]-~]*[!-\[\]-~][ -\[\]-~]*$")]
UID_ROOT = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*\.$")
MAX_UID_ROOT = 40  # generate_uid fills up to 64 characters: leave at least 24 random digits


class DimseDestination(BaseModel):
    """DIMSE C-STORE (pynetdicom) to ``host:port``, AE title ``called_ae``."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["dimse"]
    host: Annotated[str, StringConstraints(min_length=1, max_length=253)]
    port: int = Field(ge=1, le=65535)
    called_ae: AETitle
    calling_ae: AETitle = "TUMORSYNTH"

    def describe(self) -> str:
        return f"DIMSE {self.called_ae}@{self.host}:{self.port}"


class StowDestination(BaseModel):
    """DICOMweb STOW-RS: ``POST {url}/studies`` with multipart/related application/dicom parts."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["stow-rs"]
    url: Annotated[str, StringConstraints(min_length=8, max_length=2048, pattern=r"^https?://")]
    username: str | None = None
    password: str | None = Field(None, repr=False)

    def describe(self) -> str:
        return f"STOW-RS {self.url}"


Destination = Annotated[DimseDestination | StowDestination, Field(discriminator="kind")]


def check_uid_root(root: str) -> str:
    """An organisation root for fresh UIDs: dotted decimal components without leading zeros, ending with '.'."""
    if not UID_ROOT.match(root):
        raise ValueError(
            f"TUMORSYNTH_DICOM_UID_ROOT {root!r} is not a UID root: digits in dot-separated "
            "components without leading zeros, ending with '.', e.g. '1.2.826.0.1.3680043.8.498.'"
        )
    if len(root) > MAX_UID_ROOT:
        raise ValueError(
            f"TUMORSYNTH_DICOM_UID_ROOT is {len(root)} characters; at most {MAX_UID_ROOT}, so UIDs "
            "under it keep enough random digits"
        )
    if root.split(".")[0] not in ("0", "1", "2"):
        raise ValueError(f"TUMORSYNTH_DICOM_UID_ROOT {root!r} must start with 0, 1 or 2 (an ISO/ITU-T arc)")
    return root
