"""A corpus of malformed requests, each with the status the service must answer and the field it must name.

Bodies are built byte by byte (not through an HTTP client's form encoder) so that the multipart framing itself can
be wrong: missing boundaries, parts without names, duplicate parts, non-UTF-8 JSON. The NIfTI-level corpus is
``tests/imaging/malformed.py``; this one covers the request around the files. Statuses assume the limits of
``tests/api/test_bad_input.py`` (8 MiB per request, 4 MiB per file).
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field

import numpy as np

from tests.support.volumes import mask_bytes, nifti_bytes, oblique_affine

BOUNDARY = "tsboundary7MA4YWxkTrZu0gW"
MODEL = "ldm/tiny@1"
TAVIT = "tavit/tiny@1"
VQGAN = "vqgan/tiny@1"
STYLEGAN2 = "stylegan2/demo-phantom@1"
SHAPE = (24, 28, 20)


@dataclass
class BadRequest:
    name: str
    status: int
    field: str | None  # the field the problem's ``errors`` must name (None: a framing error, 4xx with a detail)
    body: bytes = b""
    content_type: str | None = f"multipart/form-data; boundary={BOUNDARY}"
    path: str = "/v1/jobs"
    method: str = "POST"
    headers: dict[str, str] = field(default_factory=dict)

    def request_headers(self, auth: dict[str, str]) -> dict[str, str]:
        out = dict(auth) | self.headers
        if self.content_type is not None:
            out["Content-Type"] = self.content_type
        return out


def part(
    name: str | None,
    data: bytes | str,
    filename: str | None = None,
    ctype: str | None = None,
    disposition: str = "form-data",
) -> bytes:
    head = disposition
    if name is not None:
        head += f'; name="{name}"'
    if filename is not None:
        head += f'; filename="{filename}"'
    lines = [f"Content-Disposition: {head}"] if disposition else []
    if ctype:
        lines.append(f"Content-Type: {ctype}")
    body = data.encode() if isinstance(data, str) else data
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def multipart(*parts: bytes, boundary: str = BOUNDARY, close: bool = True) -> bytes:
    out = b"".join(f"--{boundary}\r\n".encode() + p + b"\r\n" for p in parts)
    return out + (f"--{boundary}--\r\n".encode() if close else b"")


def req(body: dict | str | bytes) -> bytes:
    data = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return part("request", data, ctype="application/json")


def file(name: str, data: bytes, filename: str | None = None) -> bytes:
    return part(name, data, filename=filename or f"{name}.nii.gz", ctype="application/octet-stream")


def _volumes() -> dict[str, bytes]:
    aff = oblique_affine()
    other = aff.copy()
    other[:3, 3] += 7.0
    t1 = np.random.default_rng(0).random(SHAPE).astype(np.float32)
    return {
        "mask": mask_bytes(SHAPE),
        "t1": nifti_bytes(t1, aff),
        "flair": nifti_bytes(t1 * 2, aff),
        "flair_small": nifti_bytes(t1[:20] * 2, aff),
        "flair_moved": nifti_bytes(t1 * 2, other),
        "flair_4d": nifti_bytes(np.stack([t1, t1], -1), aff),
        "mask_other_grid": mask_bytes((24, 28, 18)),
    }


def _job(request: dict | str | bytes, *files: bytes, **kw) -> bytes:
    return multipart(req(request), *files, **kw)


def job_requests(v: dict[str, bytes]) -> list[BadRequest]:
    """``POST /v1/jobs``: the JSON part, its types and sizes, and the model's inputs."""
    m = file("mask", v["mask"])
    ok = {"model": MODEL}
    vq = {"model": VQGAN, "tumor_class": "LGG"}
    huge = "x" * 300_000
    cases = [
        ("request not JSON", _job("{not json", m), 422, "request"),
        ("request a JSON array", _job("[1, 2]", m), 422, "request"),
        ("request a JSON string", _job('"ldm/tiny@1"', m), 422, "request"),
        ("request JSON null", _job("null", m), 422, "request"),
        ("request empty", _job("", m), 422, "request"),
        ("request JSON with NaN", _job('{"model": "ldm/tiny@1", "seed": NaN}', m), 422, "seed"),
        ("request JSON 1e400", _job('{"model": "ldm/tiny@1", "num_samples": 1e400}', m), 422, "num_samples"),
        (
            "request non-UTF-8 bytes",
            _job(b'{"model": "ldm/tiny@1", "metadata": {"a": "\xff\xfe\xfa"}}', m),
            422,
            "request",
        ),
        ("request UTF-16 with BOM", _job('{"model": "ldm/tiny@1"}'.encode("utf-16"), m), 422, "request"),
        (
            "request latin-1 charset",
            multipart(
                part(
                    "request",
                    '{"model": "ldm/tiny@1", "seed": "é"}'.encode("latin-1"),
                    ctype="application/json; charset=latin-1",
                ),
                m,
            ),
            422,
            "request",
        ),
        ("request nested 100,000 deep", _job("[" * 100_000 + "]" * 100_000, m), 422, "request"),
        ("request over 256 KiB", _job({"model": MODEL, "metadata": {"a": huge}}, m), 413, "request"),
        ("request with a UTF-8 byte-order mark", _job(b"\xef\xbb\xbf" + json.dumps(ok).encode(), m), 422, "request"),
        ("num_samples a numeric string", _job(ok | {"num_samples": "2"}, m), 422, "num_samples"),
        ("seed a float", _job(ok | {"seed": 2.0}, m), 422, "seed"),
        ("unknown top-level field", _job(ok | {"colour": "red"}, m), 422, "colour"),
        ("unknown sampler field", _job(ok | {"sampler": {"name": "dpm++", "eta": 1}}, m), 422, "sampler.eta"),
        ("model a number", _job({"model": 7}, m), 422, "model"),
        ("model null", _job({"model": None}, m), 422, "model"),
        ("model missing", _job({"seed": 1}, m), 422, "model"),
        ("model 100,000 characters", _job({"model": "m" * 100_000}, m), 422, "model"),
        ("num_samples a string", _job(ok | {"num_samples": "two"}, m), 422, "num_samples"),
        ("num_samples fractional", _job(ok | {"num_samples": 1.5}, m), 422, "num_samples"),
        ("num_samples true", _job(ok | {"num_samples": True}, m), 422, "num_samples"),
        ("num_samples zero", _job(ok | {"num_samples": 0}, m), 422, "num_samples"),
        ("seed 2**70", _job(ok | {"seed": 2**70}, m), 422, "seed"),
        ("seed negative", _job(ok | {"seed": -1}, m), 422, "seed"),
        ("modalities a string", _job(ok | {"modalities": "flair"}, m), 422, "modalities"),
        ("modalities repeated", _job(ok | {"modalities": ["t1", "t1"]}, m), 422, "modalities"),
        ("modalities 10,000 long", _job(ok | {"modalities": ["t1"] * 10_000}, m), 422, "modalities"),
        ("sampler a string", _job(ok | {"sampler": "dpm++"}, m), 422, "sampler"),
        ("sampler steps a list", _job(ok | {"sampler": {"name": "dpm++", "steps": [5]}}, m), 422, "sampler.steps"),
        ("metadata a list", _job(ok | {"metadata": ["a"]}, m), 422, "metadata"),
        ("metadata 1,000 keys", _job(ok | {"metadata": {f"k{i}": i for i in range(1000)}}, m), 422, "metadata"),
        ("metadata nested object", _job(ok | {"metadata": {"a": {"b": {"c": 1}}}}, m), 422, "metadata.a"),
        ("webhook not http", _job(ok | {"webhook": "file:///etc/passwd"}, m), 422, "webhook"),
        ("webhook 100,000 characters", _job(ok | {"webhook": "https://" + "a" * 100_000}, m), 422, "webhook"),
        ("tumor_class a number", _job(ok | {"tumor_class": 5}, m), 422, "tumor_class"),
        ("output_grid unknown", _job(ok | {"output_grid": "mni"}, m), 422, "output_grid"),
        ("mask missing", _job(ok), 422, "mask"),
        ("file part the model does not take", _job(ok, m, file("t1", v["t1"])), 422, "t1"),
        (
            "tavit: flair on another shape",
            _job({"model": TAVIT}, file("t1", v["t1"]), file("flair", v["flair_small"])),
            422,
            "flair",
        ),
        (
            "tavit: flair with another affine",
            _job({"model": TAVIT}, file("t1", v["t1"]), file("flair", v["flair_moved"])),
            422,
            "flair",
        ),
        ("tavit: flair 4D", _job({"model": TAVIT}, file("t1", v["t1"]), file("flair", v["flair_4d"])), 422, "flair"),
        (
            "tavit: flair corrupt gzip",
            _job({"model": TAVIT}, file("t1", v["t1"]), file("flair", v["flair"][:200])),
            422,
            "flair",
        ),
        (
            "tavit: mask on another grid",
            _job({"model": TAVIT}, file("t1", v["t1"]), file("flair", v["flair"]), file("mask", v["mask_other_grid"])),
            422,
            "mask",
        ),
        ("tavit: flair without t1", _job({"model": TAVIT}, file("flair", v["flair"])), 422, "t1"),
        ("tavit: t1 given as the mask", _job({"model": TAVIT}, file("mask", v["t1"])), 422, "t1"),
        # options: checked against the model's declared options (GET /v1/models) before anything is stored
        (
            "options: a model without options",
            _job(ok | {"options": {"temperature": 0.5}}, m),
            422,
            "options.temperature",
        ),
        ("options: unknown name", _job(vq | {"options": {"temprature": 0.5}}), 422, "options.temprature"),
        ("options: a list", _job(vq | {"options": [0.5]}), 422, "options"),
        ("options: a string value", _job(vq | {"options": {"temperature": "hot"}}), 422, "options.temperature"),
        ("options: true as a number", _job(vq | {"options": {"guidance": True}}), 422, "options.guidance"),
        (
            "options: NaN",
            _job('{"model": "%s", "tumor_class": "LGG", "options": {"temperature": NaN}}' % VQGAN),
            422,
            "options.temperature",
        ),
        ("options: over the maximum", _job(vq | {"options": {"temperature": 1e6}}), 422, "options.temperature"),
        ("options: below the minimum", _job(vq | {"options": {"guidance": -1}}), 422, "options.guidance"),
        ("options: an int option fractional", _job(vq | {"options": {"top_k": 8.5}}), 422, "options.top_k"),
        ("options: null where not nullable", _job(vq | {"options": {"temperature": None}}), 422, "options.temperature"),
        ("options: truncation on a model without it", _job(vq | {"truncation": 0.5}), 422, "truncation"),
        (
            "options: truncation twice, differing",
            _job({"model": STYLEGAN2, "tumor_class": "glioma", "truncation": 0.5, "options": {"truncation": 0.7}}),
            422,
            "truncation",
        ),
        (
            "options: truncation out of bounds",
            _job({"model": STYLEGAN2, "tumor_class": "glioma", "options": {"truncation": 1.5}}),
            422,
            "options.truncation",
        ),
    ]
    return [BadRequest(name, status, fld, body) for name, body, status, fld in cases]


def framing_requests(v: dict[str, bytes]) -> list[BadRequest]:
    """``POST /v1/jobs``: content types and the multipart framing."""
    m = file("mask", v["mask"])
    r = req({"model": MODEL})
    plain = json.dumps({"model": MODEL}).encode()
    cases = [
        BadRequest("JSON body instead of multipart", 422, "content-type", plain, "application/json"),
        BadRequest("text/plain body", 422, "content-type", b"model=ldm/tiny@1", "text/plain"),
        BadRequest("no content type", 422, "content-type", multipart(r, m), None),
        BadRequest("urlencoded form", 422, "content-type", b"request=%7B%7D", "application/x-www-form-urlencoded"),
        BadRequest("multipart/mixed", 422, "content-type", multipart(r, m), f"multipart/mixed; boundary={BOUNDARY}"),
        BadRequest("raw NIfTI body", 422, "content-type", v["mask"], "application/octet-stream"),
        BadRequest("multipart without a boundary", 400, None, multipart(r, m), "multipart/form-data"),
        BadRequest("boundary not in the body", 400, None, multipart(r, m, boundary="other")),
        BadRequest("empty multipart body", 400, None, b""),
        BadRequest("closing boundary missing", 400, None, multipart(r, m, close=False)),
        BadRequest("body cut inside the file part", 400, None, multipart(r, m)[:-4000]),
        BadRequest("garbage body", 400, None, b"\x00\xff" * 2000),
        BadRequest(
            "part without a Content-Disposition", 400, None, multipart(r, part(None, v["mask"], disposition=""))
        ),
        BadRequest("part without a name", 400, None, multipart(r, part(None, v["mask"], filename="m.nii.gz"))),
        BadRequest("request part twice", 422, "request", multipart(r, r, m)),
        BadRequest("mask part twice", 422, "mask", multipart(r, m, m)),
        BadRequest("unknown text field", 422, "colour", multipart(r, m, part("colour", "red"))),
        BadRequest("mask sent as a text field", 422, "mask", multipart(r, part("mask", "not a file"))),
        BadRequest("request sent as a file", 422, "request", multipart(file("request", plain), m)),
        BadRequest("nine file parts", 400, None, multipart(r, *(file(f"f{i}", b"x") for i in range(9)))),
        BadRequest("nine text fields", 400, None, multipart(r, m, *(part(f"t{i}", "x") for i in range(9)))),
        BadRequest("file name of 100,000 characters", 400, None, multipart(r, file("mask", v["mask"], "a" * 100_000))),
        BadRequest("file part over the per-file cap", 413, "mask", multipart(r, file("mask", b"\x00" * (5 << 20)))),
        BadRequest("body over the request cap", 413, None, multipart(r, file("mask", b"\x00" * (9 << 20)))),
        BadRequest(
            "gzip content-encoding", 400, None, gzip.compress(multipart(r, m)), headers={"Content-Encoding": "gzip"}
        ),
        BadRequest(
            "Idempotency-Key of 10,000 characters",
            422,
            "Idempotency-Key",
            multipart(r, m),
            headers={"Idempotency-Key": "k" * 10_000},
        ),
    ]
    return cases


def other_requests(v: dict[str, bytes]) -> list[BadRequest]:
    """Batches, the mask bank, listing and reading: JSON bodies, query parameters and ids."""
    batch = {"model": MODEL, "class_counts": {"LGG": 1, "HGG": 2}, "target": "balance"}
    j = "application/json"

    def body(value: dict) -> bytes:
        return json.dumps(value).encode()

    cases = [
        BadRequest("batch: not JSON", 422, "request", b"{", j, "/v1/batches"),
        BadRequest("batch: non-UTF-8 JSON", 422, "request", b'{"model": "\xff\xfe"}', j, "/v1/batches"),
        BadRequest("batch: a JSON array", 422, "request", b"[]", j, "/v1/batches"),
        BadRequest("batch: unknown field", 422, "colour", body(batch | {"colour": 1}), j, "/v1/batches"),
        BadRequest(
            "batch: class count a string",
            422,
            "class_counts.LGG",
            body(batch | {"class_counts": {"LGG": "many"}}),
            j,
            "/v1/batches",
        ),
        BadRequest(
            "batch: class count 10**9",
            422,
            "class_counts.LGG",
            body(batch | {"class_counts": {"LGG": 10**9}}),
            j,
            "/v1/batches",
        ),
        BadRequest(
            "batch: class count true",
            422,
            "class_counts.LGG",
            body(batch | {"class_counts": {"LGG": True, "HGG": 2}}),
            j,
            "/v1/batches",
        ),
        BadRequest("batch: both targets", 422, "request", body(batch | {"total_per_class": 3}), j, "/v1/batches"),
        BadRequest(
            "batch: JSON body over 256 KiB",
            413,
            "request",
            body(batch | {"sampler": {"x": "y" * 300_000}}),
            j,
            "/v1/batches",
        ),
        BadRequest(
            "batch: unknown option",
            422,
            "options.temperature",
            body(batch | {"options": {"temperature": 0.5}}),
            j,
            "/v1/batches",
        ),
        BadRequest(
            "batch: option out of bounds",
            422,
            "options.top_k",
            body(
                {
                    "model": "vqgan/tiny@1",
                    "class_counts": {"LGG": 1, "HGG": 2},
                    "target": "balance",
                    "options": {"top_k": 0},
                }
            ),
            j,
            "/v1/batches",
        ),
        BadRequest("batch: nested 100,000 deep", 422, "request", b"[" * 100_000 + b"]" * 100_000, j, "/v1/batches"),
        BadRequest("mask bank: no mask", 422, "mask", multipart(req({"tumor_class": "LGG"})), path="/v1/masks"),
        BadRequest(
            "mask bank: class a list",
            422,
            "tumor_class",
            multipart(req({"tumor_class": ["LGG"]}), file("mask", v["mask"])),
            path="/v1/masks",
        ),
        BadRequest(
            "mask bank: request not JSON",
            422,
            "request",
            multipart(req("{"), file("mask", v["mask"])),
            path="/v1/masks",
        ),
        BadRequest(
            "mask bank: corrupt mask",
            422,
            "mask",
            multipart(req({"tumor_class": "LGG"}), file("mask", v["mask"][:300])),
            path="/v1/masks",
        ),
        BadRequest("mask bank: JSON body", 422, "content-type", b'{"tumor_class": "LGG"}', j, "/v1/masks"),
        BadRequest("list: limit 0", 422, "limit", method="GET", path="/v1/jobs?limit=0", content_type=None),
        BadRequest(
            "list: limit not a number", 422, "limit", method="GET", path="/v1/jobs?limit=ten", content_type=None
        ),
        BadRequest("list: unknown status", 422, "status", method="GET", path="/v1/jobs?status=done", content_type=None),
        BadRequest(
            "list: cursor garbage", 422, "cursor", method="GET", path="/v1/jobs?cursor=%25%25%25", content_type=None
        ),
        BadRequest(
            "job id of 10,000 characters", 404, None, method="GET", path="/v1/jobs/" + "j" * 10_000, content_type=None
        ),
        BadRequest("job id with a NUL", 404, None, method="GET", path="/v1/jobs/job_%00x", content_type=None),
        BadRequest(
            "signed object: traversal key",
            401,
            None,
            method="GET",
            content_type=None,
            path="/v1/objects/tenants/alpha/../../etc/passwd?expires=9999999999&signature=00",
        ),
        BadRequest(
            "signed object: expires not a number",
            422,
            "expires",
            method="GET",
            content_type=None,
            path="/v1/objects/tenants/alpha/x?expires=soon&signature=00",
        ),
    ]
    return cases


def corpus() -> list[BadRequest]:
    v = _volumes()
    return job_requests(v) + framing_requests(v) + other_requests(v)
