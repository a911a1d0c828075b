"""A job request checked against the model it names: fields the model does not take are refused, naming them."""

from __future__ import annotations

import json
import math
import secrets

from pydantic import ValidationError

from ..errors import FieldError, InvalidRequest
from ..imaging.intensity import native_scale, scale_errors
from ..models.options import check_options, resolve_options
from ..models.registry import ModelEntry
from ..schemas import JobRequest


class _NonFinite(float):
    """Where the JSON had ``NaN``, ``Infinity``, ``-Infinity`` or a number too large for a double."""

    text: str

    def __new__(cls, text: str):
        obj = super().__new__(cls, "nan")
        obj.text = text
        return obj


def _finite_float(text: str) -> float:
    value = float(text)
    return value if math.isfinite(value) else _NonFinite(text)


def load_json(raw: str | bytes, field: str = "request"):
    """JSON from a client, or ``InvalidRequest`` naming ``field`` (nesting too deep for the parser included).

    Python's parser takes ``NaN`` and ``Infinity`` (not JSON) and turns ``1e999`` into infinity; those are refused
    naming the field that holds them, so no non-finite number reaches a record, a model or a webhook.
    """
    try:
        data = json.loads(raw, parse_constant=_NonFinite, parse_float=_finite_float)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest.for_field(field, f"not valid JSON ({exc})") from exc
    except RecursionError as exc:
        raise InvalidRequest.for_field(field, "JSON nested too deeply; send a flat JSON object") from exc
    if (found := _first_non_finite(data)) is not None:
        path, text = found
        raise InvalidRequest.for_field(path or field, f"{text} is not a JSON number; send a finite number")
    return data


def _first_non_finite(value, path: str = "") -> tuple[str, str] | None:
    """(dotted path, literal) of the first non-finite number in parsed JSON; iterative, so depth costs no stack."""
    stack = [(path, value)]
    while stack:
        where, v = stack.pop()
        if isinstance(v, _NonFinite):
            return where, v.text
        if isinstance(v, dict):
            stack.extend((f"{where}.{k}" if where else str(k), item) for k, item in reversed(v.items()))
        elif isinstance(v, list):
            stack.extend((f"{where}.{i}" if where else str(i), item) for i, item in reversed(list(enumerate(v))))
    return None


def parse_request(raw: str | bytes | None) -> JobRequest:
    if raw is None or raw == "" or raw == b"":
        raise InvalidRequest.for_field("request", "send the job as a JSON form field named 'request'")
    data = load_json(raw)
    if not isinstance(data, dict):
        raise InvalidRequest.for_field("request", "must be a JSON object")
    try:
        # strict: JSON true is not 1 and "2" is not 2 (pydantic's lax mode would take both)
        return JobRequest.model_validate(data, strict=True)
    except ValidationError as exc:
        raise from_pydantic(exc) from exc


# pydantic names each member of a failed union in the error's location ("metadata.a.str", "metadata.a.int", ...)
UNION_MEMBERS = {"str": "a string", "int": "an integer", "float": "a number", "bool": "a boolean"}


def from_pydantic(exc: ValidationError, prefix: str = "") -> InvalidRequest:
    errors: list[FieldError] = []
    unions: dict[str, list[str]] = {}
    for e in exc.errors():
        loc = list(e["loc"])
        if len(loc) > 1 and loc[-1] in UNION_MEMBERS:
            unions.setdefault(prefix + ".".join(str(p) for p in loc[:-1]), []).append(UNION_MEMBERS[loc[-1]])
            continue
        field = ".".join(str(p) for p in loc) or "request"
        msg = "this field is not accepted" if e["type"] == "extra_forbidden" else e["msg"]
        errors.append(FieldError(prefix + field, msg))
    for field, kinds in unions.items():
        errors.append(
            FieldError(
                field, f"must be {', '.join(kinds[:-1])} or {kinds[-1]}" if len(kinds) > 1 else f"must be {kinds[0]}"
            )
        )
    return InvalidRequest("; ".join(f"{e.field}: {e.message}" for e in errors), errors=errors)


# Tasks whose whole point is the class: a job without one is refused rather than given a default.
CLASS_TASKS = {"class_to_roi", "class_to_slice"}
# Tasks that map inputs to one output: more samples would be copies.
DETERMINISTIC_TASKS = {"contrast_synthesis"}


def check_against_model(req: JobRequest, entry: ModelEntry) -> list[FieldError]:
    errs: list[FieldError] = []
    if req.tumor_class is None and entry.task in CLASS_TASKS:
        errs.append(
            FieldError(
                "tumor_class",
                f"{entry.id} generates a chosen tumour class; set tumor_class to one of {list(entry.classes)}",
            )
        )
    if entry.task in DETERMINISTIC_TASKS and req.num_samples != 1:
        errs.append(FieldError("num_samples", f"{entry.id} is deterministic (one output per input); ask for 1"))
    if req.tumor_class is not None:
        if not entry.classes:
            errs.append(FieldError("tumor_class", f"{entry.id} is not class-conditional; leave tumor_class out"))
        elif req.tumor_class not in entry.classes:
            errs.append(FieldError("tumor_class", f"'{req.tumor_class}' is not one of {list(entry.classes)}"))
    errs += option_errors(req, entry)
    if req.intensity is not None and (
        why := scale_errors(entry.config, entry.id, req.intensity, req.modalities or entry.modalities)
    ):
        errs.append(FieldError("intensity", why))
    if req.modalities:
        unknown = [m for m in req.modalities if m not in entry.modalities]
        if unknown:
            errs.append(
                FieldError("modalities", f"{unknown} not made by {entry.id}; it makes {list(entry.modalities)}")
            )
    if req.sampler is not None:
        names = [s.name for s in entry.samplers]
        if req.sampler.name is not None and req.sampler.name not in names:
            errs.append(FieldError("sampler.name", f"'{req.sampler.name}' is not one of {names}"))
        elif req.sampler.steps is not None:
            spec = entry.sampler(req.sampler.name)
            if not spec.min_steps <= req.sampler.steps <= spec.max_steps:
                errs.append(
                    FieldError("sampler.steps", f"{spec.name} takes {spec.min_steps} to {spec.max_steps} steps")
                )
    return errs


def requested_options(req: JobRequest) -> dict:
    """``options`` with the deprecated top-level ``truncation`` merged in (``option_errors`` refuses a clash)."""
    given = dict(req.options or {})
    if req.truncation is not None:
        given.setdefault("truncation", req.truncation)
    return given


def option_errors(req: JobRequest, entry: ModelEntry) -> list[FieldError]:
    """The model's check of ``options``; a problem with the top-level ``truncation`` names ``truncation``."""
    names = {o.name for o in entry.options}
    if req.truncation is not None:
        if "truncation" not in names:
            return [
                FieldError("truncation", f"{entry.id} takes no truncation (only StyleGAN2 models do); leave it out")
            ]
        if req.options and "truncation" in req.options and req.options["truncation"] != req.truncation:
            return [
                FieldError(
                    "truncation",
                    f"differs from options.truncation ({req.options['truncation']}); send "
                    "options.truncation only (top-level truncation is deprecated)",
                )
            ]
    _, errs = resolve_options(entry.options, requested_options(req), entry.id)
    aliased = req.truncation is not None and "truncation" not in (req.options or {})
    return [FieldError("truncation", e.message) if aliased and e.field == "options.truncation" else e for e in errs]


def delivery_errors(req: JobRequest, tenant: str, settings) -> list[FieldError]:
    """``send_to: "pacs"`` needs DICOM output and a destination configured for the tenant."""
    if req.send_to is None:
        return []
    errs = []
    if "dicom" not in (req.formats or []):
        errs.append(FieldError("send_to", 'a PACS receives DICOM: add "dicom" to formats (["nifti", "dicom"])'))
    if tenant not in settings.pacs_destinations:
        errs.append(
            FieldError(
                "send_to",
                f"tenant {tenant!r} has no PACS destination configured "
                "(TUMORSYNTH_PACS_DESTINATIONS); leave send_to out or ask the operators",
            )
        )
    return errs


def check_files(names: list[str], entry: ModelEntry) -> list[FieldError]:
    errs = []
    wanted = [i.name for i in entry.inputs]
    for name in names:
        if name not in wanted:
            takes = ", ".join(wanted) or "no files"
            errs.append(FieldError(name, f"{entry.id} takes no file part '{name}'; it takes: {takes}"))
    for spec in entry.inputs:
        if spec.required and spec.name not in names:
            errs.append(FieldError(spec.name, f"{entry.id} needs a NIfTI file part named '{spec.name}'"))
    return errs


def normalised(req: JobRequest, entry: ModelEntry) -> dict:
    """The request as it will run: seed drawn when absent, sampler, steps and every option made explicit."""
    spec = entry.sampler(req.sampler.name if req.sampler else None)
    steps = req.sampler.steps if req.sampler and req.sampler.steps else spec.default_steps
    out = req.model_dump(exclude_none=True)
    out["seed"] = req.seed if req.seed is not None else secrets.randbelow(2**31)
    out["sampler"] = {"name": spec.name, "steps": steps}
    out["modalities"] = req.modalities or list(entry.modalities)
    out["options"] = check_options(entry.options, requested_options(req), entry.id)
    out["intensity"] = req.intensity or native_scale(entry.config)[0]
    out["formats"] = req.formats or ["nifti"]
    return out


def raise_if(errors: list[FieldError]) -> None:
    if errors:
        raise InvalidRequest("; ".join(f"{e.field}: {e.message}" for e in errors), errors=errors)
