"""Multipart job uploads: a JSON ``request`` field and named NIfTI file parts, read within hard limits."""

from __future__ import annotations

from fastapi import Request
from starlette.datastructures import UploadFile

from ..errors import InvalidRequest, PayloadTooLarge
from ..settings import Settings

MAX_FILE_PARTS = 8
MAX_REQUEST_JSON = 256 * 1024

JOB_FORM_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["request"],
                    "properties": {
                        "request": {"type": "string", "description": "JobRequest as JSON (see the JobRequest schema)"},
                        "mask": {"type": "string", "format": "binary", "description": "tumour mask, NIfTI"},
                        "t1": {"type": "string", "format": "binary"},
                        "flair": {"type": "string", "format": "binary"},
                    },
                    "additionalProperties": {"type": "string", "format": "binary"},
                }
            }
        },
    }
}


MAX_BATCH_MASKS = 64


async def read_job_form(request: Request, settings: Settings, multiple: bool = False
                        ) -> tuple[str | None, dict]:
    """``request`` JSON and the file parts by name; with ``multiple`` a name may repeat (lists of bytes)."""
    ctype = request.headers.get("content-type", "")
    if not ctype.lower().startswith("multipart/form-data"):
        raise InvalidRequest.for_field(
            "content-type", "send multipart/form-data with a JSON field 'request' and NIfTI file parts")
    max_files = MAX_BATCH_MASKS if multiple else MAX_FILE_PARTS
    form = await request.form(max_files=max_files, max_fields=MAX_FILE_PARTS, max_part_size=MAX_REQUEST_JSON)
    try:
        request_json: str | None = None
        files: dict = {}
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                if name in files and not multiple:
                    raise InvalidRequest.for_field(name, "sent twice; send each file part once")
                data = await value.read(settings.max_file_bytes + 1)
                if len(data) > settings.max_file_bytes:
                    raise PayloadTooLarge.for_field(
                        name, f"larger than {settings.max_file_bytes} bytes; upload a compressed .nii.gz")
                if multiple:
                    files.setdefault(name, []).append(data)
                else:
                    files[name] = data
            elif name == "request":
                if request_json is not None:
                    raise InvalidRequest.for_field("request", "sent twice; send one 'request' field")
                request_json = value
            else:
                raise InvalidRequest.for_field(name, "unknown form field; send 'request' and NIfTI file parts")
        return request_json, files
    finally:
        await form.close()
