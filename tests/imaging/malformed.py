"""A corpus of malformed uploads, each with the status the service must answer.

Built with nibabel and raw byte edits, independent of the service's reader. Statuses assume the limits in
``CORPUS_LIMITS`` (the API tests configure the service with them).
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import struct
import zlib

import nibabel as nib
import numpy as np

from tumorsynth.imaging.nifti import VolumeLimits

CORPUS_LIMITS = VolumeLimits(
    max_file_bytes=4 * 1024**2, max_decompressed_bytes=32 * 1024**2, max_dim=1024, max_voxels=64 * 1024**2
)

SHAPE = (24, 20, 16)


def _mask(shape=SHAPE, dtype=np.uint8) -> np.ndarray:
    m = np.zeros(shape, dtype)
    m[8:14, 6:12, 5:10] = 2
    m[9:13, 7:11, 6:9] = 3
    m[10:12, 8:10, 7:8] = 1
    return m


def _img(data, klass=nib.Nifti1Image, affine=None) -> nib.Nifti1Image:
    aff = np.diag([1.2, 1.0, 2.0, 1.0]) if affine is None else affine
    img = klass(data, aff)
    img.set_qform(aff, code=1)
    img.set_sform(aff, code=1)
    return img


def valid_bytes(data=None, klass=nib.Nifti1Image, affine=None) -> bytes:
    return _img(_mask() if data is None else data, klass, affine).to_bytes()


def _patch(raw: bytes, offset: int, fmt: str, *values) -> bytes:
    b = bytearray(raw)
    struct.pack_into("<" + fmt, b, offset, *values)
    return bytes(b)


# NIfTI-1 field offsets (little endian)
DIM, DATATYPE, BITPIX, PIXDIM, VOX_OFFSET, SCL_SLOPE, XYZT_UNITS, QFORM, SFORM, QUATERN, SROW_X, MAGIC = (
    40,
    70,
    72,
    76,
    108,
    112,
    123,
    252,
    254,
    256,
    280,
    344,
)


def _header_only(dims, datatype=2, bitpix=8) -> bytes:
    """A valid NIfTI-1 header for ``dims`` with no data after it."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((1, 1, 1))
    hdr.set_data_dtype(np.uint8)
    raw = bytearray(_img(np.zeros((1, 1, 1), np.uint8)).to_bytes()[:352])
    dim = [len(dims), *dims] + [1] * (7 - len(dims))
    struct.pack_into("<8h", raw, DIM, *dim)
    struct.pack_into("<hh", raw, DATATYPE, datatype, bitpix)
    return bytes(raw)


def _bomb(dims, zeros: int) -> bytes:
    """A header declaring ``dims`` then ``zeros`` zero bytes, gzip-compressed (~1000:1)."""
    c = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    out = [c.compress(_header_only(dims))]
    block = b"\x00" * (1 << 20)
    for _ in range(zeros >> 20):
        out.append(c.compress(block))
    out.append(c.flush())
    return b"".join(out)


def _nifti2_2d() -> bytes:
    return _img(np.ones((8, 8), np.uint8), nib.Nifti2Image).to_bytes()


def corpus() -> list[tuple[str, bytes, int]]:
    """(name, bytes, expected HTTP status) for every malformed case."""
    ok = valid_bytes()
    ok_gz = gzip.compress(ok)
    f32 = valid_bytes(_mask().astype(np.float32))
    cases: list[tuple[str, bytes, int]] = [
        # not NIfTI at all
        ("empty file", b"", 422),
        ("one byte", b"\x00", 422),
        ("plain text", b"hello, this is not an image\n" * 20, 422),
        ("png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 600, 422),
        ("dicom preamble", b"\x00" * 128 + b"DICM" + b"\x00" * 600, 422),
        ("json", b'{"mask": [0, 1, 2]}' + b" " * 600, 422),
        ("zip archive", b"PK\x03\x04" + b"\x00" * 600, 422),
        ("gzip of text", gzip.compress(b"not a nifti at all " * 100), 422),
        ("gzip of nothing", gzip.compress(b""), 422),
        ("gzip magic then garbage", b"\x1f\x8b" + bytes(range(256)) * 4, 422),
        ("analyze 7.5 header", _patch(ok, MAGIC, "4s", b"\x00\x00\x00\x00"), 422),
        ("nifti-1 pair header", _patch(ok, MAGIC, "4s", b"ni1\x00"), 422),
        ("wrong header size", _patch(ok, 0, "i", 349), 422),
        ("header cut short", ok[:200], 422),
        ("nifti-2 header cut short", valid_bytes(klass=nib.Nifti2Image)[:400], 422),
        # truncation and corruption
        ("data truncated", ok[:-500], 422),
        ("gzip truncated", ok_gz[: len(ok_gz) // 2], 422),
        ("gzip trailer missing", ok_gz[:-8], 422),
        ("gzip crc wrong", ok_gz[:-8] + b"\x00\x00\x00\x00" + ok_gz[-4:], 422),
        ("gzip body corrupt", ok_gz[:20] + bytes(b ^ 0xFF for b in ok_gz[20:60]) + ok_gz[60:], 422),
        # dimensions
        ("2D image", valid_bytes(np.ones((16, 16), np.uint8)), 422),
        ("4D series", valid_bytes(np.ones((8, 8, 8, 3), np.uint8)), 422),
        ("nifti-2 2D image", _nifti2_2d(), 422),
        ("dim[0] zero", _patch(ok, DIM, "h", 0), 422),
        ("dim[0] eight", _patch(ok, DIM, "h", 8), 422),
        ("negative dim", _patch(ok, DIM + 2, "h", -24), 422),
        ("zero dim", _patch(ok, DIM + 4, "h", 0), 422),
        ("dim over max_dim", _header_only((2000, 4, 4)), 422),
        ("declared voxels over cap", _header_only((1024, 1024, 1024)), 413),
        ("declared bytes over cap", _header_only((512, 512, 64), datatype=64, bitpix=64), 413),
        ("gzip bomb, huge declared dims", _bomb((1024, 1024, 512), 64 << 20), 413),
        ("gzip bomb, lying small header", _bomb((8, 8, 8), 48 << 20), 422),
        ("header bigger than data", _patch(ok, DIM + 2, "h", 240), 422),
        # voxel types
        ("complex64 voxels", valid_bytes(np.ones(SHAPE, np.complex64)), 422),
        ("rgb24 voxels", _img(np.zeros(SHAPE, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])).to_bytes(), 422),
        ("unknown datatype code", _patch(ok, DATATYPE, "h", 9999), 422),
        ("binary datatype code", _patch(ok, DATATYPE, "h", 1), 422),
        # values
        ("NaN voxel", valid_bytes(np.where(_mask() == 3, np.nan, _mask()).astype(np.float32)), 422),
        ("infinite voxel", valid_bytes(np.where(_mask() == 3, np.inf, _mask()).astype(np.float32)), 422),
        ("infinite scl_slope", _patch(f32, SCL_SLOPE, "f", float("inf")), 422),
        # placement of the data
        ("vox_offset zero", _patch(ok, VOX_OFFSET, "f", 0.0), 422),
        ("vox_offset NaN", _patch(ok, VOX_OFFSET, "f", float("nan")), 422),
        ("vox_offset past the end", _patch(ok, VOX_OFFSET, "f", 1e6), 422),
        ("vox_offset fractional", _patch(ok, VOX_OFFSET, "f", 352.5), 422),
        # orientation
        ("singular sform", _patch(ok, SROW_X, "4f", 0.0, 0.0, 0.0, 0.0), 422),
        ("NaN in sform", _patch(ok, SROW_X, "4f", float("nan"), 0.0, 0.0, 0.0), 422),
        ("zero pixdim, qform only", _patch(_patch(ok, SFORM, "h", 0), PIXDIM + 4, "f", 0.0), 422),
        ("NaN pixdim", _patch(ok, PIXDIM + 4, "f", float("nan")), 422),
        # labels
        ("empty mask", valid_bytes(np.zeros(SHAPE, np.uint8)), 422),
        ("labels 3 and 4 mixed", valid_bytes(np.where(_mask() == 1, 4, _mask()).astype(np.uint8)), 422),
        ("label 5", valid_bytes(np.where(_mask() == 1, 5, _mask()).astype(np.uint8)), 422),
        ("negative label", valid_bytes(np.where(_mask() == 1, -1, _mask()).astype(np.int16)), 422),
        ("fractional labels", valid_bytes((_mask() * 0.5).astype(np.float32)), 422),
        ("0/255 binary mask", valid_bytes((_mask() > 0).astype(np.uint8) * 255), 422),
        ("probability map", valid_bytes(np.random.default_rng(0).random(SHAPE).astype(np.float32)), 422),
    ]
    return cases + _header_lies(ok) + _compression_failures(ok, ok_gz)


def _header_lies(ok: bytes) -> list[tuple[str, bytes, int]]:
    """Fields that disagree with the data or with each other, which nibabel would read or "fix" silently."""
    no_sform = _patch(ok, SFORM, "h", 0)
    i16 = valid_bytes(_mask().astype(np.int16))
    nifti2 = valid_bytes(klass=nib.Nifti2Image)
    return [
        ("bitpix contradicts datatype", _patch(ok, BITPIX, "h", 16), 422),
        ("nifti-1 magic with the nifti-2 header size", _patch(ok, 0, "i", 540), 422),
        ("nifti-2 magic with the nifti-1 header size", _patch(nifti2, 0, "i", 348), 422),
        ("nifti-2 pair magic", nifti2[:4] + b"ni2\x00\r\n\x1a\n" + nifti2[12:], 422),
        ("big-endian header size, little-endian fields", struct.pack(">i", 348) + ok[4:], 422),
        ("qform_code 99", _patch(ok, QFORM, "h", 99), 422),
        ("sform_code -1", _patch(ok, SFORM, "h", -1), 422),
        ("impossible quaternion, no sform", _patch(no_sform, QUATERN, "3f", 2.0, 2.0, 2.0), 422),
        ("voxel size 1e30 mm, no sform", _patch(no_sform, PIXDIM + 4, "f", 1e30), 422),
        ("infinite pixdim", _patch(ok, PIXDIM + 4, "f", float("inf")), 422),
        ("infinite sform row", _patch(ok, SROW_X, "4f", float("inf"), 0.0, 0.0, 0.0), 422),
        ("sform voxel size 1e-5 mm", _patch(ok, SROW_X, "4f", 1e-5, 0.0, 0.0, 0.0), 422),
        ("units metres", _patch(ok, XYZT_UNITS, "B", 1), 422),
        ("units micrometres", _patch(ok, XYZT_UNITS, "B", 3), 422),
        ("NaN scl_inter", _patch(i16, SCL_SLOPE + 4, "f", float("nan")), 422),
        ("scl_slope 1e38 on labels", _patch(i16, SCL_SLOPE, "f", 1e38), 422),
        ("negative scl_slope on labels", _patch(i16, SCL_SLOPE, "f", -1.0), 422),
        ("vox_offset negative", _patch(ok, VOX_OFFSET, "f", -352.0), 422),
        ("vox_offset inside the header", _patch(ok, VOX_OFFSET, "f", 100.0), 422),
        ("float128 datatype", _patch(ok, DATATYPE, "h", 1536), 422),
        ("dim[0] 4 with dim[4] 0", _patch(_patch(ok, DIM, "h", 4), DIM + 8, "h", 0), 422),
        ("dim[0] 5 with dim[5] 2", _patch(_patch(ok, DIM, "h", 5), DIM + 10, "h", 2), 422),
        ("nifti-2 negative dim", _patch(nifti2, 16 + 8, "q", -24), 422),
        ("nifti-2 dims over the voxel cap", _patch(nifti2, 16 + 8, "3q", 1024, 1024, 1024), 413),
        ("nifti-2 vox_offset past the end", _patch(nifti2, 168, "q", 10**6), 422),
        ("declares fewer voxels than it holds", _patch(ok, DIM + 6, "h", 8), 422),
    ]


def _compression_failures(ok: bytes, ok_gz: bytes) -> list[tuple[str, bytes, int]]:
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    body = deflate.compress(ok) + deflate.flush()
    fhcrc = b"\x1f\x8b\x08\x02\x00\x00\x00\x00\x00\xff\x00\x00" + body + struct.pack("<II", zlib.crc32(ok), len(ok))
    empties = gzip.compress(b"", mtime=0) * 100_000
    return [
        ("zero-length gzip member then nothing", gzip.compress(b"", mtime=0) * 3, 422),
        ("100,000 empty gzip members", gzip.compress(ok[:352]) + empties + gzip.compress(ok[352:]), 422),
        ("two volumes in two gzip members", ok_gz + ok_gz, 422),
        ("two volumes concatenated, uncompressed", ok + ok, 422),
        ("second gzip member corrupt", ok_gz + gzip.compress(b"x" * 100)[:-8] + b"\x00" * 8, 422),
        ("second gzip member truncated", ok_gz + gzip.compress(ok)[:40], 422),
        ("garbage after the gzip stream", ok_gz + b"garbage!" * 10, 422),
        ("gzip length (ISIZE) wrong", ok_gz[:-4] + struct.pack("<I", 12345), 422),
        ("gzip method not deflate", ok_gz[:2] + b"\x07" + ok_gz[3:], 422),
        ("gzip reserved flag bits", ok_gz[:3] + b"\xe0" + ok_gz[4:], 422),
        ("gzip header crc wrong", fhcrc, 422),
        ("gzip header cut", ok_gz[:10], 422),
        ("gzip inside gzip", gzip.compress(ok_gz), 422),
        ("zlib stream without a gzip header", zlib.compress(ok), 422),
        ("raw deflate stream", body, 422),
        ("bzip2", bz2.compress(ok), 422),
        ("xz", lzma.compress(ok), 422),
        ("zstd frame magic", b"\x28\xb5\x2f\xfd" + ok, 422),
        ("lz4 frame magic", b"\x04\x22\x4d\x18" + ok, 422),
        ("7-zip archive", b"7z\xbc\xaf\x27\x1c" + ok, 422),
    ]


def api_corpus() -> list[tuple[str, bytes, int]]:
    return corpus()


def valid_variants() -> list[tuple[str, bytes, str]]:
    """Uploads that must be accepted, with the label convention the service reports."""
    m = _mask()
    be = _img(m.astype(">i2"))
    be_hdr = be.header.as_byteswapped(">") if be.header.endianness == "<" else be.header
    be_img = nib.Nifti1Image(m.astype(">i2"), be.affine, header=be_hdr)
    scaled = _img(m.astype(np.int16))
    scaled.header.set_slope_inter(1.0, 0.0)
    ok = valid_bytes()
    return [
        ("nifti-1 .nii", valid_bytes(), "brats2023"),
        ("nifti-1 .nii.gz", gzip.compress(valid_bytes()), "brats2023"),
        ("nifti-2 .nii.gz", gzip.compress(valid_bytes(klass=nib.Nifti2Image)), "brats2023"),
        ("big endian int16", be_img.to_bytes(), "brats2023"),
        ("float32 labels", valid_bytes(m.astype(np.float32)), "brats2023"),
        ("brats2019", valid_bytes(np.where(m == 3, 4, m).astype(np.uint8)), "brats2019"),
        ("binary", valid_bytes((m > 0).astype(np.uint8)), "binary"),
        ("trailing singleton 4th dim", valid_bytes(m[..., None]), "brats2023"),
        ("multi-member gzip", gzip.compress(valid_bytes()[:500]) + gzip.compress(valid_bytes()[500:]), "brats2023"),
        (
            "bgzip-style 1 KiB members",
            b"".join(gzip.compress(ok[i : i + 1024]) for i in range(0, len(ok), 1024)),
            "brats2023",
        ),
        ("zero padding after the gzip stream", gzip.compress(ok) + b"\x00" * 512, "brats2023"),
        (
            "NaN scl_slope (no scaling)",
            _patch(valid_bytes(m.astype(np.int16)), SCL_SLOPE, "f", float("nan")),
            "brats2023",
        ),
        ("spatial units unknown", _patch(ok, XYZT_UNITS, "B", 0), "brats2023"),
    ]
