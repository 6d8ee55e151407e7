"""Do two images lie on one grid? The image/mask pair check of every command.

:func:`check_pair` compares two :class:`~nnunet_xfer.imaging.image.Image` objects (size,
spacing, origin, direction; a PNG/NPY mask, which has no geometry, by its shape only).
:func:`check_geometry` compares two slice grids (:class:`~nnunet_xfer.imaging.image.Geometry`)
and knows that a 2D file carries no slice position.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from nnunet_xfer.errors import UserError
from nnunet_xfer.imaging.image import Geometry, Image

#: Relative tolerance when comparing spacings.
SPACING_RTOL = 1e-4
#: Tolerance of the first pixel's position, as a fraction of the smallest pixel spacing.
ORIGIN_TOL_PIXELS = 0.01
#: Tolerance of the direction cosines of rows and columns.
DIRECTION_ATOL = 1e-4


def _case(case: str | None) -> str:
    return f"case {case}: " if case else ""


def same_geometry(a: Image, b: Image) -> str | None:
    """None when ``a`` and ``b`` share size, spacing, origin and direction; else what differs."""
    if a.dimension != b.dimension or a.shape != b.shape:
        return f"size {tuple(reversed(a.shape))} vs {tuple(reversed(b.shape))}"
    sa, sb = np.array(a.spacing), np.array(b.spacing)
    if not np.allclose(sa, sb, rtol=SPACING_RTOL, atol=1e-6):
        return f"spacing {tuple(sa)} vs {tuple(sb)}"
    tolerance = ORIGIN_TOL_PIXELS * float(sa.min()) + 1e-4
    planar = _planar(a) or _planar(b)  # a 2D file carries no slice position
    oa, ob = a.origin3(), b.origin3()
    if planar:
        oa, ob = oa[:2], ob[:2]
    if not np.allclose(oa, ob, rtol=0, atol=tolerance):
        shift = float(np.linalg.norm(np.subtract(ob, oa)))
        return f"origin {_fmt(a.origin)} vs {_fmt(b.origin)}, {shift:.3g} mm apart"
    columns = slice(0, 2) if a.dimension == 2 else slice(0, 3)
    if not np.allclose(a.axes3()[:, columns], b.axes3()[:, columns], rtol=0, atol=DIRECTION_ATOL):
        return f"direction {_fmt(a.direction)} vs {_fmt(b.direction)}"
    return None


def _planar(image: Image) -> bool:
    return image.dimension == 2 and image.world is None


def check_pair(image: Image, other: Image, case: str | None = None, what: str = "mask") -> None:
    """Refuse ``other`` (a mask or label map of ``image``) when it lies on another grid.

    A PNG/NPY array carries no geometry: only its shape is compared, and it takes the image's.
    """
    if not other.geometry_known:
        if other.shape != image.shape[-2:] or other.dimension != 2:
            raise UserError(f"{_case(case)}{what} {other.path} has shape {other.shape} but the "
                            f"image slice is {image.shape[-2:]} (rows x columns); use the slice's "
                            f"shape")
        return
    diff = same_geometry(image, other)
    if diff is not None:
        raise UserError(f"{_case(case)}{what} {other.path} does not match image {image.path} "
                        f"({diff}); the {what} must have the image's geometry")


def check_same_geometry(a_spacing: tuple[float, float], a_shape: tuple[int, ...],
                        b_spacing: tuple[float, float], b_shape: tuple[int, ...],
                        case: str) -> None:
    """UserError naming ``case`` when two slices differ in shape or (row, col) spacing."""
    if tuple(a_shape) != tuple(b_shape):
        raise UserError(f"case {case}: shape {tuple(b_shape)} differs from its reference "
                        f"{tuple(a_shape)}; resample it onto the reference grid")
    a0, a1 = (float(s) for s in a_spacing)
    b0, b1 = (float(s) for s in b_spacing)
    if abs(a0 - b0) > SPACING_RTOL * abs(b0) or abs(a1 - b1) > SPACING_RTOL * abs(b1):
        raise UserError(f"case {case}: spacing {(round(b0, 6), round(b1, 6))} mm differs "
                        f"from its reference {(round(a0, 6), round(a1, 6))} mm;"
                        " resample it onto the reference grid")


def _fmt(v) -> str:
    return "(" + ", ".join(f"{x:.3g}" for x in v) + ")"


def check_geometry(reference: Geometry, other: Geometry, case: str) -> None:
    """UserError naming ``case`` when ``other`` does not lie on ``reference``'s grid.

    Compared: shape, spacing, the directions of rows and columns, and the position of pixel [0, 0]
    (within :data:`ORIGIN_TOL_PIXELS` of a pixel). When either file is 2D only the in-plane offset
    counts, since a 2D file carries no slice position.
    """
    check_same_geometry(reference.spacing, reference.shape, other.spacing, other.shape, case)
    for name, a, b in (("row", reference.row_axis, other.row_axis),
                       ("column", reference.col_axis, other.col_axis)):
        if max(abs(x - y) for x, y in zip(a, b)) > DIRECTION_ATOL:
            raise UserError(f"case {case}: {name} direction {_fmt(b)} differs from its reference "
                            f"{_fmt(a)}; resample it onto the reference grid")
    shift = np.subtract(other.origin, reference.origin)
    if reference.planar or other.planar:
        shift = np.array([shift @ np.asarray(reference.row_axis),
                          shift @ np.asarray(reference.col_axis)])
    tolerance = ORIGIN_TOL_PIXELS * min(reference.spacing)
    if np.abs(shift).max() > tolerance:
        raise UserError(f"case {case}: origin {_fmt(other.origin)} mm lies "
                        f"{float(np.linalg.norm(shift)):.3g} mm from its reference's "
                        f"{_fmt(reference.origin)} mm (another grid position); "
                        "resample it onto the reference grid")


def check_path_pair(reference: Geometry, other: Geometry, case: str, path: Path,
                    what: str) -> None:
    """:func:`check_geometry`, its message prefixed with what ``path`` is (``prediction P of``)."""
    try:
        check_geometry(reference, other, case)
    except UserError as e:
        raise UserError(f"{what} {path} of {e}") from None
