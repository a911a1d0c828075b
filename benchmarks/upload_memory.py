"""Peak memory of the API and a worker for issue 14 #6's hostile upload, before vs after.

The upload: a float64 mask of 512×512×256 voxels (64 Mi voxels = the default ``max_voxels``, 512 MiB decompressed,
under the default ``max_decompressed_bytes``), ~0.6 MB gzipped. Each case runs in a fresh process that resets its
peak-RSS counter (``/proc/self/clear_refs``) once the upload's bytes are in memory, does that side's work on it and
reports the peak growth (VmHWM − VmRSS before):

* API, before: the reader of ``--before`` (git ref, default the last commit before the change) reads the file at its
  stored float64 width, then ``validate_mask`` checks it: both loaded from that ref's source.
* API, now: ``read_inputs`` reads the mask as uint8 labels, chunk by chunk; ``validate_mask``; the job's planned
  output memory is checked (``jobs.memory``): 1 sample × 4 contrasts is accepted, 4 samples are a 422.
* worker: it reads the inputs the same way (the before path also read them whole, then ``validate_mask``), and
  refuses a job whose planned outputs exceed ``max_job_output_bytes``: the sampling itself is not run here (a tiny
  model on 64 Mi voxels takes minutes on this machine), so its outputs are printed as the limit-derived bound.

Run: ``PYTHONPATH=. python benchmarks/upload_memory.py`` (about a minute on a busy 2-core machine).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BEFORE = "e3378d9"  # main before issue 14 round 2 (#6): the whole-file reader


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def old_modules(ref: str) -> tuple[types.ModuleType, types.ModuleType]:
    """``imaging/nifti.py`` and ``imaging/labels.py`` as they were at ``ref``, importable side by side with ours."""
    out = []
    for name in ("nifti", "labels"):
        src = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{ref}:tumorsynth/imaging/{name}.py"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        module = types.ModuleType(f"old_{name}")
        sys.modules[module.__name__] = module  # dataclasses look their module up there
        exec(
            compile(src.replace("from ..errors", "from tumorsynth.errors"), f"{ref}:{name}.py", "exec"), module.__dict__
        )
        out.append(module)
    return out[0], out[1]


def run_case(case: str, path: str, ref: str) -> dict:
    from tumorsynth.errors import InvalidRequest
    from tumorsynth.imaging.labels import validate_mask
    from tumorsynth.imaging.nifti import VolumeLimits
    from tumorsynth.jobs.memory import check_output_memory, planned_output_bytes
    from tumorsynth.jobs.service import read_inputs
    from tumorsynth.settings import Settings

    settings = Settings()
    limits = VolumeLimits.from_settings(settings)
    old = old_modules(ref) if case == "before" else None
    raw = Path(path).read_bytes()
    before = status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS from here on
    outcome = {}
    if case == "before":
        nifti, labels = old
        vol = nifti.read_volume(raw, field="mask", limits=nifti.VolumeLimits(*limits.__dict__.values()))
        outcome["labels"] = labels.validate_mask(vol).labels
        outcome["dtype"] = str(vol.data.dtype)
    else:
        vol = read_inputs({"mask": raw}, limits, frozenset({"mask"}))["mask"]
        outcome["labels"] = validate_mask(vol).labels
        outcome["dtype"] = str(vol.data.dtype)
        for samples in (1, 4):
            try:
                check_output_memory(vol.shape, 4, samples, settings.max_job_output_bytes)
                need = planned_output_bytes(vol.shape, 4, samples) / 2**30
                outcome[f"{samples}_samples"] = f"accepted ({need:.2f} GiB)"
            except InvalidRequest as exc:
                outcome[f"{samples}_samples"] = f"{exc.status} {exc.code}"
    outcome["peak_growth_mib"] = (status_kib("VmHWM") - before) / 1024
    outcome["limit_outputs_gib"] = settings.max_job_output_bytes / 2**30
    outcome["outputs_4_samples_gib"] = planned_output_bytes(vol.shape, 4, 4) / 2**30
    return outcome


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", default=BEFORE, help="git ref of the reader measured as 'before'")
    p.add_argument("--case", choices=["before", "now"], help=argparse.SUPPRESS)
    p.add_argument("--file", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.file, args.before)))
        return
    from tests.support.volumes import float64_mask_gz

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "hostile.nii.gz"
        path.write_bytes(float64_mask_gz())
        print(f"upload: float64 mask 512×512×256, {path.stat().st_size / 1e6:.2f} MB gzipped, 512 MiB decompressed")
        env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
        res = {}
        for case in ("before", "now"):
            out = subprocess.run(
                [sys.executable, __file__, "--case", case, "--file", str(path), "--before", args.before],
                check=True,
                capture_output=True,
                text=True,
                env=env,
            ).stdout
            res[case] = json.loads(out.strip().splitlines()[-1])
    b, n = res["before"], res["now"]
    print(f"{'':34}{'before (' + args.before + ')':>26}{'now':>26}")
    print(f"{'read + validate, peak RSS growth':34}{b['peak_growth_mib']:>22.0f} MiB{n['peak_growth_mib']:>22.0f} MiB")
    print("  (the API on upload; the worker reads its inputs with the same function)")
    print(f"{'  array kept':34}{b['dtype']:>26}{n['dtype']:>26}")
    print(f"{'  job of 1 sample × 4 contrasts':34}{'accepted, unbounded':>26}{n['1_samples']:>26}")
    print(f"{'  job of 4 samples × 4 contrasts':34}{'accepted, unbounded':>26}{n['4_samples']:>26}")
    print(
        f"{'worker: 4-sample job outputs':34}{b['outputs_4_samples_gib']:>18.2f} GiB held"
        f"{'refused (limit ' + format(n['limit_outputs_gib'], '.0f') + ' GiB)':>26}"
    )


if __name__ == "__main__":
    main()
