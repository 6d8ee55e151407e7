"""NIfTI files read whole: the package's one NIfTI header parser.

SimpleITK reads a ``.nii`` that ends before its voxel data does, and a ``.nii.gz`` cut short,
without complaint (the missing voxels come back as zeros), turns NaN and inf into 0, and replaces
a zero, negative or NaN ``pixdim`` by 1 mm or a flipped axis. So the file is read here: the whole
(decompressed) payload, its gzip checksum, its length against what the header promises, and its
voxels decoded directly from the bytes (values as stored, NaN kept; ``scl_slope``/``scl_inter``
applied as ITK applies them). Only the geometry (spacing, origin, direction from qform/sform) is
taken from ITK, which reads it from the header alone; it is remembered per header, so files that
share a header (every prediction of a case) cost one decompression and one ``frombuffer``.
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import SimpleITK as sitk

from nnunet_xfer.errors import UserError

#: NIfTI datatype code → numpy type (byte order added from the header).
_DTYPES = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 64: "f8", 256: "i1", 512: "u2", 768: "u4",
           1024: "i8", 1280: "u8"}
#: RGB24 and RGBA32: values per voxel.
_CHANNELS = {128: 3, 2304: 4}
_GZIP_MAGIC = b"\x1f\x8b"
#: Headers whose geometry was read (bounded: a long-running process sees many cases).
_MAX_REMEMBERED = 4096


@dataclass(frozen=True)
class NiftiHeader:
    """The fields of a NIfTI-1 or NIfTI-2 header that say how the voxels are stored."""

    #: 348 (NIfTI-1) or 540 (NIfTI-2): also the number of header bytes
    size: int
    #: '<' or '>'
    endian: str
    #: dim[1..dim[0]]: voxels along each axis
    dims: tuple[int, ...]
    datatype: int
    bitpix: int
    #: pixdim[1..dim[0]]: the voxel size along each axis as written (mm for space)
    pixdim: tuple[float, ...]
    vox_offset: int
    slope: float
    inter: float
    #: pixdim[3] as written, also for a 2D file (its slice thickness, if the writer stated one)
    pixdim3: float = float("nan")
    #: z (mm, LPS = RAS) of voxel [0, 0, 0] by the sform, else the qform (NaN: neither is set)
    z_offset: float = float("nan")

    @property
    def n_voxels(self) -> int:
        return int(np.prod(self.dims, dtype=np.int64)) if self.dims else 0

    @property
    def payload_end(self) -> int:
        """The byte after the last voxel (the file must be at least this long)."""
        return self.vox_offset + self.n_voxels * max(self.bitpix, 0) // 8

    @property
    def dtype(self) -> np.dtype | None:
        """The stored voxel type, None when it is not a plain scalar type (RGB, complex, bits)."""
        code = _DTYPES.get(self.datatype)
        return None if code is None else np.dtype(self.endian + code)

    @property
    def components(self) -> int:
        """Values per voxel: 3/4 for RGB(A) types, dim[5] for a vector image (dim[4] = 1, as ITK
        writes colour), else 1."""
        if self.datatype in _CHANNELS:
            return _CHANNELS[self.datatype]
        if len(self.dims) >= 5 and self.dims[3] == 1 and self.dims[4] > 1:
            return self.dims[4]
        return 1

    @property
    def scaled(self) -> bool:
        """Whether values are ``stored × scl_slope + scl_inter`` (a slope of 0 or NaN: no)."""
        return (np.isfinite(self.slope) and self.slope != 0
                and (self.slope != 1 or (np.isfinite(self.inter) and self.inter != 0)))

    @property
    def spatial_pixdim(self) -> tuple[float, ...]:
        """pixdim of the (up to three) spatial axes."""
        return self.pixdim[:3]


def parse_header(raw: bytes) -> NiftiHeader | None:
    """The header at the start of ``raw``; None when it is no NIfTI-1/NIfTI-2 header."""
    for endian in ("<", ">"):
        if len(raw) >= 348 and struct.unpack(endian + "i", raw[:4])[0] == 348:
            ndim = struct.unpack(endian + "h", raw[40:42])[0]
            if not 1 <= ndim <= 7:
                return None
            dims = struct.unpack(endian + "7h", raw[42:56])[:ndim]
            datatype, bitpix = struct.unpack(endian + "2h", raw[70:74])
            all_pixdim = struct.unpack(endian + "7f", raw[80:108])
            offset, slope, inter = struct.unpack(endian + "3f", raw[108:120])
            qform, sform = struct.unpack(endian + "2h", raw[252:256])
            z = (struct.unpack(endian + "f", raw[324:328])[0] if sform > 0 else
                 struct.unpack(endian + "f", raw[276:280])[0] if qform > 0 else float("nan"))
            return NiftiHeader(348, endian, tuple(dims), datatype, bitpix, all_pixdim[:ndim],
                               int(offset) if np.isfinite(offset) else -1, slope, inter,
                               all_pixdim[2], z)
        if len(raw) >= 540 and struct.unpack(endian + "i", raw[:4])[0] == 540:
            datatype, bitpix = struct.unpack(endian + "2h", raw[12:16])
            dim = struct.unpack(endian + "8q", raw[16:80])
            if not 1 <= dim[0] <= 7:
                return None
            pixdim = struct.unpack(endian + "8d", raw[104:168])
            offset = struct.unpack(endian + "q", raw[168:176])[0]
            slope, inter = struct.unpack(endian + "2d", raw[176:192])
            qform, sform = struct.unpack(endian + "2i", raw[344:352])
            z = (struct.unpack(endian + "d", raw[488:496])[0] if sform > 0 else
                 struct.unpack(endian + "d", raw[392:400])[0] if qform > 0 else float("nan"))
            return NiftiHeader(540, endian, tuple(dim[1:dim[0] + 1]), datatype, bitpix,
                               tuple(pixdim[1:dim[0] + 1]), int(offset), slope, inter,
                               pixdim[3], z)
    return None


def damaged(path: Path, why: str = "it ends before its image data does") -> UserError:
    """The one refusal of a truncated or corrupt file."""
    return UserError(f"{path}: is truncated or damaged ({why}); write it again")


def file_bytes(path: Path) -> bytes:
    """The whole file, decompressed when it is gzip (every member, checksums verified)."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e})") from None
    if not data.startswith(_GZIP_MAGIC):
        return data
    parts = []
    while data.startswith(_GZIP_MAGIC):
        inflate = zlib.decompressobj(31)
        try:
            parts.append(inflate.decompress(data))
        except zlib.error as e:
            raise damaged(path, f"gzip: {e}") from None
        if not inflate.eof:
            raise damaged(path, "its gzip stream ends early")
        data = inflate.unused_data
    return b"".join(parts)


class ItkInfo(NamedTuple):
    """What ITK reads from a NIfTI header: the image's dimension and geometry."""

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]
    components: int


_remembered: dict[bytes, ItkInfo] = {}


def itk_info(path: Path, header_bytes: bytes) -> ItkInfo:
    """ITK's reading of the header (size, spacing, origin, direction), remembered per header."""
    info = _remembered.get(header_bytes)
    if info is not None:
        return info
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.SetImageIO("NiftiImageIO")
    warnings = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # our one-line errors say what failed
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
        raise UserError(f"{path}: cannot read ({lines[-1] if lines else 'unknown error'})") from None
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warnings)
    info = ItkInfo(tuple(reader.GetSize()), tuple(reader.GetSpacing()), tuple(reader.GetOrigin()),
                   tuple(reader.GetDirection()), reader.GetNumberOfComponents())
    if len(_remembered) >= _MAX_REMEMBERED:
        _remembered.clear()
    _remembered[header_bytes] = info
    return info


class NiftiRead(NamedTuple):
    """A NIfTI file read whole: its header, ITK's geometry, and the voxels (None: ITK must
    decode them, e.g. RGB or complex data)."""

    header: NiftiHeader
    info: ItkInfo
    array: np.ndarray | None


def read_payload(path: Path) -> tuple[NiftiHeader, bytes]:
    """The header and the whole (decompressed) file; UserError for a truncated, corrupt or
    foreign file."""
    raw = file_bytes(path)
    header = parse_header(raw)
    if header is None:
        raise UserError(f"{path}: is not a NIfTI file (no NIfTI-1/-2 header); check the file")
    if header.vox_offset < header.size or header.bitpix <= 0 or min(header.dims, default=0) < 1:
        raise damaged(path, "its header is inconsistent")
    if len(raw) < header.payload_end:
        raise damaged(path, f"{len(raw) - header.vox_offset} of "
                            f"{header.payload_end - header.vox_offset} bytes of image data")
    return header, raw


def decode(path: Path, header: NiftiHeader, raw: bytes) -> NiftiRead:
    """The voxels of a payload read by :func:`read_payload`, with ITK's geometry."""
    info = itk_info(path, raw[:header.size])
    dtype = header.dtype
    if dtype is None or info.components != 1 or int(np.prod(info.size)) != header.n_voxels:
        return NiftiRead(header, info, None)
    arr = np.frombuffer(raw, dtype=dtype, count=header.n_voxels, offset=header.vox_offset)
    arr = arr.reshape(tuple(reversed(info.size)))
    if header.scaled:
        out = np.float64 if dtype.kind == "f" and dtype.itemsize == 8 else np.float32
        inter = header.inter if np.isfinite(header.inter) else 0.0
        arr = arr.astype(out) * out(header.slope) + out(inter)
    elif not dtype.isnative:
        arr = arr.astype(dtype.newbyteorder("="))
    else:
        arr = arr.copy()  # writable, and free of the (large) decompressed buffer
    return NiftiRead(header, info, arr)
