"""Multipart job uploads: a JSON ``request`` field and named NIfTI file parts, read within hard limits."""

from __future__ import annotations

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from ..errors import InvalidRequest, MalformedRequest, PayloadTooLarge
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
                        "request": {
                            "type": "string",
                            "contentMediaType": "application/json",
                            "contentSchema": {"$ref": "#/components/schemas/JobRequest"},
                            "description": "JobRequest as JSON (see the JobRequest schema)",
                        },
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


async def read_job_form(request: Request, settings: Settings, multiple: bool = False) -> tuple[str | None, dict]:
    """``request`` JSON and the file parts by name; with ``multiple`` a name may repeat (lists of bytes)."""
    ctype = request.headers.get("content-type", "")
    if not ctype.lower().startswith("multipart/form-data"):
        raise InvalidRequest.for_field(
            "content-type", "send multipart/form-data with a JSON field 'request' and NIfTI file parts"
        )
    form = await _parse_form(request, MAX_BATCH_MASKS if multiple else MAX_FILE_PARTS)
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
                        name, f"larger than {settings.max_file_bytes} bytes; upload a compressed .nii.gz"
                    )
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


class _StrictFormParser(MultiPartParser):
    """Starlette's parser, stricter where it is lenient: a text part must be UTF-8 (Starlette falls back to
    Latin-1 silently, turning bad bytes into other characters), and the body must reach its closing boundary
    (python-multipart accepts a body cut short and drops the part that was open)."""

    complete = False

    def on_part_end(self) -> None:
        part = self._current_part
        if part.file is None:
            try:
                bytes(part.data).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidRequest.for_field(
                    part.field_name or "request",
                    f"not UTF-8 (byte 0x{part.data[exc.start]:02x} at offset "
                    f"{exc.start}); send text fields, JSON included, encoded as UTF-8",
                ) from exc
        super().on_part_end()

    def on_end(self) -> None:
        self.complete = True


async def _parse_form(request: Request, max_files: int):
    parser = _StrictFormParser(
        request.headers,
        request.stream(),
        max_files=max_files,
        max_fields=MAX_FILE_PARTS,
        max_part_size=MAX_REQUEST_JSON,
    )
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        if exc.message.startswith("Part exceeded maximum size"):
            raise PayloadTooLarge.for_field(
                parser._current_part.field_name or "request",
                f"a text field is limited to {MAX_REQUEST_JSON // 1024} KiB",
            ) from exc
        raise MalformedRequest(
            f"the multipart body cannot be read ({exc.message}); send multipart/form-data with "
            "a JSON field 'request' and named NIfTI file parts"
        ) from exc
    if not parser.complete:
        await form.close()
        raise MalformedRequest(
            "the multipart body ends before its closing boundary: the upload was cut short or "
            "the boundary in Content-Type does not match the body; send it again"
        )
    return form


async def read_json_body(request: Request) -> bytes:
    """A JSON request body, read no further than ``MAX_REQUEST_JSON`` (the request cap is for uploads, not JSON)."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_REQUEST_JSON:
            raise PayloadTooLarge.for_field("request", f"a JSON body is limited to {MAX_REQUEST_JSON // 1024} KiB")
    return bytes(body)
