"""Quality control a person can look at: a PNG overlay per case and one self-contained HTML gallery.

The overlay shows the slice in a soft-tissue CT window (level 40, width 400 HU) in radiological
view (the canonical orientation of :mod:`nnunet_xfer.imaging`), the muscle mask's outline, and SMA/SMD in the corner. The gallery inlines every overlay as
a data URI, carries a Content-Security-Policy that forbids any request, sorts by any column
when its header is clicked, and lists the flags of :data:`nnunet_xfer.evaluation.measures.FLAGS`.
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from nnunet_xfer import imaging
from nnunet_xfer.evaluation.measures import FLAGS

#: Soft-tissue window (HU).
WINDOW_LEVEL, WINDOW_WIDTH = 40.0, 400.0
#: The overlay's longer side is scaled to at least this many pixels.
MIN_DISPLAY_PX = 384
OUTLINE_RGB = (255, 40, 40)

#: Gallery columns: (CSV column, header, kind); kind "num" sorts numerically. ``slice_choice``
#: and ``n_flags`` are made from the row (:func:`slice_choice`, the flags).
GALLERY_COLUMNS = (
    ("case_id", "case", "text"), ("sma_cm2", "SMA cm²", "num"), ("smd_hu", "SMD HU", "num"),
    ("imat_cm2", "IMAT cm²", "num"), ("smi_cm2_m2", "SMI cm²/m²", "num"),
    ("sex", "sex", "text"), ("height_m", "height m", "num"), ("bmi_kg_m2", "BMI kg/m²", "num"),
    ("low_smi", "low SMI", "text"), ("smi_cutoff_cm2_m2", "SMI cut-off", "num"),
    ("low_smd", "low SMD", "text"), ("sma_mask_cm2", "SMA whole mask cm²", "num"),
    ("fold_dice_min", "min fold Dice", "num"), ("mask_source", "mask", "text"),
    ("slice_choice", "slice", "text"), ("n_flags", "flags", "num"),
)


def slice_choice(row: dict) -> str:
    """How the case's slice was chosen and which it is, in words: ``vertebra_mask: index 72,
    InstanceNumber 73, z -120.0 mm``."""
    parts = []
    if row.get("slice_index") is not None and not _missing(row.get("slice_index")):
        parts.append(f"index {int(row['slice_index'])}")
    if row.get("instance_number") is not None and not _missing(row.get("instance_number")):
        parts.append(f"InstanceNumber {int(row['instance_number'])}")
    if not _missing(row.get("slice_z_mm")):
        parts.append(f"z {float(row['slice_z_mm']):.1f} mm")
    return f"{row.get('slice_source') or '?'}: {', '.join(parts) or 'the only slice'}"


def _missing(v) -> bool:
    return v is None or v == "" or (isinstance(v, float) and math.isnan(v))


def _outline(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask, bool)
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def overlay_png(slice_image: imaging.Image, mask: np.ndarray, lines: list[str]) -> bytes:
    """PNG bytes: the slice (soft-tissue window), the mask outline in red, ``lines`` in the corner.

    Drawn as the arrays are ordered: give the canonical slice (``Image.canonical``), which is the
    radiological view (patient right on the left, anterior at the top) for an axial slice.
    """
    values = np.asarray(slice_image.array, dtype=np.float64)
    lo = WINDOW_LEVEL - WINDOW_WIDTH / 2
    grey = np.clip((np.nan_to_num(values, nan=lo) - lo) / WINDOW_WIDTH, 0, 1) * 255
    rgb = np.repeat(grey.astype(np.uint8)[..., None], 3, axis=2)
    rgb[_outline(mask)] = OUTLINE_RGB
    rgb = np.ascontiguousarray(rgb)
    sx, sy = slice_image.spacing[:2]
    h, w = rgb.shape[:2]
    width_mm, height_mm = w * sx, h * sy
    # physical aspect; never below the native resolution, at least MIN_DISPLAY_PX on the long side
    scale = max(MIN_DISPLAY_PX / max(width_mm, height_mm), 1.0 / min(sx, sy))
    size = (max(1, round(width_mm * scale)), max(1, round(height_mm * scale)))
    picture = Image.fromarray(rgb, "RGB").resize(size, Image.NEAREST)
    draw = ImageDraw.Draw(picture)
    try:
        font = ImageFont.load_default(size=max(12, size[0] // 32))
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    text = "\n".join(lines)
    box = draw.multiline_textbbox((6, 6), text, font=font)
    draw.rectangle((box[0] - 4, box[1] - 4, box[2] + 4, box[3] + 4), fill=(0, 0, 0))
    draw.multiline_text((6, 6), text, fill=(255, 255, 80), font=font)
    out = io.BytesIO()
    picture.save(out, format="PNG", optimize=True)
    return out.getvalue()


def overlay_lines(row: dict) -> list[str]:
    """The corner text of a case's overlay."""
    def fmt(v, unit, digits=1):
        return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f} {unit}"
    lines = [f"{row['case_id']}", f"SMA {fmt(row.get('sma_cm2'), 'cm2')}",
             f"SMD {fmt(row.get('smd_hu'), 'HU')}"]
    if row.get("mask_source") == "corrected":
        lines.append("corrected mask")
    return lines


# ---------------------------------------------------------------- gallery
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.5em}table{border-collapse:collapse;font-size:.9em}
th,td{border:1px solid #ccc;padding:.3em .5em;text-align:right;vertical-align:top}
th{background:#f0f0f0;cursor:pointer;user-select:none;position:sticky;top:0}
th[aria-sort=ascending]::after{content:" \\25B2"}th[aria-sort=descending]::after{content:" \\25BC"}
td.text,th.text{text-align:left}tr.flagged td{background:#fff4e0}
td.flags{text-align:left;color:#a40000;max-width:16em}img{display:block;max-width:420px;height:auto}
.legend{font-size:.85em;color:#444}.failed{color:#a40000}
"""

_SCRIPT = """
(function(){
  var table=document.getElementById('cases');
  var heads=table.tHead.rows[0].cells;
  function key(cell,kind){
    var v=cell.getAttribute('data-value');
    if(kind==='num'){var f=parseFloat(v);return isNaN(f)?null:f;}
    return v===null?'':v;
  }
  function sortBy(i){
    var th=heads[i],kind=th.getAttribute('data-kind');
    var dir=th.getAttribute('aria-sort')==='ascending'?-1:1;
    for(var j=0;j<heads.length;j++){heads[j].removeAttribute('aria-sort');}
    th.setAttribute('aria-sort',dir===1?'ascending':'descending');
    var body=table.tBodies[0],rows=Array.prototype.slice.call(body.rows);
    rows.sort(function(a,b){
      var x=key(a.cells[i],kind),y=key(b.cells[i],kind);
      if(x===null&&y===null)return 0;if(x===null)return 1;if(y===null)return -1;
      return (x<y?-1:x>y?1:0)*dir;
    });
    rows.forEach(function(r){body.appendChild(r);});
  }
  for(var i=0;i<heads.length;i++){
    if(heads[i].hasAttribute('data-kind')){
      (function(i){heads[i].addEventListener('click',function(){sortBy(i);});})(i);
    }
  }
  var only=document.getElementById('only-flagged');
  only.addEventListener('change',function(){
    Array.prototype.forEach.call(table.tBodies[0].rows,function(r){
      r.style.display=(only.checked&&!r.classList.contains('flagged'))?'none':'';
    });
  });
})();
"""

#: No request may leave the page: everything is inline.
CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
       "script-src 'unsafe-inline'")


def _num(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return repr(float(v)) if isinstance(v, (int, float, np.floating, np.integer)) else str(v)


def _shown(v, kind: str) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if v is None or (isinstance(v, float) and math.isnan(v)) or v == "":
        return "–"
    if kind == "num" and isinstance(v, (float, np.floating)):
        return f"{v:.3g}" if abs(v) < 1 else f"{v:.1f}"
    return html.escape(str(v))


def gallery_html(rows: list[dict], pictures: dict[str, bytes], failures: dict[str, str],
                 title: str, facts: list[str]) -> str:
    """The self-contained HTML gallery: one row per measured case, failed cases listed below.

    ``rows`` are the CSV rows (``flags`` ``;``-separated), ``pictures`` the overlay PNG bytes by
    case id, ``facts`` lines about the run (model, cut-offs, …) shown under the title.
    """
    head = "".join(f'<th class="{kind}" data-kind="{kind}">{html.escape(label)}</th>'
                   for _c, label, kind in GALLERY_COLUMNS)
    body = []
    for row in rows:
        flags = [f for f in str(row.get("flags") or "").split(";") if f]
        cells = []
        for col, _label, kind in GALLERY_COLUMNS:
            value = (len(flags) if col == "n_flags" else slice_choice(row)
                     if col == "slice_choice" else row.get(col))
            if col == "n_flags":
                shown = "<br>".join(f'<span title="{html.escape(FLAGS.get(f, f))}">{html.escape(f)}</span>'
                                    for f in flags) or "–"
                cells.append(f'<td class="flags" data-value="{value}">{shown}</td>')
            else:
                key = _num(value) if kind == "num" else ("" if value is None else str(value))
                cells.append(f'<td class="{kind}" data-value="{html.escape(key)}">'
                             f'{_shown(value, kind)}</td>')
        png = pictures.get(row["case_id"])
        img = (f'<img alt="overlay of {html.escape(row["case_id"])}" '
               f'src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">' if png else "–")
        cells.append(f"<td>{img}</td>")
        cls = ' class="flagged"' if flags else ""
        body.append(f'<tr{cls} data-case="{html.escape(row["case_id"])}">{"".join(cells)}</tr>')
    legend = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in FLAGS.items())
    failed = "".join(f'<li class="failed">{html.escape(msg)}</li>' for msg in failures.values())
    facts_html = "".join(f"<li>{html.escape(f)}</li>" for f in facts)
    summary = {"measured": len(rows), "failed": len(failures),
               "flagged": sum(1 for r in rows if r.get("flags"))}
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title><style>{_CSS}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<ul class="legend">{facts_html}</ul>
<p id="summary" data-summary='{html.escape(json.dumps(summary))}'>{summary["measured"]} case(s) measured,
{summary["flagged"]} flagged, {summary["failed"]} failed. Click a column header to sort.
<label><input type="checkbox" id="only-flagged"> show flagged cases only</label></p>
<table id="cases"><thead><tr>{head}<th class="text">overlay</th></tr></thead>
<tbody>
{chr(10).join(body)}
</tbody></table>
<h2>Flags</h2><ul class="legend">{legend}</ul>
<h2>Failed cases</h2><ul id="failures">{failed or "<li>none</li>"}</ul>
<script>{_SCRIPT}</script>
</body></html>
"""


def write_png(path: Path, data: bytes) -> None:
    """Write PNG bytes (the output folder is already a temporary one; no atomic rename needed)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(data)
