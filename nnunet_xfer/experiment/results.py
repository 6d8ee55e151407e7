"""The table a user came for, read from ``evaluate``'s ``summary.json``.

Per source and n: mean Dice and mean RMS DTA over the validation cases, the number of cases (and
failed ones), whether the model beats the no-learning threshold baseline (paired, on the same
cases) and the human-level verdict when observers were given; the threshold baseline's own row;
below it the observers' range (each observer against the reference, min–max over observers) and,
in words, which model beats the baseline.
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
    #: a no-learning reference row (the threshold baseline), not a model
    reference: bool = False
    #: for a model: beats the threshold baseline by the evaluation's paired rule (None: not compared)
    beats_threshold: bool | None = None
    #: for a model: mean paired Dice difference against the threshold and its 95% interval
    dice_vs_threshold: tuple[float, float, float] | None = None


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
    #: the rule of "beats the threshold baseline", as ``evaluate`` stated it (None: no baseline)
    reference_rule: str | None = None


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
    rows = []
    for g in summary.get("groups", []):
        reference = bool(g.get("reference"))
        vs = (g.get("vs_reference") or {}).get("threshold") or {}
        d = vs.get("dice") or {}
        rows.append(ResultRow(
            source=g["source"], n=g.get("n"), plans=g.get("plans", ""),
            n_cases=int(g.get("n_cases", 0)), n_failed=int(g.get("n_failed", 0)),
            dice=_mean(g, "dice"), rms_dta_mm=_mean(g, "rms_dta_mm"),
            human_level=verdicts.get(_key(g)) if verdicts and not reference else None,
            reference=reference, beats_threshold=vs.get("beats") if vs else None,
            dice_vs_threshold=(float(d["mean"]), float(d["ci_low"]), float(d["ci_high"]))
            if d.get("n") else None))
    observers = summary.get("observers") or {}
    band = {k: (float(v[0]), float(v[1])) for k, v in observers.get("band", {}).items()}
    return ResultsTable(summary=path, rows=rows, observer_names=list(observers.get("names", [])),
                        observer_cases=len(observers.get("cases", [])), observer_band=band,
                        verdict_rule=summary.get("verdict_rule") or VERDICT_RULE,
                        reference_rule=summary.get("reference_rule"))


def _verdict(value: bool | None) -> str:
    return "–" if value is None else ("yes" if value else "no")


def _model_name(r: ResultRow, several_plans: bool) -> str:
    n = "all" if r.n is None else (str(int(r.n)) if float(r.n).is_integer() else f"{r.n:.1f}")
    return f"{label(r.source)} n={n}" + (f" ({r.plans})" if several_plans else "")


def threshold_sentences(table: ResultsTable) -> list[str]:
    """In words, per model: whether it beats the threshold baseline, with the Dice difference."""
    refs = [r for r in table.rows if r.reference]
    models = [r for r in table.rows if not r.reference]
    if not refs or not models:
        return []
    several_plans = len({r.plans for r in models}) > 1
    ref = refs[0]
    head = (f"Against the {ref.source} baseline (no learning; Dice "
            f"{'–' if ref.dice is None else f'{ref.dice:.3f}'} on {ref.n_cases} cases):")
    lines = [head]
    for r in models:
        diff = ("" if r.dice_vs_threshold is None else
                f" (Dice {r.dice_vs_threshold[0]:+.3f}, 95% CI "
                f"{r.dice_vs_threshold[1]:+.3f} to {r.dice_vs_threshold[2]:+.3f})")
        what = ("beats it" if r.beats_threshold else "does not beat it"
                if r.beats_threshold is not None else "was not compared with it")
        lines.append(f"  {_model_name(r, several_plans)} {what}{diff}")
    if table.reference_rule:
        lines.append(f"rule: {table.reference_rule}")
    return lines


def format_table(table: ResultsTable) -> str:
    """The table as text: one line per source × n and the threshold baseline's row, then the
    observers' range and the rule, then in words which model beats the baseline."""
    def num(value: float | None, digits: int) -> str:
        return "–" if value is None else f"{value:.{digits}f}"

    def n_text(n) -> str:
        return "all" if n is None else (str(int(n)) if float(n).is_integer() else f"{n:.1f}")

    several_plans = len({r.plans for r in table.rows if not r.reference}) > 1
    head = ["source", "n", "cases", "Dice", "RMS DTA mm", "beats threshold", "human level"]
    body = []
    for r in sorted(table.rows, key=lambda r: r.reference):  # the baseline under the models
        src = label(r.source) + (f" ({r.plans})" if several_plans and not r.reference else "")
        cases = str(r.n_cases) + (f" ({r.n_failed} failed)" if r.n_failed else "")
        n = "–" if r.reference else n_text(r.n)
        beats = "(baseline)" if r.reference else _verdict(r.beats_threshold)
        body.append([src, n, cases, num(r.dice, 3), num(r.rms_dta_mm, 2), beats,
                     _verdict(r.human_level)])
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
    return "\n".join(lines + threshold_sentences(table))
