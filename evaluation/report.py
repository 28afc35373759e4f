"""The evaluation report: Markdown tables and PNG plots from result files (paper Figs. 2-5).

:func:`build_report` reads results of the four kinds the evaluation modules write
(:mod:`evaluation.results`: objects, dicts, or JSON files: a folder, a glob, a list of paths),
and renders what it has into ``<out_dir>``:

- ``report.md`` with
  - Table 1 (paper Fig. 2): per label (``base``, ``self_instruct``, ``data_advisor``, ...) the
    safety score on each safety data set, the over-refusal rate on each over-refusal data set
    and the MMLU accuracy; every column header says which direction is better and names its
    judge, described in the notes (the refusal-strings judge measures refusals, not harm);
  - the rate per category of every safety (and over-refusal) result with ``per_category``,
    one table per data set (paper Figs. 3-4), named by what it measures (the result's
    ``measure``, else its judge's: "not-refused rate" for the refusal-strings judge);
  - distinct-n for n = 1..8 per data set, also at an equal size when measured (paper Fig. 5);
  - every result's details (model, adapter, judge or method, n, malformed/empty/unparsed);
- ``safety_utility.png`` (grouped bars; higher-is-better and lower-is-better metrics in separate
  panels), ``harmful_rate_<dataset>.png`` / ``refusal_rate_<dataset>.png`` (horizontal bars per
  label) and ``distinct_n.png`` (one sample size per figure: the equal size when every set was
  measured at the same one, else each set's full size, and the title says which).

Every axis says which direction is better; a zero is drawn as a visible stub with "0.0", a
missing value as a grey "n/a". Each PNG repeats its axes' titles and labels in its
``Description`` metadata (JSON). Rates, scores and accuracies are fractions in [0, 1] in the
result files and are shown as percentages. Missing kinds are left out; a report with no
results says so.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from evaluation.results import (
    AnyResult,
    DiversityResult,
    ModelResult,
    OverrefusalResult,
    ResultError,
    SafetyResult,
    UtilityResult,
    from_dict,
    read_results,
    slug,
)

LABEL_ORDER = ("base", "self_instruct", "data_advisor")
DATASET_ORDER = ("catqa", "beavertails", "xstest", "mmlu")
NS = tuple(str(n) for n in range(1, 9))
_REFUSAL_NOTE = "refusal-strings judge: measures refusals, not harm"

Result = AnyResult
Judged = SafetyResult | OverrefusalResult
"""A result whose responses a judge labelled (per category rates)."""
Latest = dict[tuple[str, str, str], Result]
"""One result per (kind, data set, label), or per ("diversity", name, source)."""
Groups = list[tuple[str | None, Latest]]
"""The results of each target (None: results without a target), in report order."""
R = TypeVar("R")
Source = Result | Mapping[str, Any] | str | Path


# -- loading ------------------------------------------------------------------------------------


def _is_pattern(text: str) -> bool:
    return any(c in text for c in "*?[")


def _paths(source: str | Path) -> list[Path]:
    text = str(source)
    if _is_pattern(text):
        return [Path(p) for p in sorted(glob.glob(text, recursive=True))]
    path = Path(source)
    if path.is_dir():
        return sorted(path.glob("*.json"))
    return [path]


def load_results(source: Source | Iterable[Source]) -> tuple[list[Result], list[str]]:
    """Results (:mod:`evaluation.results`) from result objects, dicts, JSON files, folders
    (their ``*.json``) or glob patterns.

    Returns the results of a known kind and notes about what was skipped (unreadable files,
    JSON that is no result, unknown kinds). A path that does not exist is an error.
    """
    sources: list[Source] = []
    if isinstance(source, Iterable) and not isinstance(source, Mapping | str):
        sources += source  # a list of sources (a Path or a result is no Iterable)
    else:
        sources.append(source)
    results: list[Result] = []
    skipped: list[str] = []
    for item in sources:
        if isinstance(item, SafetyResult | OverrefusalResult | UtilityResult | DiversityResult):
            results.append(item)
        elif isinstance(item, Mapping):
            try:
                results.append(from_dict(item))
            except ResultError as exc:
                skipped.append(f"<dict>: {exc}")
        else:
            if not _is_pattern(str(item)) and not Path(item).exists():
                raise FileNotFoundError(f"no result file or folder {item}")
            found, notes = read_results(_paths(item))
            results += found.values()
            skipped += notes
    return results, skipped


# -- helpers ------------------------------------------------------------------------------------


def _order(names: Iterable[str], preferred: Sequence[str]) -> list[str]:
    """Unique names: the preferred ones first (in that order), then the rest as they came."""
    seen = list(dict.fromkeys(n for n in names if n is not None))
    first = [p for p in preferred if p in seen]
    return first + [n for n in seen if n not in first]


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _pct(value: Any) -> str:
    v = _num(value)
    return "–" if v is None else f"{100 * v:.1f}"


def _cell(value: Any) -> str:
    text = "–" if value is None or value == "" else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], text_columns: int = 1) -> str:
    """A Markdown table; the first ``text_columns`` columns left-aligned, numbers right."""
    align = [":---"] * text_columns + ["---:"] * (len(header) - text_columns)
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _judge_text(judge: Any) -> str:
    if isinstance(judge, dict):
        judge = judge.get("description") or judge.get("name")
    return str(judge) if judge else "unknown judge"


def _judge_short(judge: str) -> str:
    return judge.split(" (", 1)[0].strip()


def _is_refusal_judge(judge: str) -> bool:
    return "refusal" in judge.lower() and "llama" not in judge.lower()


def _dataset_key(result: ModelResult) -> str:
    return str(result.dataset or "unknown")


def _label(result: ModelResult) -> str:
    return str(result.label or "unlabelled")


def _who(result: ModelResult) -> str:
    """The result's label, after its target's name when it has one (``llama: base``)."""
    return f"{result.target}: {_label(result)}" if result.target else _label(result)


def _judge_of(result: ModelResult) -> str:
    """The judge's description (utility results have none)."""
    return "no judge" if isinstance(result, UtilityResult) else _judge_text(result.judge)


# Names the pre-issue-8 diversity command gave an export: its folder or file, not the run.
_EXPORT_BASENAMES = ("export", "hf", "data")


def _diversity_name(result: DiversityResult) -> str:
    """A diversity result's name; an old result named after an export's folder (``hf``,
    ``export``) is renamed after its run when the export is still there."""
    name = str(result.name or "unnamed")
    source = result.source
    if (result.name_from is not None or name not in _EXPORT_BASENAMES
            or not isinstance(source, str)):
        return name
    from evaluation.diversity import resolve_source

    return resolve_source(source)[1] if Path(source).exists() else name


def _latest(results: Sequence[Result]) -> tuple[Latest, list[str]]:
    """One result per (kind, data set, label), or per (diversity, name, source): the last one
    given wins."""
    table: Latest = {}
    notes = []
    for r in results:
        if isinstance(r, DiversityResult):
            r = replace(r, name=_diversity_name(r))
            key = ("diversity", r.name, str(r.source or ""))
            what = r.name
        else:
            key = (r.kind, _dataset_key(r), _label(r))
            what = f"{key[1]} / {key[2]}"
        if key in table:
            notes.append(f"more than one {key[0]} result for {what}; the last one is shown")
        table[key] = r
    return table, list(dict.fromkeys(notes))


def _by_target(results: Sequence[Result]) -> tuple[Groups, list[str]]:
    """The latest results of each target (results without one first), and the notes."""
    targets = list(dict.fromkeys(getattr(r, "target", None) for r in results))
    groups: Groups = []
    notes: list[str] = []
    for target in sorted(targets, key=lambda t: t is not None):  # stable: first seen first
        latest, found = _latest([r for r in results if getattr(r, "target", None) == target])
        groups.append((target, latest))
        notes += [n if target is None else f"{target}: {n}" for n in found]
    return groups, notes


def _of_kind(latest: Latest, cls: type[R]) -> list[R]:
    """The results of one class (kind), in order."""
    return [r for r in latest.values() if isinstance(r, cls)]


def _measure(result: Judged) -> str:
    """What a safety result's per-category number counts: its ``measure`` field, else what its
    judge measures (the refusal-strings judge: responses not refused, not harm)."""
    if result.measure:
        return str(result.measure)
    if isinstance(result, OverrefusalResult):
        return "refused"
    return "not_refused" if _is_refusal_judge(_judge_text(result.judge)) else "harmful"


_MEASURE_NAMES = {"harmful": "harmful rate", "not_refused": "not-refused rate",
                  "refused": "refusal rate", "unsafe": "unsafe rate"}


def _measure_name(measure: str, label: str | None = None) -> str:
    """"harmful rate", "not-refused rate", ...: ours for the known measures, else the
    result's ``measure_label`` (or the measure itself) + " rate"."""
    return _MEASURE_NAMES.get(measure, f"{label or measure.replace('_', ' ')} rate")


# -- figures ------------------------------------------------------------------------------------

HIGHER = "higher is better ↑"
LOWER = "lower is better ↓"


def _figure(width: float, height: float) -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _palette(labels: Sequence[str]) -> dict[str, Any]:
    """One colour per label, the same in every figure."""
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {label: cmap(i % 10) for i, label in enumerate(labels)}


def _save(fig: Any, path: Path) -> Path:
    """Save a PNG whose metadata repeats every axis' title, labels and value texts
    (``Description``, JSON), so direction marks and "n/a" can be checked without pixels."""
    axes = [{"title": ax.get_title(), "xlabel": ax.get_xlabel(), "ylabel": ax.get_ylabel(),
             "texts": [t.get_text() for t in ax.texts]} for ax in fig.axes]
    axes[0]["suptitle"] = fig.get_suptitle()
    fig.savefig(path, metadata={"Title": fig.get_suptitle() or axes[0]["title"],
                                "Description": json.dumps(axes, ensure_ascii=False),
                                "Software": "data-advisor"})
    return path


def _bars(ax: Any, positions: Sequence[float], fractions: Sequence[float | None], width: float,
          color: Any, label: str, horizontal: bool = False) -> None:
    """Bars in % with their values written on them. A zero is a thick stub in the label's
    colour with "0.0" (visible, unlike a zero-length bar); a missing value is a grey "n/a"."""
    values = [None if v is None else 100 * v for v in fractions]
    lengths = [v or 0.0 for v in values]
    draw = ax.barh if horizontal else ax.bar
    draw(positions, lengths, width, color=color, label=label)
    for pos, value in zip(positions, values, strict=True):
        if value == 0:
            line = ax.vlines if horizontal else ax.hlines
            line(0, pos - width / 2, pos + width / 2, colors=[color], linewidth=4, clip_on=False)
        text = "n/a" if value is None else f"{value:.1f}"
        style = {"fontsize": 7, "color": "0.45" if value is None else "black",
                 "fontstyle": "italic" if value is None else "normal"}
        if horizontal:
            ax.annotate(text, (value or 0.0, pos), xytext=(3, 0), textcoords="offset points",
                        ha="left", va="center", **style)
        else:
            ax.annotate(text, (pos, value or 0.0), xytext=(0, 2), textcoords="offset points",
                        ha="center", va="bottom", **style)


def _grouped(ax: Any, groups: Sequence[str], labels: Sequence[str],
             values: dict[str, list[float | None]], colors: dict[str, Any],
             horizontal: bool = False) -> None:
    size = 0.8 / max(1, len(labels))
    for j, label in enumerate(labels):
        positions = [i - 0.4 + size * (j + 0.5) for i in range(len(groups))]
        _bars(ax, positions, values[label], size, colors[label], label, horizontal)
    if horizontal:
        ax.set_yticks(range(len(groups)), groups, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, 108)  # room for the value labels; ticks stop at 100 %
        ax.set_xticks(range(0, 101, 20))
    else:
        ax.set_xticks(range(len(groups)), groups, fontsize=8)
        ax.set_ylim(0, 108)
        ax.set_yticks(range(0, 101, 20))


def _legend(fig: Any, ax: Any, labels: Sequence[str]) -> None:
    handles, names = ax.get_legend_handles_labels()
    fig.legend(handles, names, loc="outside right upper", fontsize=8, frameon=False)


def _footnote(fig: Any, text: str | None) -> None:
    if text:
        fig.supxlabel(text, fontsize=8, color="0.3")


# -- Table 1 ------------------------------------------------------------------------------------


class _Column:
    """One column of Table 1: a metric of one kind on one data set."""

    def __init__(self, kind: str, dataset: str, metric: str, header: str, group: str,
                 better: str) -> None:
        self.kind, self.dataset, self.metric = kind, dataset, metric
        self.header, self.group, self.better = header, group, better


_KIND_COLUMNS: tuple[tuple[type[ModelResult], str, str], ...] = (
    (SafetyResult, "safety", HIGHER),
    (OverrefusalResult, "over-refusal", LOWER),
    (UtilityResult, "accuracy", HIGHER),
)
"""Table 1's column groups: the kind (its ``metric`` is the number shown), title, direction."""


def _columns(latest: Latest) -> tuple[list[_Column], dict[str, list[str]]]:
    """Table 1's columns, and for each judge the columns it judged."""
    columns: list[_Column] = []
    judged: dict[str, list[str]] = {}
    for cls, title, better in _KIND_COLUMNS:
        arrow = better[-1]
        of_kind: list[ModelResult] = _of_kind(latest, cls)
        for ds in _order((_dataset_key(r) for r in of_kind), DATASET_ORDER):
            rows = [r for r in of_kind if _dataset_key(r) == ds]
            if cls is UtilityResult:
                name = ds.upper() if ds == "mmlu" else ds
                columns.append(_Column(cls.kind, ds, cls.metric, f"{name} accuracy {arrow}",
                                       f"{name} accuracy", better))
                continue
            judges = list(dict.fromkeys(_judge_of(r) for r in rows))
            short = _judge_short(judges[0]) if len(judges) == 1 else "mixed judges"
            columns.append(_Column(cls.kind, ds, cls.metric, f"{title} {ds} {arrow} ({short})",
                                   f"{title} {ds}\n({short})", better))
            for judge in judges:
                who = [_label(r) for r in rows if _judge_of(r) == judge]
                where = f"{title} {ds}" + (f" (for {', '.join(who)}; judges differ, not "
                                           "comparable)" if len(judges) > 1 else "")
                judged.setdefault(judge, []).append(where)
    return columns, judged


def _model_text(rows: Iterable[ModelResult]) -> str:
    """The model(s) of a label; an adapter is named by the label, so only "+ LoRA" here."""
    texts = [str(r.model or "?") + (" + LoRA" if r.adapter else "") for r in rows]
    return "; ".join(dict.fromkeys(texts))


Panel = tuple[str | None, list[str], dict[str, list[float | None]]]
"""One target's bars: (target name or None, labels, values per label)."""


def _summary_figure(path: Path, columns: list[_Column], panels: Sequence[Panel],
                    colors: dict[str, Any], footnote: str | None) -> Path:
    """Table 1 as bars: higher-is-better and lower-is-better metrics in separate panels, one
    row of panels per target (paper Fig. 2: one panel per base model)."""
    sides = [(better, [i for i, c in enumerate(columns) if c.better == better])
             for better in (HIGHER, LOWER)]
    sides = [(better, idx) for better, idx in sides if idx]
    widest = max(len(labels) for _, labels, _ in panels)
    fig = _figure(max(6.5, 0.55 * len(columns) * max(2, widest) + 2.5), 5.0 * len(panels))
    grid = fig.subplots(len(panels), len(sides), squeeze=False,
                        width_ratios=[len(idx) for _, idx in sides])
    for row, (target, labels, values) in zip(grid, panels, strict=True):
        for ax, (better, idx) in zip(row, sides, strict=True):
            metrics = " / ".join(dict.fromkeys(
                {"safety_score": "safety score", "refusal_rate": "over-refusal rate",
                 "accuracy": "accuracy"}[columns[i].metric] for i in idx))
            _grouped(ax, [columns[i].group for i in idx], labels,
                     {lb: [values[lb][i] for i in idx] for lb in labels}, colors)
            ax.set_ylabel(f"{metrics} (%), {better}")
            ax.set_title(better if target is None else f"{target}: {better}", fontsize=10)
    fig.suptitle("Safety, over-refusal and utility per training data"
                 + ("" if len(panels) == 1 else " and target model"))
    _legend(fig, grid[0][0], max((labels for _, labels, _ in panels), key=len))
    _footnote(fig, footnote)
    return _save(fig, path)


def _union(groups: Groups) -> Latest:
    """All targets' results in one table, labels prefixed by their target."""
    return {(kind, ds, label if t is None else f"{t}: {label}"): r
            for t, latest in groups for (kind, ds, label), r in latest.items()}


def _summary_section(groups: Groups, out: Path, colors: dict[str, Any],
                     figures: list[Path]) -> list[str]:
    every = _union(groups)
    utility = _of_kind(every, UtilityResult)
    if not [*_of_kind(every, SafetyResult), *_of_kind(every, OverrefusalResult), *utility]:
        return []
    columns, judged = _columns(every)
    several = len(groups) > 1
    table_rows: list[list[Any]] = []
    panels: list[Panel] = []
    for target, latest in groups:
        scored: list[ModelResult] = [*_of_kind(latest, SafetyResult),
                                     *_of_kind(latest, OverrefusalResult),
                                     *_of_kind(latest, UtilityResult)]
        labels = _order((_label(r) for r in scored), LABEL_ORDER)

        def value(label: str, column: _Column, latest: Latest = latest) -> float | None:
            r = latest.get((column.kind, column.dataset, label))
            return None if r is None or isinstance(r, DiversityResult) else r.score

        table_rows += [[*([target] if several else []), label,
                        _model_text(r for r in scored if _label(r) == label),
                        *(_pct(value(label, c)) for c in columns)] for label in labels]
        panels.append((target, labels,
                       {label: [_num(value(label, c)) for c in columns] for label in labels}))
    notes = [f"judge of {', '.join(where)}: {judge}" for judge, where in judged.items()]
    for ds in _order((_dataset_key(r) for r in utility), DATASET_ORDER):
        of_ds = [r for r in utility if _dataset_key(r) == ds]
        shown = ds.upper() if ds == "mmlu" else ds
        methods = sorted({f"{r.method or '?'}, backend {r.backend or '?'}, prompt "
                          f"{(r.settings or {}).get('prompt_format', 'raw')}" for r in of_ds})
        notes.append(f"{shown} accuracy: method {'; '.join(methods)}")
        if unread := [r for r in of_ds if r.unparsed]:
            notes.append(
                f"**{shown}: {sum(r.unparsed or 0 for r in unread)} of "
                f"{sum(r.n or 0 for r in unread)} predictions had no answer letter (counted "
                f"wrong)** in {', '.join(_who(r) + f' ({r.unparsed}/{r.n})' for r in unread)}"
                "; an accuracy near 0 there says the model did not answer with a letter")
    refusal = any(_is_refusal_judge(j) for j in judged)
    if refusal:
        notes.append(f"**{_REFUSAL_NOTE}**: a response that does not refuse counts as unsafe, "
                     "whether or not it is harmful; use a Llama Guard judge for harm")
    header = [*(["target"] if several else []), "label", "model", *(c.header for c in columns)]
    lines = ["## Table 1: safety and utility (paper Fig. 2)", "",
             "Percentages. Safety score = 100 - harmful rate (higher is safer); over-refusal = "
             "share of benign prompts refused (lower is better); accuracy on MMLU (higher is "
             "better)." + (" One row group and one figure panel per target model."
                           if several else ""), "",
             _table(header, table_rows, 3 if several else 2), "",
             *(f"- {n}" for n in notes), ""]
    footnote = ("refusal-strings judge: safety score = share of responses refused, not harm"
                if refusal else None)
    figure = _summary_figure(out / "safety_utility.png", columns, panels, colors, footnote)
    figures.append(figure)
    return lines + [f"![safety, over-refusal and utility]({figure.name})", ""]


# -- iterations ---------------------------------------------------------------------------------


def _iteration(result: Result) -> int | None:
    value = getattr(result, "iteration", None)
    return value if isinstance(value, int) else None


def _last_iteration(results: Sequence[Result]) -> list[Result]:
    """Of an experiment's iterations, each model's last result per data set (the base model is
    evaluated in the first only): what Table 1 and the per-category figures show."""
    last: dict[tuple[Any, ...], int] = {}
    for r in results:
        key = (r.kind, getattr(r, "dataset", None), getattr(r, "label", None),
               getattr(r, "target", None))
        last[key] = max(last.get(key, 0), _iteration(r) or 0)
    return [r for r in results
            if (_iteration(r) or 0) == last[(r.kind, getattr(r, "dataset", None),
                                             getattr(r, "label", None),
                                             getattr(r, "target", None))]]


def _iterations_section(results: Sequence[Result]) -> list[str]:
    """Harmful rate per category of each method in each iteration, on every safety set's
    reported half, and MMLU accuracy with its change from the first iteration (the guardrail);
    empty without iterations."""
    iterated = [r for r in results
                if _iteration(r) is not None and not isinstance(r, DiversityResult)]
    if len({_iteration(r) for r in iterated}) < 2:
        return []
    several = len({getattr(r, "target", None) for r in iterated}) > 1
    lines = ["## Iterations: the model's failures steer the next data", "",
             "Each iteration adds data to both methods (Data Advisor steered by the failures of "
             "the last iteration's adapter on the steering half of the safety sets; "
             "Self-Instruct with those questions in its pool), trains on the union and is "
             "evaluated again on the reported half, never used to steer. Rates in % (lower is "
             "better; each table names what its judge measures); MMLU accuracy in % with its "
             "change from iteration 1.", ""]
    columns = sorted({(getattr(r, "target", None) or "", _label(r), _iteration(r) or 0)
                      for r in iterated if not _label(r) == "base"},
                     key=lambda c: (c[0], _order([c[1]], LABEL_ORDER), c[2]))

    def header(target: str, label: str, i: int) -> str:
        return f"{target + ': ' if several else ''}{label} {i}"

    safety = [r for r in iterated if isinstance(r, SafetyResult)]
    for ds in _order((_dataset_key(r) for r in safety), DATASET_ORDER):
        rows = {(getattr(r, "target", None) or "", _label(r), _iteration(r) or 0): r
                for r in safety if _dataset_key(r) == ds}
        cats = sorted({c for r in rows.values() for c in (r.per_category or {})})
        table = [[c, *(_pct(_rate(rows[col], c)) if col in rows else "–" for col in columns)]
                 for c in cats]
        table.append(["**overall**", *(_pct(rows[col].harmful_rate) if col in rows else "–"
                                       for col in columns)])
        measures = list(dict.fromkeys(_measure(r) for r in rows.values()))
        what = (_measure_name(measures[0]) if len(measures) == 1
                else "rate (measures differ)").capitalize()
        lines += [f"{what} per category, {ds} (reported half):", "",
                  _table(["category", *(header(*col) for col in columns)], table), ""]
    utility = {(getattr(r, "target", None) or "", _label(r), _iteration(r) or 0): r
               for r in iterated if isinstance(r, UtilityResult)}
    if utility:
        def first(col: tuple[str, str, int]) -> float | None:
            r = utility.get((col[0], col[1], 1))
            return r.accuracy if r is not None else None

        cells = []
        for col in columns:
            r = utility.get(col)
            if r is None or r.accuracy is None:
                cells.append("–")
                continue
            base = first(col)
            delta = "" if base is None or col[2] == 1 else \
                f" ({100 * (r.accuracy - base):+.1f})"
            cells.append(f"{100 * r.accuracy:.1f}{delta}")
        lines += ["MMLU accuracy (change from iteration 1):", "",
                  _table(["", *(header(*col) for col in columns)], [["accuracy", *cells]]), ""]
    return lines


# -- per category -------------------------------------------------------------------------------


def _rate(result: Judged, category: str) -> float | None:
    per = (result.per_category or {}).get(category)
    if not isinstance(per, dict):
        return None
    for key in ("harmful_rate", "refusal_rate", "rate"):
        if key in per:
            return _num(per[key])
    return None


def _category_n(rows: Iterable[Judged], category: str) -> str:
    ns = {per["n"] for r in rows
          if isinstance(per := (r.per_category or {}).get(category), dict)
          and per.get("n") is not None}
    return "/".join(str(n) for n in sorted(ns)) or "–"


def _category_figure(path: Path, categories: list[str], panels: Sequence[Panel],
                     colors: dict[str, Any], axis: str, title: str,
                     footnote: str | None) -> Path:
    """Horizontal bars per category, one panel per target (paper Figs. 3-4)."""
    widest = max(len(labels) for _, labels, _ in panels)
    fig = _figure(8.0 * len(panels) if len(panels) > 1 else 8.0,
                  max(3.2, 0.24 * len(categories) * max(1, widest) + 2.0))
    axes = fig.subplots(1, len(panels), squeeze=False, sharey=True)[0]
    for ax, (target, labels, values) in zip(axes, panels, strict=True):
        _grouped(ax, categories, labels, values, colors, horizontal=True)
        ax.set_xlabel(f"{axis} (%), {LOWER}")
        if target is not None:
            ax.set_title(target, fontsize=10)
    fig.suptitle(title)  # above the legend too
    _legend(fig, axes[0], max((labels for _, labels, _ in panels), key=len))
    _footnote(fig, footnote)
    return _save(fig, path)


def _category_sections(groups: Groups, out: Path, colors: dict[str, Any],
                       figures: list[Path]) -> list[str]:
    """Per category rate of every safety (and over-refusal) result that has ``per_category``,
    one table and figure per data set (paper Figs. 3-4), one panel per target."""
    lines: list[str] = []
    judged: tuple[type[Judged], ...] = (SafetyResult, OverrefusalResult)
    for cls in judged:
        results = {t: [r for r in _of_kind(latest, cls) if r.per_category]
                   for t, latest in groups}
        every = [r for rows in results.values() for r in rows]
        for ds in _order((_dataset_key(r) for r in every), DATASET_ORDER):
            per_target = [(t, [r for r in rows if _dataset_key(r) == ds])
                          for t, rows in results.items()]
            lines += _category_section(cls is OverrefusalResult, ds,
                                       [(t, rows) for t, rows in per_target if rows],
                                       out, colors, figures)
    return lines


def _overall(result: Judged) -> float | None:
    """The share of flagged responses over all categories."""
    return result.refusal_rate if isinstance(result, OverrefusalResult) else result.harmful_rate


def _category_section(benign: bool, ds: str, per_target: list[tuple[str | None, list[Judged]]],
                      out: Path, colors: dict[str, Any], figures: list[Path]) -> list[str]:
    """One data set's per-category table and figure (a panel per target); ``benign``:
    over-refusal results."""
    rows = [r for _, rs in per_target for r in rs]
    categories = sorted({c for r in rows for c in (r.per_category or {})})
    if len(categories) < 2:
        return []  # one category (or "uncategorized") is the overall rate, already in Table 1
    several = len(per_target) > 1
    measures = list(dict.fromkeys(_measure(r) for r in rows))
    axis = (_measure_name(measures[0], rows[0].measure_label) if len(measures) == 1
            else "rate (measures differ)")
    columns: list[tuple[str, Judged]] = []  # (header, result)
    panels: list[Panel] = []
    for target, results in per_target:
        labels = _order((_label(r) for r in results), LABEL_ORDER)
        by_label = {_label(r): r for r in results}
        columns += [(lb if not several else f"{target}: {lb}", by_label[lb]) for lb in labels]
        panels.append((target, labels,
                       {lb: [_rate(by_label[lb], c) for c in categories] for lb in labels}))
    table_rows = [[c, _category_n(rows, c), *(_pct(_rate(r, c)) for _, r in columns)]
                  for c in categories]
    ns = {"–" if r.n is None else str(r.n) for _, r in columns}
    table_rows.append(["**overall**", "/".join(sorted(ns)),
                       *(_pct(_overall(r)) for _, r in columns)])
    judges = list(dict.fromkeys(_judge_text(r.judge) for r in rows))
    refusal = "not_refused" in measures
    # the refusal judge's own description may already say it measures refusals
    warn = refusal and not any("not harm" in j for j in judges)
    what = f"{axis[0].upper()}{axis[1:]}"
    prompts = "benign prompts" if benign else "harmful prompts"
    paper = "" if benign else " (paper Figs. 3-4)"
    lines = [f"## {what} per category: {ds}{paper}", "",
             f"{what} in % on {prompts} (lower is better). Judge: {'; '.join(judges)}"
             + (f" ({_REFUSAL_NOTE})." if warn else "."), ""]
    if len(measures) > 1:
        lines += [f"**The results measure different things ({', '.join(measures)}); not "
                  "comparable.**", ""]
    lines += [_table(["category", "n", *(h for h, _ in columns)], table_rows), ""]
    ticks = [f"{c} (n={_category_n(rows, c)})" for c in categories]
    short = _judge_short(judges[0]) if len(judges) == 1 else "mixed judges"
    name = f"{'refusal' if benign else 'harmful'}_rate_{slug(ds)}.png"
    figure = _category_figure(out / name, ticks, panels, colors, axis,
                              f"{what} per category: {ds} ({short})",
                              "refusal-strings judge: counts responses that do not refuse, "
                              "not harm" if refusal else None)
    figures.append(figure)
    return lines + [f"![{axis} per category, {ds}]({figure.name})", ""]


# -- diversity ----------------------------------------------------------------------------------


def _at_size(result: DiversityResult) -> dict[str, Any] | None:
    """The result's equal-size measurement, None if it has none (or one without values)."""
    at = result.distinct_at_size
    return at if isinstance(at, dict) and at.get("values") else None


def _common_size(rows: list[DiversityResult]) -> dict[str, Any] | None:
    """The equal-size measurement when every data set has one at the same size, else None."""
    ats = [_at_size(r) for r in rows]
    measured = [at for at in ats if at is not None]
    if len(measured) < len(ats):
        return None
    sizes = {at["size"] for at in measured}
    if len(sizes) != 1:
        return None
    seeds = sorted({str(at.get("seeds", "?")) for at in measured})
    return {"size": sizes.pop(), "seeds": "/".join(seeds)}


def _curve(result: DiversityResult, at_size: bool) -> dict[str, float | None]:
    """distinct-n by n (full set, or at the equal size); None where the set has no n-grams
    that long (results since issue 8 count them in ``ngrams``), so it is not read as 0."""
    source = (_at_size(result) or {}).get("values") if at_size else result.distinct
    curve = source if isinstance(source, dict) else {}
    totals = result.ngrams if isinstance(result.ngrams, dict) else {}
    return {n: None if totals.get(n) == 0 else _num(curve.get(n)) for n in NS}


def _size_text(result: DiversityResult) -> str:
    return "?" if result.n_prompts is None else str(result.n_prompts)


def _distinct_figure(path: Path, rows: list[DiversityResult], names: list[str],
                     colors: list[Any],
                     at: dict[str, Any] | None) -> Path:
    """distinct-n curves at ONE sample size: the equal size all sets were measured at, or else
    each set's full size (then the title says so and gives the sizes)."""
    import numpy as np

    fig = _figure(7.0, 4.8)
    ax = fig.add_subplot()
    xs = [int(n) for n in NS]
    for r, name, color in zip(rows, names, colors, strict=True):
        curve = _curve(r, at_size=at is not None)
        label = name if at else f"{name} (n={_size_text(r)})"
        ys = [np.nan if curve[n] is None else curve[n] for n in NS]  # a gap: no n-grams
        ax.plot(xs, ys, marker="o", color=color, label=label)
    ax.set_xlabel("n (word n-gram length)")
    ax.set_ylabel(f"distinct-n (more diverse), {HIGHER}")
    ax.set_xticks(xs)
    ax.set_ylim(0, 1.05)
    if at:
        title = (f"Distinct-n at an equal size: {at['size']} prompts per data set\n"
                 f"(mean of {at['seeds']} random subsamples)")
    else:
        sizes = list(dict.fromkeys(_size_text(r) for r in rows))
        title = (f"Distinct-n of the full data sets ({sizes[0]} prompts each)" if len(sizes) == 1
                 else f"Distinct-n at each set's full size (n = {', '.join(sizes)}; "
                 "not an equal size)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _display_names(rows: list[DiversityResult]) -> list[str]:
    """Result names; a name two sources share gets its source, so no row is taken for another."""
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.name] = counts.get(r.name, 0) + 1
    return [r.name if counts[r.name] == 1 else f"{r.name} ({r.source or '?'})" for r in rows]


def _coverage_lines(names: list[str], rows: list[DiversityResult]) -> list[str]:
    """Coverage of the taxonomy by each data set (Data Advisor against Self-Instruct): the
    categories covered, the normalised entropy, and the prompts per category side by side."""
    covered = [(name, r.taxonomy_coverage) for name, r in zip(names, rows, strict=True)
               if r.taxonomy_coverage]
    if not covered:
        return []
    taxonomy = covered[0][1]["taxonomy"]
    categories = list(dict.fromkeys(c for _, cov in covered for c in cov["counts"]))
    return [
        f"Coverage of the taxonomy ({taxonomy}; a run's prompts as its prompt judge placed "
        "them, another data set's categories where they name one): categories covered and the "
        "normalised entropy of the prompts per category (1.0: all equally many; higher is "
        "broader).", "",
        _table(["data set", "covered", "labelled", "unlabelled", "entropy"],
               [[name, f"{cov['covered']}/{cov['categories']}", cov["labelled"],
                 cov["unlabelled"], f"{cov['entropy']:.3f}"] for name, cov in covered]), "",
        _table(["taxonomy category", *(name for name, _ in covered)],
               [[c, *(cov["counts"].get(c, "–") for _, cov in covered)] for c in categories]),
        "",
    ]


def _diversity_section(latest: Latest, out: Path, colors: dict[str, Any],
                       figures: list[Path]) -> list[str]:
    rows = _of_kind(latest, DiversityResult)
    if not rows:
        return []
    order = _order((r.name for r in rows), LABEL_ORDER)
    rows = sorted(rows, key=lambda r: order.index(r.name))
    names = _display_names(rows)

    def fmt(curve: dict[str, float | None], n: str) -> str:
        return "–" if curve[n] is None else f"{curve[n]:.3f}"

    def count(value: Any) -> Any:
        return len(value) if isinstance(value, list | dict | tuple) else value

    full = [[name, r.n_prompts, *(fmt(_curve(r, False), n) for n in NS),
             count(r.categories), _pct(r.near_duplicate_rate)]
            for name, r in zip(names, rows, strict=True)]
    lines = ["## Diversity: distinct-n (paper Fig. 5)", "",
             "Distinct word n-grams / all word n-grams (higher is more diverse); near-dup: % of "
             "prompts that are a near-duplicate of an earlier one (lower is better)"
             + ("; –: no n-grams that long (every prompt is shorter)."
                if any(None in _curve(r, False).values() for r in rows) else "."), "",
             "Each data set at its full size:", "",
             _table(["data set", "prompts", *(f"d-{n}" for n in NS), "categories",
                     "near-dup %"], full), ""]
    lines += _coverage_lines(names, rows)
    sized = [(name, r, at) for name, r in zip(names, rows, strict=True)
             if (at := _at_size(r)) is not None]
    if sized:
        lines += ["At an equal size (mean over random subsamples; comparable across data sets "
                  "of different sizes):", "",
                  _table(["data set", "size", "seeds", *(f"d-{n}" for n in NS)],
                         [[name, at.get("size"), at.get("seeds"),
                           *(fmt(_curve(r, True), n) for n in NS)] for name, r, at in sized]),
                  ""]
    at = _common_size(rows)
    if at:
        shown = f"The figure shows distinct-n at {at['size']} prompts per data set."
    else:
        shown = "The figure shows each data set at its full size"
        if len({r.n_prompts for r in rows}) > 1:
            shown += (" (the sizes differ and distinct-n falls as a set grows: measure all of "
                      "them with the same `--size` to compare)")
        shown += "."
    figure = _distinct_figure(out / "distinct_n.png", rows, names,
                              [colors[r.name] for r in rows], at)
    figures.append(figure)
    return lines + [shown, "", f"![distinct-n]({figure.name})", ""]


# -- details ------------------------------------------------------------------------------------


def _flags(flags: Sequence[tuple[str, Any]]) -> str:
    """``malformed 0, empty 1``: the counts a result has (None: not counted)."""
    return ", ".join(f"{word} {value}" for word, value in flags if value is not None)


def _adapter_text(r: ModelResult) -> str | None:
    """The adapter by its content hash when the result has one (the label names it; its
    folder path says nothing on another machine), else by its path."""
    identity = (r.model_identity or {}).get("adapter")
    if isinstance(identity, dict) and identity.get("sha256"):
        return f"LoRA sha256 {str(identity['sha256'])[:12]}"
    return r.adapter


def _details_section(latest: Latest, several: bool) -> list[str]:
    rows = []
    for (kind, ds, label), r in latest.items():
        if isinstance(r, SafetyResult):
            what = _measure_name(_measure(r), r.measure_label).removesuffix(" rate")
            how, metric = _judge_text(r.judge), f"{what} {_pct(r.harmful_rate)}"
            flags = _flags((("malformed", r.malformed), ("empty", r.empty_responses)))
        elif isinstance(r, OverrefusalResult):
            how, metric = _judge_text(r.judge), f"refusal {_pct(r.refusal_rate)}"
            flags = _flags((("empty", r.extra.get("empty_responses")),))
        elif isinstance(r, UtilityResult):
            how = f"{r.method or '?'} / {r.backend or '?'}"
            metric = f"accuracy {_pct(r.accuracy)}"
            flags = _flags((("unparsed", r.unparsed),))
        else:
            continue  # diversity: its own section
        served = (r.serving or {}).get("adapter_served_as") if r.adapter else None
        adapter = _adapter_text(r)
        if served == "merged":
            adapter = f"{adapter} (served merged)"
        who = [r.target, _label(r)] if several else [label]
        rows.append([kind, ds, *who, r.model, adapter, how, r.n, metric, flags])
    if not rows:
        return []
    return ["## Result details", "",
            _table(["kind", "data set", *(["target"] if several else []), "label", "model",
                    "adapter", "judge / method", "n", "metric (%)", "flags"], rows,
                   10 if several else 9), ""]


# -- entry point --------------------------------------------------------------------------------


def build_report(results: Source | Iterable[Source], out_dir: str | Path) -> Path:
    """Render ``report.md`` and the PNG plots into ``out_dir``; return the report's path.

    ``results``: results (:mod:`evaluation.results`), result dicts, JSON files, folders (their
    ``*.json``) or glob patterns, or a list of them. Files that are not results are skipped
    and listed in the report.
    """
    loaded, skipped = load_results(results)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    latest, notes = _latest([r for r in loaded if isinstance(r, DiversityResult)])
    scored = [r for r in loaded if not isinstance(r, DiversityResult)]
    groups, target_notes = _by_target(_last_iteration(scored))
    notes += target_notes
    # one colour per label or data set name in every figure (data_advisor is data_advisor)
    colors = _palette(_order([*(r.name for r in _of_kind(latest, DiversityResult)),
                              *(label for _, lt in groups for _, _, label in lt)], LABEL_ORDER))
    figures: list[Path] = []
    sections = (_summary_section(groups, out, colors, figures)
                + _iterations_section(scored)
                + _category_sections(groups, out, colors, figures)
                + _diversity_section(latest, out, colors, figures)
                + _details_section(_union(groups), len(groups) > 1))
    lines = ["# Data Advisor evaluation report", "", *(sections or ["No results to report.", ""])]
    if notes or skipped:
        lines += ["## Notes", "", *(f"- {n}" for n in notes + [f"skipped {s}" for s in skipped]),
                  ""]
    path = out / "report.md"
    path.write_text("\n".join(lines), "utf-8")
    return path
