"""The list of cases to convert: a manifest CSV, or image and mask folders matched by file name.

Manifest columns (docs/conversion.md): ``case_id,image,mask`` required; optional ``slice_index``,
``vertebra_mask`` + ``vertebra_label``, ``height_m``, ``sex``, ``observer``. Relative paths are
relative to the CSV's folder.
"""
from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from nnunet_xfer.errors import UserError
from nnunet_xfer.imaging.names import (ARRAY_ENDINGS, VOLUME_ENDINGS, channel_of, entries_by_case,
                                       image_file)

REQUIRED_COLUMNS = ("case_id", "image", "mask")
#: A case id becomes a file name: letters, digits, ``._-``; no leading dot/dash, no path parts.
SAFE_CASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass
class CaseSpec:
    """One case as the user described it (paths resolved, nothing read yet)."""

    case_id: str
    image: Path
    mask: Path | None
    slice_index: int | None = None
    vertebra_mask: Path | None = None
    vertebra_label: int | None = None
    height_m: float | None = None
    sex: str | None = None
    observer: str | None = None
    weight_kg: float | None = None


def _blank(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() == ""


def _number(value) -> float | None:
    """A manifest cell as a float (NaN when not a number), None when blank."""
    if _blank(value):
        return None
    try:
        return float(value)
    except ValueError:
        return math.nan


def _as_int(value, column: str, case: str) -> int | None:
    f = _number(value)
    if f is not None and (not math.isfinite(f) or f != int(f)):
        raise UserError(f"case {case}: {column} {value!r} is not an integer; fix the manifest")
    return None if f is None else int(f)


def _as_float(value, column: str, case: str) -> float | None:
    f = _number(value)
    if f is not None and (not math.isfinite(f) or f <= 0):
        raise UserError(f"case {case}: {column} {value!r} is not a positive number; fix the manifest")
    return f


def check_case_ids(case_ids: list[str], where: str) -> None:
    """Refuse unsafe, duplicate or clashing case ids (they become file names)."""
    seen: set[str] = set()
    folded: dict[str, str] = {}
    for cid in case_ids:
        if not SAFE_CASE_ID.match(cid):
            raise UserError(f"case_id {cid!r} in {where} is not a safe file name; use letters, digits, "
                            f"'.', '_' and '-' only (no path separators, no leading dot)")
        if cid in seen:
            raise UserError(f"case_id {cid!r} occurs more than once in {where}; case ids must be unique")
        if cid.lower() in folded:
            raise UserError(f"case ids {folded[cid.lower()]!r} and {cid!r} in {where} differ only in "
                            f"upper/lower case, so they name one file on Windows and macOS; "
                            f"rename one")
        seen.add(cid)
        folded[cid.lower()] = cid
    for cid in sorted(seen):
        channel = channel_of(cid)
        if channel and channel[0] in seen:
            raise UserError(f"case ids {channel[0]!r} and {cid!r} in {where} clash: {cid!r} "
                            f"reads as case {channel[0]!r}'s channel file name "
                            f"(nnU-Net's {image_file('<case>', ending='')}); rename one")


def _manifest_text(csv_path: Path) -> str:
    """The manifest as text: UTF-8 (a byte-order mark is allowed), not empty."""
    if csv_path.is_dir():
        raise UserError(f"case manifest {csv_path} is a folder; give --cases a CSV file (or use "
                        f"--images DIR --masks DIR)")
    if not csv_path.is_file():
        raise UserError(f"case manifest {csv_path} does not exist; give --cases a CSV file")
    try:
        data = csv_path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read case manifest {csv_path}: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"case manifest {csv_path} is not UTF-8 text (byte 0x{data[e.start]:02x} at "
                        f"position {e.start}); save it as CSV UTF-8") from None
    if not text.strip():
        raise UserError(f"case manifest {csv_path} is empty; it needs a header line "
                        f"case_id,image,mask and one line per case")
    if "\x00" in text:
        raise UserError(f"case manifest {csv_path} holds NUL bytes, so it is not a CSV text file; "
                        f"save it as CSV UTF-8")
    return text


def read_manifest(csv_path: Path, mask_required: bool = True) -> list[CaseSpec]:
    """Parse a case manifest CSV into :class:`CaseSpec` rows (paths resolved against its folder).

    ``mask_required=False`` (``measure --cases``): the mask column may be absent or empty.
    """
    required = REQUIRED_COLUMNS if mask_required else tuple(c for c in REQUIRED_COLUMNS if c != "mask")
    csv_path = Path(csv_path)
    text = _manifest_text(csv_path)
    try:
        df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except Exception as e:
        raise UserError(f"cannot read case manifest {csv_path} ({type(e).__name__}: "
                        f"{str(e).strip().splitlines()[-1][:120] if str(e).strip() else ''}); "
                        f"it must be a CSV with columns case_id,image,mask") from None
    df.columns = [c.strip() for c in df.columns]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise UserError(f"case manifest {csv_path} lacks column(s) {', '.join(missing)}; "
                        f"required: {','.join(required)}")
    if df.empty:
        raise UserError(f"case manifest {csv_path} lists no cases")
    check_case_ids([str(c).strip() for c in df["case_id"]], str(csv_path))
    base = csv_path.resolve().parent

    def path_of(value) -> Path | None:
        return None if _blank(value) else (base / str(value).strip())

    specs = []
    for row in df.to_dict("records"):
        cid = str(row["case_id"]).strip()
        for col in required[1:]:
            if _blank(row[col]):
                raise UserError(f"case {cid}: the {col} column is empty in {csv_path}")
        vertebra_mask = path_of(row.get("vertebra_mask"))
        vertebra_label = _as_int(row.get("vertebra_label"), "vertebra_label", cid)
        if (vertebra_mask is None) != (vertebra_label is None):
            raise UserError(f"case {cid}: give both vertebra_mask and vertebra_label, or neither")
        specs.append(CaseSpec(
            case_id=cid, image=path_of(row["image"]), mask=path_of(row.get("mask")),
            slice_index=_as_int(row.get("slice_index"), "slice_index", cid),
            vertebra_mask=vertebra_mask, vertebra_label=vertebra_label,
            height_m=_as_float(row.get("height_m"), "height_m", cid),
            sex=None if _blank(row.get("sex")) else str(row["sex"]).strip(),
            observer=None if _blank(row.get("observer")) else str(row["observer"]).strip(),
            weight_kg=_as_float(row.get("weight_kg"), "weight_kg", cid)))
    return specs


def match_folders(images_dir: Path, masks_dir: Path) -> list[CaseSpec]:
    """Pair ``images_dir`` and ``masks_dir`` entries by file name without ending."""
    for what, folder in (("--images", images_dir), ("--masks", masks_dir)):
        if folder is None or not Path(folder).is_dir():
            raise UserError(f"{what} {folder} is not a folder; give --images DIR --masks DIR")
    images = entries_by_case(Path(images_dir), VOLUME_ENDINGS)
    masks = entries_by_case(Path(masks_dir), VOLUME_ENDINGS + ARRAY_ENDINGS)
    if not images:
        raise UserError(f"--images {images_dir} holds no image files ({', '.join(VOLUME_ENDINGS)} "
                        f"or DICOM series folders)")
    lonely = sorted(set(images) - set(masks))
    if lonely:
        raise UserError(f"no mask in {masks_dir} for image(s) {', '.join(lonely[:5])}"
                        f"{' ...' if len(lonely) > 5 else ''}; masks must have the image's file name")
    extra = sorted(set(masks) - set(images))
    if extra:
        raise UserError(f"no image in {images_dir} for mask(s) {', '.join(extra[:5])}"
                        f"{' ...' if len(extra) > 5 else ''}; remove them or add the images")
    check_case_ids(list(images), str(images_dir))
    return [CaseSpec(case_id=cid, image=images[cid], mask=masks[cid]) for cid in sorted(images)]
