"""The list of cases to convert: a manifest CSV, or image and mask folders matched by file name.

Manifest columns (docs/conversion.md): ``case_id,image,mask`` required; optional ``slice_index``
or ``instance_number`` (DICOM) or ``vertebra_mask`` + ``vertebra_label``, ``series_uid`` (which
series of a DICOM study folder), ``height_m``, ``sex``, ``weight_kg``, ``observer``. Relative
paths are relative to the CSV's folder.

``convert`` refuses a manifest with any bad row; ``measure`` (``per_row=True``) gets each bad row
as a :class:`BadRow` in its place and measures the others.
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
    #: DICOM InstanceNumber of the slice (instead of ``slice_index``)
    instance_number: int | None = None
    #: SeriesInstanceUID of the series to read from a folder holding several
    series_uid: str | None = None


@dataclass
class BadRow:
    """A manifest row that is not a case: its case id as written, its image cell and why."""

    case_id: str
    image: str
    message: str


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


def case_id_problems(case_ids: list[str], where: str) -> dict[int, str]:
    """Why each unsafe, repeated or clashing case id (by its position) cannot name files; the
    first of two clashing ids is kept."""
    problems: dict[int, str] = {}
    seen: dict[str, int] = {}
    folded: dict[str, str] = {}
    for i, cid in enumerate(case_ids):
        if not SAFE_CASE_ID.match(cid):
            problems[i] = (f"case_id {cid!r} in {where} is not a safe file name; use letters, "
                           f"digits, '.', '_' and '-' only (no path separators, no leading dot)")
        elif cid in seen:
            problems[i] = (f"case_id {cid!r} occurs more than once in {where}; case ids must be "
                           f"unique")
        elif cid.lower() in folded:
            problems[i] = (f"case ids {folded[cid.lower()]!r} and {cid!r} in {where} differ only in "
                           f"upper/lower case, so they name one file on Windows and macOS; "
                           f"rename one")
        else:
            seen[cid] = i
            folded[cid.lower()] = cid
    for cid, i in sorted(seen.items()):
        channel = channel_of(cid)
        if channel and channel[0] in seen:
            problems[i] = (f"case ids {channel[0]!r} and {cid!r} in {where} clash: {cid!r} "
                           f"reads as case {channel[0]!r}'s channel file name "
                           f"(nnU-Net's {image_file('<case>', ending='')}); rename one")
    return problems


def check_case_ids(case_ids: list[str], where: str) -> None:
    """Refuse unsafe, duplicate or clashing case ids (they become file names)."""
    problems = case_id_problems(case_ids, where)
    if problems:
        raise UserError(problems[min(problems)])


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


def _read_table(csv_path: Path, required: tuple[str, ...]) -> pd.DataFrame:
    """The manifest as a table of strings; UserError when it is not a readable CSV with the
    required columns and at least one row."""
    text = _manifest_text(csv_path)
    try:
        df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except Exception as e:
        raise UserError(f"cannot read case manifest {csv_path} ({type(e).__name__}: "
                        f"{str(e).strip().splitlines()[-1][:120] if str(e).strip() else ''}); "
                        f"it must be a CSV with columns {','.join(required)}") from None
    df.columns = [c.strip() for c in df.columns]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise UserError(f"case manifest {csv_path} lacks column(s) {', '.join(missing)}; "
                        f"required: {','.join(required)}")
    if df.empty:
        raise UserError(f"case manifest {csv_path} lists no cases")
    return df


def _spec(row: dict, cid: str, required: tuple[str, ...], base: Path, csv_path: Path) -> CaseSpec:
    """One row as a :class:`CaseSpec`; UserError naming the case for a bad value."""
    def path_of(value) -> Path | None:
        return None if _blank(value) else (base / str(value).strip())

    for col in required[1:]:
        if _blank(row[col]):
            raise UserError(f"case {cid}: the {col} column is empty in {csv_path}")
    vertebra_mask = path_of(row.get("vertebra_mask"))
    vertebra_label = _as_int(row.get("vertebra_label"), "vertebra_label", cid)
    if (vertebra_mask is None) != (vertebra_label is None):
        raise UserError(f"case {cid}: give both vertebra_mask and vertebra_label, or neither")
    return CaseSpec(
        case_id=cid, image=path_of(row["image"]), mask=path_of(row.get("mask")),
        slice_index=_as_int(row.get("slice_index"), "slice_index", cid),
        vertebra_mask=vertebra_mask, vertebra_label=vertebra_label,
        height_m=_as_float(row.get("height_m"), "height_m", cid),
        sex=None if _blank(row.get("sex")) else str(row["sex"]).strip(),
        observer=None if _blank(row.get("observer")) else str(row["observer"]).strip(),
        weight_kg=_as_float(row.get("weight_kg"), "weight_kg", cid),
        instance_number=_as_int(row.get("instance_number"), "instance_number", cid),
        series_uid=None if _blank(row.get("series_uid")) else str(row["series_uid"]).strip())


def read_manifest(csv_path: Path, mask_required: bool = True,
                  per_row: bool = False) -> list[CaseSpec | BadRow]:
    """Parse a case manifest CSV into :class:`CaseSpec` rows (paths resolved against its folder).

    ``mask_required=False`` (``measure --cases``): the mask column may be absent or empty.
    A bad value in a row (an unsafe or repeated case id, a ``slice_index`` that is no integer, …)
    raises :class:`UserError`, or with ``per_row`` becomes a :class:`BadRow` in the row's place.
    A manifest that cannot be read at all (not CSV text, required columns missing, no rows)
    always raises.
    """
    required = REQUIRED_COLUMNS if mask_required else tuple(c for c in REQUIRED_COLUMNS if c != "mask")
    csv_path = Path(csv_path)
    df = _read_table(csv_path, required)
    ids = [str(c).strip() for c in df["case_id"]]
    id_problems = case_id_problems(ids, str(csv_path))
    if id_problems and not per_row:
        raise UserError(id_problems[min(id_problems)])
    base = csv_path.resolve().parent
    specs: list[CaseSpec | BadRow] = []
    for i, (cid, row) in enumerate(zip(ids, df.to_dict("records"))):
        try:
            if i in id_problems:
                raise UserError(id_problems[i])
            specs.append(_spec(row, cid, required, base, csv_path))
        except UserError as e:
            if not per_row:
                raise
            specs.append(BadRow(cid, str(row.get("image", "")).strip(), str(e)))
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
