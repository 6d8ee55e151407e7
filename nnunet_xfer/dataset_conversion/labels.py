"""One syntax for mask label values, shared by every command that picks labels.

``"1"``, ``"1,2"``, ``"86-89"`` and ``"1,86-89"`` name the label values 1; 1 and 2; 86 to 89
inclusive; 1 and 86 to 89. Values are non-negative integers; order and repeats do not matter.
:func:`format_label_values` writes the shortest text in the same syntax, so error messages can show
every label a mask holds (``"0-7,86-89"``) in a form the user can paste back.
"""
from __future__ import annotations

import re
from collections.abc import Iterable

from nnunet_xfer.errors import UserError

_ITEM = re.compile(r"^(\d+)(?:-(\d+))?$")
#: A range may not name more values than this (a typo such as ``1-100000000`` would exhaust memory).
MAX_RANGE = 65536


def parse_label_values(text: str, option: str = "--label-map") -> list[int]:
    """Sorted unique label values of ``text`` (e.g. ``"1,86-89"`` → ``[1, 86, 87, 88, 89]``).

    Raises a one-line :class:`UserError` naming ``option`` for anything else: an empty list,
    a non-integer, a negative value or a reversed range.
    """
    values: set[int] = set()
    items = [t.strip() for t in str(text).split(",")]
    for item in items:
        match = _ITEM.match(item)
        if not match:
            raise UserError(f"{option} {text!r}: {item!r} is not a label value or range; use "
                            f"non-negative integers and ranges, e.g. '1', '1,2' or '1,86-89'")
        low = int(match.group(1))
        high = int(match.group(2)) if match.group(2) is not None else low
        if high < low:
            raise UserError(f"{option} {text!r}: range {item!r} runs backwards; write "
                            f"'{high}-{low}'")
        if high - low >= MAX_RANGE:
            raise UserError(f"{option} {text!r}: range {item!r} names more than {MAX_RANGE} labels")
        values.update(range(low, high + 1))
    return sorted(values)


def format_label_values(values: Iterable[int], limit: int | None = None) -> str:
    """``[0, 1, 2, 3, 86, 87, 88, 89]`` → ``"0-3,86-89"`` (the syntax of :func:`parse_label_values`).

    With ``limit``, at most that many items are shown, followed by ``"… (+N more)"`` where N counts
    the label values left out.
    """
    ordered = sorted({int(v) for v in values})
    runs: list[tuple[int, int]] = []
    for v in ordered:
        if runs and v == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], v)
        else:
            runs.append((v, v))
    shown = runs if limit is None else runs[:limit]
    text = ",".join(str(a) if a == b else f"{a}-{b}" for a, b in shown)
    hidden = sum(b - a + 1 for a, b in runs[len(shown):])
    return text + (f" … (+{hidden} more)" if hidden else "")
