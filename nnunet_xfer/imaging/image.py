"""The validated image: voxel values as stored and where they lie in patient space.

Geometry follows ITK (SimpleITK): physical coordinates are LPS (x to the patient's left, y to
posterior, z to superior), ``spacing``/``origin`` are in ITK's axis order (column, row[, slice])
and ``direction`` is the flat matrix whose column k is the direction of ITK axis k. The voxels
(``array``) are in numpy order: ``(rows, cols)`` or ``(slices, rows, cols)``.

Canonical orientation (:meth:`Image.canonical`, docs/conversion.md#orientation): the in-plane
axes are transposed and flipped so that the column index grows towards the patient's left and
the row index towards posterior (for an axial slice: the radiological view, anterior at the top,
the patient's right on the image's left, as DICOM stores axial CT). The slice axis is never
touched, so a slice index means the same slice before and after.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from nnunet_xfer.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    import SimpleITK as sitk

    from nnunet_xfer.imaging.dicom import DicomSeries


# ---------------------------------------------------------------- a slice's grid (evaluation)
@dataclass(frozen=True)
class Geometry:
    """Where a slice's pixels lie: shape, spacing and, in physical space (mm), the position of
    pixel [0, 0] and the unit directions in which the row and the column index grow."""

    shape: tuple[int, int]
    #: (row, col) pixel size in mm
    spacing: tuple[float, float]
    #: position of pixel [0, 0] (x, y, z) in mm; a 2D file lies at z = 0
    origin: tuple[float, float, float]
    #: direction of growing row index (x, y, z)
    row_axis: tuple[float, float, float]
    #: direction of growing column index (x, y, z)
    col_axis: tuple[float, float, float]
    #: True for a 2D file, which carries no slice position
    planar: bool = False

    @property
    def diagonal_mm(self) -> float:
        """Length of the image's diagonal in mm: no two of its pixels lie further apart."""
        return float(np.hypot(self.shape[0] * self.spacing[0], self.shape[1] * self.spacing[1]))


class Slice(NamedTuple):
    """A 2D array and its grid."""

    array: np.ndarray
    geometry: Geometry


# ---------------------------------------------------------------- orientation
@dataclass(frozen=True)
class Reorientation:
    """How stored in-plane axes become canonical ones: transpose first, then flip."""

    transpose: bool = False
    flip_rows: bool = False
    flip_cols: bool = False

    @property
    def identity(self) -> bool:
        return not (self.transpose or self.flip_rows or self.flip_cols)

    def apply(self, arr: np.ndarray) -> np.ndarray:
        """Stored → canonical, on the last two axes (rows, cols); a view, no copy."""
        if self.transpose:
            arr = np.swapaxes(arr, -1, -2)
        if self.flip_rows:
            arr = arr[..., ::-1, :]
        if self.flip_cols:
            arr = arr[..., ::-1]
        return arr

    def undo(self, arr: np.ndarray) -> np.ndarray:
        """Canonical → stored (the inverse of :meth:`apply`)."""
        if self.flip_cols:
            arr = arr[..., ::-1]
        if self.flip_rows:
            arr = arr[..., ::-1, :]
        if self.transpose:
            arr = np.swapaxes(arr, -1, -2)
        return arr


def reorientation(col_dir, row_dir) -> Reorientation:
    """The :class:`Reorientation` that makes the column index grow along the lower physical axis
    (x for an axial slice) and the row index along the other one, both towards positive LPS.

    ``col_dir`` / ``row_dir``: the physical directions (x, y, z) in which the stored column and
    row index grow.
    """
    c, r = np.asarray(col_dir, float), np.asarray(row_dir, float)
    a, b = max(((i, j) for i in range(3) for j in range(3) if i != j),
               key=lambda ij: abs(c[ij[0]]) + abs(r[ij[1]]))
    transpose = a > b
    if transpose:
        c, r, a, b = r, c, b, a
    return Reorientation(transpose, flip_rows=bool(r[b] < 0), flip_cols=bool(c[a] < 0))


# ---------------------------------------------------------------- content fingerprint
def fingerprint(values: np.ndarray) -> str:
    """sha256 of an array's shape (axes of length 1 dropped) and voxel *values*.

    Independent of the stored type: int16 100, uint8 100 and float32 100.0 give one fingerprint
    (integral values are hashed as int64, others as float64, -0.0 as 0).
    """
    arr = np.asarray(values)
    arr = arr.reshape([n for n in arr.shape if n != 1])
    h = hashlib.sha256(f"nnunet_xfer.fingerprint/1 {tuple(arr.shape)}".encode())
    if arr.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            integral = bool(np.all(np.isfinite(arr)) and np.all(np.mod(arr, 1) == 0)
                            and (arr.size == 0 or np.abs(arr).max() < 2.0 ** 53))
    else:
        integral = True
    h.update(b"i" if integral else b"f")
    rows = arr.reshape(-1, arr.shape[-1]) if arr.ndim > 1 else arr.reshape(1, -1)
    step = max(1, (1 << 22) // max(rows.shape[1], 1))  # about 32 MB at a time
    for start in range(0, rows.shape[0], step):
        chunk = rows[start:start + step]
        data = chunk.astype("<i8") if integral else chunk.astype("<f8") + 0.0
        h.update(np.ascontiguousarray(data).tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------- the image
@dataclass(eq=False)
class Image:
    """A validated image (:func:`nnunet_xfer.imaging.read_image` / ``read_mask`` make them)."""

    path: Path
    #: voxel values as stored (DICOM: rescaled to HU); numpy order
    array: np.ndarray
    #: ITK order (col, row[, slice]), mm
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    #: flat ITK direction matrix; column k is the direction of ITK axis k
    direction: tuple[float, ...]
    #: 'nifti', 'nrrd', 'metaimage', 'dicom', 'png', 'npy'
    format: str
    #: False for PNG/NPY arrays: their spacing, origin and direction are placeholders
    geometry_known: bool = True
    #: DICOM input: the series' files and headers (pixel data not decoded)
    dicom: "DicomSeries | None" = None
    #: for a slice cut from a volume: the volume's position of its pixel [0, 0] and its 3x3
    #: direction (so the slice keeps its place in 3D)
    world: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    #: a 2D file's own statement of where its one slice lies and how thick it is (a NIfTI header's
    #: z offset and third pixdim): (z mm or None, thickness mm or None)
    plane_header: tuple[float | None, float | None] = (None, None)
    _fingerprint: str | None = field(default=None, repr=False)

    @classmethod
    def from_sitk(cls, img: "sitk.Image", path: Path, format: str = "sitk", **extra) -> "Image":
        """An image of a SimpleITK image's voxels (copied) and geometry, e.g. one a tool wrote."""
        import SimpleITK as sitk
        return cls(Path(path), sitk.GetArrayFromImage(img), _floats(img.GetSpacing()),
                   _floats(img.GetOrigin()), _floats(img.GetDirection()), format, **extra)

    # ------------------------------------------------------------ shape
    @property
    def dimension(self) -> int:
        return self.array.ndim

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    @property
    def n_slices(self) -> int:
        """Slices along the third axis (1 for a 2D image)."""
        return self.array.shape[0] if self.array.ndim == 3 else 1

    @property
    def is_volume(self) -> bool:
        """A 3D image with more than one slice (a slice must then be chosen)."""
        return self.n_slices > 1

    # ------------------------------------------------------------ 3D frame
    def axes3(self) -> np.ndarray:
        """3x3 matrix whose columns are the physical directions of ITK axes 0, 1, 2."""
        if self.world is not None:
            return np.asarray(self.world[1], float).reshape(3, 3)
        d = np.asarray(self.direction, float).reshape(self.dimension, self.dimension)
        if self.dimension == 3:
            return d
        out = np.eye(3)
        out[:2, :2] = d
        return out

    def origin3(self) -> np.ndarray:
        """Position (mm) of voxel [0, 0(, 0)] in 3D (a 2D file lies at z = 0)."""
        if self.world is not None:
            return np.asarray(self.world[0], float)
        return np.asarray(list(self.origin) + [0.0] * (3 - len(self.origin)), float)

    def spacing3(self) -> np.ndarray:
        return np.asarray(list(self.spacing) + [1.0] * (3 - len(self.spacing)), float)

    # ------------------------------------------------------------ slices
    def check_index(self, index: int, case: str | None = None) -> int:
        """``index`` when it is a slice of this image; UserError naming the file otherwise."""
        n = self.n_slices
        if not 0 <= int(index) < n:
            raise UserError(f"{_case(case)}slice_index {index} is out of range for {self.path}, "
                            f"which has {n} slices (valid 0..{n - 1})")
        return int(index)

    def position_of(self, index: int) -> np.ndarray:
        """Position (mm, LPS) of voxel [0, 0] of slice ``index`` (a 2D image: its origin)."""
        return self.origin3() + int(index) * self.spacing3()[2] * self.axes3()[:, 2]

    def z_mm(self, index: int = 0) -> float | None:
        """Position along the patient's z axis (mm, LPS: towards the head) of slice ``index``
        (a 2D image: what its file states, else None)."""
        if not self.geometry_known:
            return None
        if self.dimension == 2 and self.world is None:
            return self.plane_header[0]
        return float(self.position_of(index)[2]) + 0.0

    def thickness_mm(self) -> float | None:
        """Slice spacing of a 3D image (one slice: the thickness its header states); a 2D image:
        the thickness its file states, else None. DICOM's own SliceThickness is in the header."""
        if not self.geometry_known:
            return None
        if self.dimension == 3:
            return float(self.spacing[2])
        return self.plane_header[1]

    def index_at(self, position, tolerance: float | None = None) -> int | None:
        """The slice whose voxel [0, 0] lies at ``position`` (mm), if any (within ``tolerance``,
        default 1 % of the slice spacing)."""
        if position is None:
            return None
        step = self.spacing3()[2] * self.axes3()[:, 2]
        offset = np.asarray(position, float) - self.origin3()
        k = int(round(float(offset @ step) / float(step @ step)))
        tol = 0.01 * self.spacing3()[2] + 1e-3 if tolerance is None else tolerance
        if 0 <= k < self.n_slices and np.allclose(offset, k * step, atol=tol):
            return k
        return None

    def slice(self, index: int) -> "Image":
        """Slice ``index`` (numpy ``array[index]``) as a 2D image (a 2D image: itself).

        Values are kept bit for bit; the 2D geometry is what SimpleITK's ``Extract`` with
        ``DIRECTIONCOLLAPSETOGUESS`` gives (in-plane spacing, (x, y) of the slice's position, the
        in-plane block of the direction, or identity when that block is singular); the 3D
        position and direction are kept in :attr:`world`.
        """
        if self.dimension == 2:
            return self
        index = self.check_index(index)
        axes = self.axes3()
        position = self.origin3() + index * self.spacing[2] * axes[:, 2]
        block = axes[:2, :2]
        direction2 = block if abs(np.linalg.det(block)) > 1e-6 else np.eye(2)
        return Image(self.path, self.array[index], tuple(self.spacing[:2]),
                     _floats(position[:2]), _floats(direction2.ravel()), self.format,
                     self.geometry_known, self.dicom,
                     world=(_floats(position), _floats(axes.ravel())))

    def plane(self, case: str | None = None) -> Slice:
        """The image as one 2D slice and its :class:`Geometry`: a 2D image, or a 3D image of which
        exactly one axis has length 1 (nnU-Net's ``(1, rows, cols)``)."""
        arr = self.array
        if arr.ndim == 3:
            keep = [ax for ax in range(3) if arr.shape[ax] != 1]
            if len(keep) != 2:
                raise UserError(f"{_case(case)}{self.path}: is a 3D image of shape {arr.shape}; give "
                                "one slice (convert the volume with `nnunet-xfer convert` first)")
            arr = arr.reshape(arr.shape[keep[0]], arr.shape[keep[1]])
        else:
            keep = [0, 1]
        dim = self.dimension
        axes = self.axes3()
        itk_axes = [dim - 1 - a for a in keep]  # numpy axis a is ITK axis dim-1-a
        spacing = self.spacing3()
        geometry = Geometry(
            shape=(int(arr.shape[0]), int(arr.shape[1])),
            spacing=(float(spacing[itk_axes[0]]), float(spacing[itk_axes[1]])),
            origin=tuple(float(v) for v in self.origin3()),
            row_axis=tuple(float(v) for v in axes[:, itk_axes[0]]),
            col_axis=tuple(float(v) for v in axes[:, itk_axes[1]]),
            planar=dim == 2 and self.world is None)
        return Slice(arr, geometry)

    # ------------------------------------------------------------ orientation
    def reorientation(self) -> Reorientation:
        """What :meth:`canonical` does to this image's in-plane axes."""
        axes = self.axes3()
        return reorientation(axes[:, 0], axes[:, 1])

    def canonical(self) -> tuple["Image", Reorientation]:
        """This image in canonical orientation (module doc), and how to get back.

        The same voxels at the same physical places: only the order of rows and columns (and the
        geometry describing it) changes. An image without geometry (PNG/NPY) is returned as is.
        """
        turn = self.reorientation() if self.geometry_known else Reorientation()
        if turn.identity:
            return self, turn
        axes = self.axes3().copy()
        spacing = self.spacing3().copy()
        origin = self.origin3().copy()
        if turn.transpose:
            axes[:, [0, 1]] = axes[:, [1, 0]]
            spacing[[0, 1]] = spacing[[1, 0]]
        arr = turn.apply(self.array)
        rows, cols = arr.shape[-2:]
        if turn.flip_cols:
            origin = origin + (cols - 1) * spacing[0] * axes[:, 0]
            axes[:, 0] = -axes[:, 0]
        if turn.flip_rows:
            origin = origin + (rows - 1) * spacing[1] * axes[:, 1]
            axes[:, 1] = -axes[:, 1]
        dim = self.dimension
        world = None
        if dim == 3:
            direction = axes.ravel()
            origin_out = origin
        else:
            block = axes[:2, :2]
            direction = (block if abs(np.linalg.det(block)) > 1e-6 else np.eye(2)).ravel()
            origin_out = origin[:2]
            if self.world is not None:
                world = (_floats(origin), _floats(axes.ravel()))
        out = Image(self.path, np.ascontiguousarray(arr), _floats(spacing[:dim]),
                    _floats(origin_out), _floats(direction),
                    self.format, self.geometry_known, self.dicom, world=world,
                    plane_header=self.plane_header)
        return out, turn

    # ------------------------------------------------------------ identity
    def fingerprint(self) -> str:
        """Content fingerprint of the canonical voxels (:func:`fingerprint`): equal for the same
        values in another type, format or storage order."""
        if self._fingerprint is None:
            self._fingerprint = fingerprint(self.canonical()[0].array)
        return self._fingerprint

    # ------------------------------------------------------------ SimpleITK
    def to_sitk(self, values: np.ndarray | None = None) -> "sitk.Image":
        """A SimpleITK image of ``values`` (default: the voxels) with this image's geometry."""
        import SimpleITK as sitk
        arr = self.array if values is None else np.asarray(values)
        img = sitk.GetImageFromArray(np.ascontiguousarray(arr))
        img.SetSpacing([float(s) for s in self.spacing])
        img.SetOrigin([float(v) for v in self.origin])
        img.SetDirection([float(v) for v in self.direction])
        return img


def _floats(values) -> tuple[float, ...]:
    """Plain floats, without negative zeros."""
    return tuple(float(v) + 0.0 for v in values)


def _case(case: str | None) -> str:
    return f"case {case}: " if case else ""
