"""The table a user came for, read from ``evaluate``'s ``summary.json``.

Per source and n: mean Dice and mean RMS DTA over the validation cases, the number of cases (and
failed ones), and the human-level verdict when observers were given; below it the observers'
range (each observer against the reference, min–max over observers).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from nnunet_xfer.errors import UserError
from nnunet_xfer.layout import EVAL_SUMMARY_JSON
from nnunet_xfer.sources import label

#: Shown for an evaluation whose summary does not state its verdict rule (an older ``evaluate``).
VERDICT_RULE = "verdict rule: see docs/evaluation.md (this summary.json does not state it)"


@dataclass(frozen=True)
class ResultRow:
    """One source × n (× plans) of the evaluation."""
    source: str
    n: float
    plans: str
    n_cases: int
    n_failed: int
    dice: float | None
    rms_dta_mm: float | None
    #: True / False, or None when no observers were given
    human_level: bool | None = None


@dataclass(frozen=True)
class ResultsTable:
    """Rows in the evaluation's order and the observers' range (None without observers)."""
    summary: Path
    rows: list[ResultRow]
    observer_names: list[str] = field(default_factory=list)
    observer_cases: int = 0
    #: metric -> (min, max) over observers of their mean against the reference
    observer_band: dict[str, tuple[float, float]] = field(default_factory=dict)
    #: the verdict rule with its numbers of cases and observers, as ``evaluate`` stated it
    verdict_rule: str = VERDICT_RULE


def _mean(group: dict, metric: str) -> float | None:
    value = group.get("metrics", {}).get(metric, {}).get("mean")
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def _key(entry: dict) -> tuple:
    return entry.get("source"), str(entry.get("size_tag")), entry.get("plans"), entry.get("configuration")


def results_table(evaluation: Path) -> ResultsTable:
    """The results table of an evaluation folder (or of its ``summary.json``)."""
    path = Path(evaluation)
    if path.is_dir():
        path = path / EVAL_SUMMARY_JSON
    try:
        summary = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path} does not exist; run `nnunet-xfer evaluate` first") from None
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is not readable JSON ({e}); re-run `nnunet-xfer evaluate`") from None
    verdicts = {_key(v): v.get("human_level") for v in summary.get("human_level", [])}
    rows = [ResultRow(source=g["source"], n=g.get("n"), plans=g.get("plans", ""),
                      n_cases=int(g.get("n_cases", 0)), n_failed=int(g.get("n_failed", 0)),
                      dice=_mean(g, "dice"), rms_dta_mm=_mean(g, "rms_dta_mm"),
                      human_level=verdicts.get(_key(g)) if verdicts else None)
            for g in summary.get("groups", [])]
    observers = summary.get("observers") or {}
    band = {k: (float(v[0]), float(v[1])) for k, v in observers.get("band", {}).items()}
    return ResultsTable(summary=path, rows=rows, observer_names=list(observers.get("names", [])),
                        observer_cases=len(observers.get("cases", [])), observer_band=band,
                        verdict_rule=summary.get("verdict_rule") or VERDICT_RULE)


def format_table(table: ResultsTable) -> str:
    """The table as text: one line per source × n, then the observers' range and the rule."""
    def num(value: float | None, digits: int) -> str:
        return "–" if value is None else f"{value:.{digits}f}"

    def n_text(n) -> str:
        return "all" if n is None else (str(int(n)) if float(n).is_integer() else f"{n:.1f}")

    several_plans = len({r.plans for r in table.rows}) > 1
    head = ["source", "n", "cases", "Dice", "RMS DTA mm", "human level"]
    body = []
    for r in table.rows:
        verdict = "–" if r.human_level is None else ("yes" if r.human_level else "no")
        src = label(r.source) + (f" ({r.plans})" if several_plans else "")
        cases = str(r.n_cases) + (f" ({r.n_failed} failed)" if r.n_failed else "")
        body.append([src, n_text(r.n), cases, num(r.dice, 3), num(r.rms_dta_mm, 2), verdict])
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    lines = ["  ".join(x.ljust(w) for x, w in zip(row, widths)).rstrip() for row in [head, *body]]
    if table.observer_band:
        d, r = table.observer_band.get("dice"), table.observer_band.get("rms_dta_mm")
        parts = []
        if d:
            parts.append(f"Dice {d[0]:.3f}–{d[1]:.3f}")
        if r:
            parts.append(f"RMS DTA {r[0]:.2f}–{r[1]:.2f} mm")
        lines.append(f"observers ({len(table.observer_names)}, {table.observer_cases} cases, "
                     f"each vs the reference): {', '.join(parts)}")
        lines.append(table.verdict_rule)
    else:
        lines.append("no observers given: no human-level verdict (pass --observers DIR)")
    return "\n".join(lines)
