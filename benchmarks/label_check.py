"""The mask label check at submission (``imaging.labels.validate_mask``): before and after, on one BraTS-sized mask.

Before: ``np.bincount(np.asarray(data, dtype=np.int64).ravel())`` (an int64 copy in C order of a Fortran-ordered
array). After: ``label_counts`` (one comparison pass per label on the stored bytes). Prints milliseconds side by side
and checks both count the same. Run: ``.venv/bin/python benchmarks/label_check.py``.
"""

from __future__ import annotations

import time

import numpy as np

from tumorsynth.imaging.examples import example_mask
from tumorsynth.imaging.labels import label_counts


def before(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    counts = np.bincount(np.asarray(data, dtype=np.int64).ravel(), minlength=6)
    return np.flatnonzero(counts), counts


def best_ms(fn, data, repeat: int = 15) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn(data)
        times.append(time.perf_counter() - t)
    return 1000 * min(times)


def main() -> None:
    mask = np.asfortranarray(example_mask().astype(np.uint8))  # 240×240×155, as nibabel hands it over
    print(f"mask {mask.shape} {mask.dtype}, Fortran order: {mask.flags.f_contiguous}")
    print(f"{'data':22} {'before ms':>10} {'after ms':>10} {'ratio':>7}")
    for name, data in (
        ("uint8", mask),
        ("float32", np.asfortranarray(mask.astype(np.float32))),
        ("int16", np.asfortranarray(mask.astype(np.int16))),
    ):
        hi = int(data.max())
        a, b = before(data), label_counts(data, hi)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1][: len(b[1])], b[1][: len(a[1])])
        t0, t1 = best_ms(before, data), best_ms(lambda d: label_counts(d, hi), data)
        print(f"{name:22} {t0:10.2f} {t1:10.2f} {t0 / t1:6.1f}x")


if __name__ == "__main__":
    main()
