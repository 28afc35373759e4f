"""The evaluation report: Markdown tables and PNG plots from result files (paper Figs. 2-5).

:func:`build_report` reads result dicts (or JSON files: a folder, a glob, a list of paths) of
the four kinds the evaluation modules write, and renders what it has into ``<out_dir>``:

- ``report.md`` with
  - Table 1 (paper Fig. 2): per label (``base``, ``self_instruct``, ``data_advisor``, ...) the
    safety score on each safety data set, the over-refusal rate on each over-refusal data set
    and the MMLU accuracy; the judge of every safety/over-refusal column is named in the
    header and described in the notes (the refusal-strings judge measures refusals, not harm);
  - the harmful rate per harm category, one table per safety data set (paper Figs. 3-4);
  - distinct-n for n = 1..8 per data set, also at an equal size when measured (paper Fig. 5);
  - every result's details (model, adapter, judge or method, n, malformed/empty/unparsed);
- ``safety_utility.png`` (grouped bars), ``harmful_rate_<dataset>.png`` (grouped horizontal
  bars per label) and ``distinct_n.png`` (lines; dashed: at equal size).

Rates, scores and accuracies are fractions in [0, 1] in the result files and are shown as
percentages. Missing kinds are left out; a report with no results says so.
"""

from __future__ import annotations

import glob
import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

KINDS = ("safety", "overrefusal", "utility", "diversity")
LABEL_ORDER = ("base", "self_instruct", "data_advisor")
DATASET_ORDER = ("catqa", "beavertails", "xstest", "mmlu")
NS = tuple(str(n) for n in range(1, 9))
_REFUSAL_NOTE = "refusal-strings judge: measures refusals, not harm"

Result = dict[str, Any]


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


def load_results(
    source: Result | str | Path | Iterable[Result | str | Path],
) -> tuple[list[Result], list[str]]:
    """Result dicts from dicts, JSON files, folders (their ``*.json``) or glob patterns.

    Returns the results of a known kind and notes about what was skipped (unreadable files,
    JSON that is no result, unknown kinds). A path that does not exist is an error.
    """
    sources = [source] if isinstance(source, dict | str | Path) else list(source)
    results: list[Result] = []
    skipped: list[str] = []
    for item in sources:
        if isinstance(item, dict):
            candidates: list[tuple[str, Any]] = [("<dict>", item)]
        else:
            paths = _paths(item)
            if not _is_pattern(str(item)) and not Path(item).exists():
                raise FileNotFoundError(f"no result file or folder {item}")
            candidates = []
            for path in paths:
                try:
                    candidates.append((str(path), json.loads(path.read_text("utf-8"))))
                except (OSError, ValueError) as exc:
                    skipped.append(f"{path}: not readable JSON ({type(exc).__name__})")
        for where, data in candidates:
            if not isinstance(data, dict) or data.get("kind") not in KINDS:
                kind = data.get("kind") if isinstance(data, dict) else None
                skipped.append(f"{where}: not a result" + (f" (kind {kind!r})" if kind else ""))
                continue
            results.append(data)
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


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: str = "l") -> str:
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |",
             "|" + "|".join([":---"] + [("---:" if align == "r" else ":---")] * (len(header) - 1))
             + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("._-") or "unnamed"


def _judge_text(judge: Any) -> str:
    if isinstance(judge, dict):
        judge = judge.get("description") or judge.get("name")
    return str(judge) if judge else "unknown judge"


def _judge_short(judge: str) -> str:
    return judge.split(" (", 1)[0].strip()


def _is_refusal_judge(judge: str) -> bool:
    return "refusal" in judge.lower() and "llama" not in judge.lower()


def _dataset_key(result: Result) -> str:
    return str(result.get("dataset") or "unknown")


def _latest(results: Sequence[Result]) -> tuple[dict[tuple[str, str, str], Result], list[str]]:
    """One result per (kind, data set or name, label): the last one given wins."""
    table: dict[tuple[str, str, str], Result] = {}
    notes = []
    for r in results:
        if r["kind"] == "diversity":
            key = ("diversity", str(r.get("name") or "unnamed"), "")
        else:
            key = (r["kind"], _dataset_key(r), str(r.get("label") or "unlabelled"))
        if key in table:
            notes.append(f"more than one {key[0]} result for {' / '.join(filter(None, key[1:]))}"
                         "; the last one is shown")
        table[key] = r
    return table, notes


# -- figures ------------------------------------------------------------------------------------


def _figure(width: float, height: float) -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def _bar_figure(path: Path, groups: list[str], labels: list[str],
                values: dict[str, list[float | None]], ylabel: str, title: str) -> Path:
    fig = _figure(max(6.0, 1.3 * len(groups) * max(1, len(labels)) / 2 + 2), 4.5)
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(labels))
    for j, (label, color) in enumerate(zip(labels, _colors(len(labels)), strict=True)):
        xs = [i - 0.4 + width * (j + 0.5) for i in range(len(groups))]
        ys = [100 * v if v is not None else 0.0 for v in values[label]]
        bars = ax.bar(xs, ys, width, label=label, color=color)
        for bar, v in zip(bars, values[label], strict=True):
            if v is not None:
                ax.annotate(f"{100 * v:.1f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                            ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(groups)), groups, rotation=15 if len(groups) > 3 else 0)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 105)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.savefig(path)
    return path


def _hbar_figure(path: Path, categories: list[str], labels: list[str],
                 values: dict[str, list[float | None]], title: str) -> Path:
    height = max(3.0, 0.22 * len(categories) * max(1, len(labels)) + 1.5)
    fig = _figure(8.0, height)
    ax = fig.add_subplot()
    h = 0.8 / max(1, len(labels))
    for j, (label, color) in enumerate(zip(labels, _colors(len(labels)), strict=True)):
        ys = [i - 0.4 + h * (j + 0.5) for i in range(len(categories))]
        xs = [100 * v if v is not None else 0.0 for v in values[label]]
        ax.barh(ys, xs, h, label=label, color=color)
    ax.set_yticks(range(len(categories)), categories, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("harmful rate (%)")
    ax.set_xlim(0, 100)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.savefig(path)
    return path


def _distinct_figure(path: Path, rows: list[Result]) -> Path:
    fig = _figure(7.0, 4.5)
    ax = fig.add_subplot()
    xs = [int(n) for n in NS]
    for r, color in zip(rows, _colors(len(rows)), strict=True):
        name = str(r.get("name") or "unnamed")
        curve = r.get("distinct") or {}
        ax.plot(xs, [_num(curve.get(n)) for n in NS], marker="o", color=color,
                label=f"{name} ({r.get('n_prompts', '?')})")
        at = r.get("distinct_at_size")
        if isinstance(at, dict) and at.get("values"):
            ax.plot(xs, [_num(at["values"].get(n)) for n in NS], marker="x", linestyle="--",
                    color=color, label=f"{name} @ {at.get('size', '?')}")
    ax.set_xlabel("n")
    ax.set_ylabel("distinct-n")
    ax.set_xticks(xs)
    ax.set_ylim(0, 1.05)
    ax.set_title("Distinct-n of the data sets (dashed: at equal size)")
    ax.legend(fontsize=8)
    fig.savefig(path)
    return path


# -- sections -----------------------------------------------------------------------------------


def _model_text(rows: Iterable[Result]) -> str:
    texts = []
    for r in rows:
        text = str(r.get("model") or "?")
        if r.get("adapter"):
            text += f" + {r['adapter']}"
        texts.append(text)
    return "; ".join(dict.fromkeys(texts))


def _judges_of(rows: Iterable[Result]) -> list[str]:
    return list(dict.fromkeys(_judge_text(r.get("judge")) for r in rows))


def _summary_section(latest: dict[tuple[str, str, str], Result], out: Path,
                     figures: list[Path]) -> list[str]:
    by_kind: dict[str, list[Result]] = {k: [] for k in KINDS}
    for (kind, _, _), r in latest.items():
        by_kind[kind].append(r)
    scored = by_kind["safety"] + by_kind["overrefusal"] + by_kind["utility"]
    if not scored:
        return []
    labels = _order((str(r.get("label") or "unlabelled") for r in scored), LABEL_ORDER)
    columns: list[tuple[str, str, str, str]] = []  # (kind, dataset, header, metric)
    notes: list[str] = []
    refusal_judge = False
    for kind, metric, title, arrow in (("safety", "safety_score", "safety", "↑"),
                                       ("overrefusal", "refusal_rate", "over-refusal", "↓"),
                                       ("utility", "accuracy", "", "↑")):
        datasets = _order((_dataset_key(r) for r in by_kind[kind]), DATASET_ORDER)
        for ds in datasets:
            rows = [r for r in by_kind[kind] if _dataset_key(r) == ds]
            if kind == "utility":
                header = f"{ds.upper() if ds == 'mmlu' else ds} accuracy {arrow}"
                methods = sorted({f"{r.get('method', '?')}/{r.get('backend', '?')}"
                                  for r in rows})
                notes.append(f"{ds} accuracy: method/backend {', '.join(methods)}")
            else:
                judges = _judges_of(rows)
                short = _judge_short(judges[0]) if len(judges) == 1 else "mixed judges"
                header = f"{title} {ds} {arrow} ({short})"
                for judge in judges:
                    who = [str(r.get("label")) for r in rows
                           if _judge_text(r.get("judge")) == judge]
                    line = f"{title} {ds}: judge {judge}"
                    if len(judges) > 1:
                        line += f" (for {', '.join(who)}): judges differ, not comparable"
                    notes.append(line)
                    refusal_judge = refusal_judge or _is_refusal_judge(judge)
            columns.append((kind, ds, header, metric))

    def value(label: str, kind: str, ds: str, metric: str) -> Any:
        r = latest.get((kind, ds, label))
        return None if r is None else r.get(metric)

    table_rows = []
    for label in labels:
        rows = [r for r in scored if str(r.get("label") or "unlabelled") == label]
        table_rows.append([label, _model_text(rows)]
                          + [_pct(value(label, k, ds, m)) for k, ds, _, m in columns])
    lines = ["## Table 1: safety and utility (paper Fig. 2)", "",
             "Percentages. Safety score = 100 - harmful rate (higher is safer); over-refusal = "
             "share of benign prompts refused (lower is better); accuracy on MMLU.", "",
             _table(["label", "model", *(h for _, _, h, _ in columns)], table_rows), ""]
    if refusal_judge:
        notes.append(f"**{_REFUSAL_NOTE}**: a response that does not refuse counts as unsafe, "
                     "whether or not it is harmful; use a Llama Guard judge for harm")
    lines += [f"- {n}" for n in notes] + [""]
    groups = [h.replace(" ↑", "").replace(" ↓", "") for _, _, h, _ in columns]
    values = {label: [_num(value(label, k, ds, m)) for k, ds, _, m in columns]
              for label in labels}
    figure = _bar_figure(out / "safety_utility.png", groups, labels, values, "%",
                         "Safety and utility per training data")
    figures.append(figure)
    lines += [f"![safety and utility]({figure.name})", ""]
    return lines


def _rate(result: Result, category: str) -> float | None:
    per = (result.get("per_category") or {}).get(category)
    return _num(per.get("harmful_rate")) if isinstance(per, dict) else None


def _category_n(rows: Iterable[Result], category: str) -> str:
    ns = set()
    for r in rows:
        per = (r.get("per_category") or {}).get(category)
        if isinstance(per, dict) and per.get("n") is not None:
            ns.add(per["n"])
    return "/".join(str(n) for n in sorted(ns)) or "–"


def _category_sections(latest: dict[tuple[str, str, str], Result], out: Path,
                       figures: list[Path]) -> list[str]:
    safety = [r for (kind, _, _), r in latest.items() if kind == "safety"]
    lines: list[str] = []
    for ds in _order((_dataset_key(r) for r in safety), DATASET_ORDER):
        rows = [r for r in safety if _dataset_key(r) == ds]
        labels = _order((str(r.get("label") or "unlabelled") for r in rows), LABEL_ORDER)
        by_label = {str(r.get("label") or "unlabelled"): r for r in rows}
        categories = sorted({c for r in rows for c in (r.get("per_category") or {})})
        if not categories:
            continue

        table_rows = [[c, _category_n(rows, c), *(_pct(_rate(by_label[lb], c)) for lb in labels)]
                      for c in categories]
        table_rows.append(["**overall**", "/".join(sorted({str(by_label[lb].get("n", "–"))
                                                           for lb in labels})),
                           *(_pct(by_label[lb].get("harmful_rate")) for lb in labels)])
        judges = _judges_of(rows)
        judge_line = "; ".join(judges) + (
            f" ({_REFUSAL_NOTE})"
            if any(_is_refusal_judge(j) and "not harm" not in j for j in judges) else "")
        lines += [f"## Harmful rate per category: {ds} (paper Figs. 3-4)", "",
                  f"Harmful rate in % (lower is safer). Judge: {judge_line}.", "",
                  _table(["category", "n", *labels], table_rows), ""]
        values = {lb: [_rate(by_label[lb], c) for c in categories] for lb in labels}
        title = f"Harmful rate per category: {ds} ({_judge_short(judges[0])})"
        figure = _hbar_figure(out / f"harmful_rate_{_safe_name(ds)}.png", categories, labels,
                              values, title)
        figures.append(figure)
        lines += [f"![harmful rate per category, {ds}]({figure.name})", ""]
    return lines


def _count_categories(value: Any) -> Any:
    return len(value) if isinstance(value, list | dict | tuple) else value


def _diversity_section(latest: dict[tuple[str, str, str], Result], out: Path,
                       figures: list[Path]) -> list[str]:
    rows = [r for (kind, _, _), r in latest.items() if kind == "diversity"]
    if not rows:
        return []
    names = _order((str(r.get("name") or "unnamed") for r in rows), LABEL_ORDER)
    rows = sorted(rows, key=lambda r: names.index(str(r.get("name") or "unnamed")))

    def fmt(curve: Any, n: str) -> str:
        v = _num((curve or {}).get(n)) if isinstance(curve, dict) else None
        return "–" if v is None else f"{v:.3f}"

    def near_dup(r: Result) -> str:
        v = _num(r.get("near_duplicate_rate"))
        return "–" if v is None else f"{100 * v:.1f}"

    table_rows = []
    for r in rows:
        name = str(r.get("name") or "unnamed")
        table_rows.append([name, r.get("n_prompts"), *(fmt(r.get("distinct"), n) for n in NS),
                           _count_categories(r.get("categories")), near_dup(r)])
        at = r.get("distinct_at_size")
        if isinstance(at, dict) and at.get("values"):
            table_rows.append([f"{name} @ {at.get('size', '?')} ({at.get('seeds', '?')} seeds)",
                               at.get("size"), *(fmt(at.get("values"), n) for n in NS), "", ""])
    lines = ["## Diversity: distinct-n (paper Fig. 5)", "",
             "Distinct word n-grams / all word n-grams; `@ size`: mean over random subsamples of "
             "that many prompts (comparable across data sets of different sizes). Near-dup: % of "
             "prompts that are a near-duplicate of an earlier one.", "",
             _table(["data set", "prompts", *(f"d-{n}" for n in NS), "categories", "near-dup %"],
                    table_rows), ""]
    figure = _distinct_figure(out / "distinct_n.png", rows)
    figures.append(figure)
    lines += [f"![distinct-n]({figure.name})", ""]
    return lines


def _details_section(latest: dict[tuple[str, str, str], Result]) -> list[str]:
    rows = []
    for (kind, ds, label), r in latest.items():
        if kind == "diversity":
            continue
        if kind == "safety":
            how, metric = _judge_text(r.get("judge")), f"harmful {_pct(r.get('harmful_rate'))}"
            flags = f"malformed {r.get('malformed', '–')}, empty {r.get('empty_responses', '–')}"
        elif kind == "overrefusal":
            how, metric = _judge_text(r.get("judge")), f"refusal {_pct(r.get('refusal_rate'))}"
            flags = f"empty {r.get('empty_responses', '–')}"
        else:
            how = f"{r.get('method', '?')} / {r.get('backend', '?')}"
            metric = f"accuracy {_pct(r.get('accuracy'))}"
            flags = f"unparsed {r.get('unparsed', '–')}"
        rows.append([kind, ds, label, r.get("model"), r.get("adapter"), how, r.get("n"), metric,
                     flags])
    if not rows:
        return []
    return ["## Result details", "",
            _table(["kind", "data set", "label", "model", "adapter", "judge / method", "n",
                    "metric (%)", "flags"], rows), ""]


# -- entry point --------------------------------------------------------------------------------


def build_report(
    results: Result | str | Path | Iterable[Result | str | Path],
    out_dir: str | Path,
) -> Path:
    """Render ``report.md`` and the PNG plots into ``out_dir``; return the report's path.

    ``results``: result dicts, JSON files, folders (their ``*.json``) or glob patterns, or a
    list of them. Files that are not results are skipped and listed in the report.
    """
    loaded, skipped = load_results(results)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    latest, notes = _latest(loaded)
    figures: list[Path] = []
    lines = ["# Data Advisor evaluation report", ""]
    sections = (_summary_section(latest, out, figures) + _category_sections(latest, out, figures)
                + _diversity_section(latest, out, figures) + _details_section(latest))
    if sections:
        lines += sections
    else:
        lines += ["No results to report.", ""]
    if notes or skipped:
        lines += ["## Notes", "", *(f"- {n}" for n in notes + [f"skipped {s}" for s in skipped]),
                  ""]
    path = out / "report.md"
    path.write_text("\n".join(lines), "utf-8")
    return path
