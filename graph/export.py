"""Export a run's data for training tools: JSONL, Parquet, HF `datasets` folders and a card.

Three forms of the same rows, each written in every requested format:

- ``data``: the run's columns ``id, prompt, response, category, taxonomy_category, round,
  method, generator_model, responder_model`` (what ``training/`` and ``evaluation/`` read):
  ``data.jsonl``, ``data.parquet``, ``hf/``;
- ``messages``: TRL's conversational form, ``messages = [{"role": "user", "content": prompt},
  {"role": "assistant", "content": response}]``: ``messages.jsonl``, ``messages.parquet``,
  ``hf-messages/``;
- ``prompt_completion``: TRL's standard prompt-completion form, ``prompt`` and ``completion``
  strings: ``prompt_completion.jsonl``, ``prompt_completion.parquet``, ``hf-prompt_completion/``.

The training forms keep ``id`` and ``category`` beside their columns (TRL ignores other
columns). Only prompts with a non-empty response are exported, in every form; the card counts
the others. The dataset card, ``README.md`` at the export root (and in each ``hf*`` folder),
has the Hub's YAML metadata (size category from the real row count, one config per form), the
generation settings (``run.json``'s method and context, endpoint credentials removed, and the
sha256 of the templates the run recorded), category counts, the coverage of the taxonomy
when the run had a prompt judge (``tools.taxonomy.coverage``) and a content warning.
:func:`push_to_hub` uploads the card with the JSONL / Parquet files (private by default).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from datasets import Dataset
from huggingface_hub import DatasetCard, DatasetCardData

from graph.runner import Run
from tools.store import RunStore
from tools.taxonomy import coverage, coverage_line, load_taxonomy

FORMATS = ("jsonl", "parquet", "hf")
FORMS = ("data", "messages", "prompt_completion")
COLUMNS = (
    "id",
    "prompt",
    "response",
    "category",
    "taxonomy_category",
    "round",
    "method",
    "generator_model",
    "responder_model",
)
TEMPLATES_OF_METHOD = {
    "data_advisor": ("weakness_critic", "weakness_critic_batch", "generator", "summarizer",
                     "summarizer_batch", "summarizer_delta", "responder", "prompt_judge"),
    "self_instruct": ("self_instruct_generator", "responder", "prompt_judge"),
}
"""The templates each method's nodes use (``graph/templates/``; the ``_batch`` ones when a
round has several weaknesses; ``summarizer_delta`` with ``summary_update = "delta"``;
``prompt_judge`` recorded only when the run's judge is ``llm``)."""
SIZE_CATEGORIES = ("n<1K", "1K<n<10K", "10K<n<100K", "100K<n<1M", "1M<n<10M", "10M<n<100M",
                   "100M<n<1B", "1B<n<10B", "10B<n<100B", "100B<n<1T")
"""The Hub's size buckets, by powers of ten from 10^3 on (``n>1T`` above)."""


def export_rows(store: RunStore) -> list[dict[str, Any]]:
    """The run's answered samples as export rows."""
    return [
        {
            "id": r["id"],
            "prompt": r["prompt"],
            "response": r["response"],
            "category": r["weakness"],
            "taxonomy_category": r.get("taxonomy_category"),
            "round": r["round"],
            "method": r["method"],
            "generator_model": r["generator_model"],
            "responder_model": r["responder_model"],
        }
        for r in store.samples(with_response=True)
    ]


def _messages(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "category": row["category"],
        "messages": [
            {"role": "user", "content": row["prompt"]},
            {"role": "assistant", "content": row["response"]},
        ],
    }


def _prompt_completion(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "category": row["category"],
        "prompt": row["prompt"],
        "completion": row["response"],
    }


_FORM_ROWS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "data": lambda row: row,
    "messages": _messages,
    "prompt_completion": _prompt_completion,
}


def size_category(n: int) -> str:
    """The Hub's ``size_categories`` bucket of ``n`` rows (``1K<n<10K`` holds 1,000 to 9,999)."""
    bucket, limit = 0, 1_000
    while n >= limit:
        bucket, limit = bucket + 1, limit * 10
    return SIZE_CATEGORIES[bucket] if bucket < len(SIZE_CATEGORIES) else "n>1T"


def file_name(form: str, fmt: str) -> str:
    """The path of one form in one format, relative to the export root."""
    if fmt == "hf":
        return "hf" if form == "data" else f"hf-{form}"
    return f"{form}.{fmt}"


# --- the run's settings ------------------------------------------------------------------------


def _without_credentials(value: Any) -> Any:
    """A URL without its ``user:password@`` part; anything else unchanged."""
    if not isinstance(value, str) or "@" not in value or "://" not in value:
        return value
    parts = urlsplit(value)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=host))


def run_settings(run: Run) -> dict[str, Any]:
    """What ``run.json`` records of a run (method, server, every context field, the endpoint
    changes made on resume) for its card."""
    context = {k: _without_credentials(v) for k, v in run.context.to_dict().items()
               if k not in run.unrecorded}  # a default the run may not have used is no record
    context.pop("data_path", None)  # a local path, not a setting
    history = [
        {k: _without_credentials(v) for k, v in change.items()} for change in run.history
    ]
    return {
        "method": run.method,
        "embedded": run.embedded,
        "embedded_model": run.embedded_model,
        "context": context,
        "unrecorded": sorted(run.unrecorded),
        "history": history,
    }


# --- the dataset card --------------------------------------------------------------------------


FORM_TABLE = [
    ("`data`", "id, prompt, response, category, taxonomy_category, round, method, "
     "generator_model, responder_model", "`default`"),
    ("`messages`", "messages (user prompt, assistant response), id, category", "`messages`"),
    ("`prompt_completion`", "prompt, completion (strings), id, category", "`prompt_completion`"),
]


def _unrecorded_note(names: list[str]) -> str:
    """A line naming the settings the run predates (they are not in its ``run.json``)."""
    if not names:
        return ""
    return (f"\nNot recorded (the run was made before these settings existed; what it used is "
            f"not known): {', '.join(f'`{n}`' for n in names)}.\n")


def _table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> str:
    """A Markdown table (cells on one line, ``|`` escaped)."""

    def line(cells: tuple[Any, ...]) -> str:
        text = (str(c).replace("|", "\\|").replace("\n", " ") for c in cells)
        return "| " + " | ".join(text) + " |"

    lines = [line(header), "|" + "---|" * len(header)]
    lines += [line(r) for r in rows] or [line(("-",) * len(header))]
    return "\n".join(lines)


def _value(value: Any) -> str:
    """A setting as the card shows it: text as it is, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _template_section(method: str, recorded: list[dict[str, Any]]) -> str:
    used = TEMPLATES_OF_METHOD.get(method)
    rows = [r for r in recorded if used is None or r["name"] in used]
    if not rows:
        return (
            "The run did not record its templates' hashes (it was made before data-advisor "
            "recorded them)."
        )
    names = Counter(r["name"] for r in rows)
    lines = ["| template | sha256 | from round |", "|---|---|---|"]
    lines += [f"| {r['name']} | `{r['sha256']}` | {r['from_round']} |" for r in rows]
    note = ""
    if any(n > 1 for n in names.values()):
        note = "\n\nSome templates changed during the run: each hash applies from its round on."
    return "sha256 of each template text the run started (or restarted) with.\n\n" + "\n".join(
        lines
    ) + note


def _models(rows: list[dict[str, Any]], settings: dict[str, Any]) -> list[tuple[str, str]]:
    """The models that wrote the rows (from the rows), and the advisor (from the settings)."""
    ctx = settings.get("context") or {}
    generators = sorted({r["generator_model"] for r in rows if r["generator_model"]})
    responders = sorted({r["responder_model"] for r in rows if r["responder_model"]})
    advisor = ctx.get("advisor_model") or ctx.get("model") or "-"
    if settings.get("embedded") and not ctx.get("advisor_model"):
        advisor = settings.get("embedded_model") or "the embedded default model"
    models = [("generator", ", ".join(generators) or "-"),
              ("responder", ", ".join(responders) or "-")]
    if settings.get("method") != "self_instruct":
        models.insert(0, ("advisor (weakness critic, summarizer)", advisor))
    return models


def _history_section(history: list[dict[str, Any]]) -> str:
    if not history:
        return ""
    rows = [(c.get("time", "-"), c.get("field", "-"), _value(c.get("old")), _value(c.get("new")))
            for c in history]
    return (
        "\nEndpoints changed on resume (the rows after a change were written by the new one):"
        f"\n\n{_table(('time', 'field', 'old', 'new'), rows)}\n"
    )


def _embedded(settings: dict[str, Any]) -> str:
    if "embedded" not in settings:
        return "-"
    if not settings["embedded"]:
        return "no"
    return f"yes, serving {settings.get('embedded_model') or 'the default model'}"


def _configs(files: dict[str, str]) -> list[dict[str, Any]]:
    """One Hub config per form, on its Parquet file (else its JSONL file)."""
    configs = []
    for form, path in files.items():
        name = "default" if form == "data" else form
        configs.append({"config_name": name, "data_files": [{"split": "train", "path": path}]})
    return configs


def _coverage_section(rows: list[dict[str, Any]], ctx: dict[str, Any]) -> str:
    """The card's coverage of the taxonomy (a run with a prompt judge only)."""
    if not ctx.get("judge"):
        return ""
    cov = coverage([r.get("taxonomy_category") for r in rows], load_taxonomy(ctx.get("taxonomy")))
    return f"""
## Coverage of the taxonomy

The prompt judge (`{ctx["judge"]}`) placed each kept prompt in a category of a fixed taxonomy:
{coverage_line(cov)}; {cov["unlabelled"]} rows without a category.

{_table(("taxonomy category", "rows"), list(cov["counts"].items()))}
"""


def dataset_card(
    name: str,
    rows: list[dict[str, Any]],
    *,
    settings: dict[str, Any],
    counts: dict[str, int],
    templates: list[dict[str, Any]],
    files: dict[str, str],
    license: str | None = None,
) -> str:
    """The dataset card: Hub metadata, content warning, settings, templates, categories.

    ``files`` maps each form to the data file its Hub config reads; ``counts`` are the run
    store's (prompts kept, answered, rejected).
    """
    method = settings.get("method") or "-"
    data = DatasetCardData(
        pretty_name=name,
        license=license,
        task_categories=["text-generation"],
        size_categories=[size_category(len(rows))],
        annotations_creators=["machine-generated"],
        source_datasets=["original"],
        tags=["safety", "alignment", "synthetic", "data-advisor", method,
              "not-for-all-audiences"],
        configs=_configs(files) or None,
    )
    unanswered = counts.get("prompts", len(rows)) - len(rows)
    methods = Counter(r["method"] for r in rows)
    categories = Counter(r["category"] or "(none)" for r in rows)
    ctx = settings.get("context") or {}
    history = settings.get("history") or []
    main_settings = [
        ("method", method),
        *_models(rows, settings),
        ("principles", ctx.get("principles", "-") if method != "self_instruct" else "-"),
        ("K (prompts per round)", ctx.get("prompts_per_round", "-")),
        ("seed", ctx.get("seed", "-")),
        ("rounds planned / recorded", f"{ctx.get('rounds', '-')} / {counts.get('rounds', '-')}"),
        ("embedded vLLM server", _embedded(settings)),
    ]
    license_line = (
        f"License: `{license}`." if license else
        "License: not set (it depends on the licenses of the models that wrote the data; "
        "`data-advisor export --license ID` sets it)."
    )
    body = f"""
# {name}

Synthetic safety-alignment data generated with **data-advisor**
(Data Advisor, dynamic data curation, arXiv 2410.05269).

> **Content warning:** the prompts are harmful requests written on purpose (violence, crime,
> abuse, ...). They are training data for refusals and safe responses: do not use them as a
> source of harmful content, and keep them out of anything that would act on them. The
> responses were written by a model and are not guaranteed to be safe.

- rows: {len(rows)} (prompts with a response)
- prompts without a response: {unanswered} (not exported, in any form)
- generator outputs rejected by the filters: {counts.get("rejected", "-")}
- methods: {", ".join(f"{m} ({n})" for m, n in methods.items()) or "-"}
- {license_line}

## Forms

{_table(("form", "columns", "Hub config"), FORM_TABLE)}

`messages` is TRL's conversational form, `prompt_completion` its standard prompt-completion form.
From the Hub: `load_dataset(REPO, CONFIG)`. From a local export folder, load the files
(`load_dataset("parquet", data_files="messages.parquet")`) or `load_from_disk("hf-messages")`:
`datasets` caches `load_dataset(FOLDER, CONFIG)` by the folder's name, so two exports in folders
of the same name would read as one.

## Generation settings

{_table(("setting", "value"), main_settings)}

Every field of the run's context (`run.json`):

{_table(("field", "value"), [(k, _value(v)) for k, v in sorted(ctx.items())])}
{_unrecorded_note(settings.get("unrecorded") or [])}{_history_section(history)}
## Templates

{_template_section(method, templates)}

## Categories

The weakness (harm category) each prompt targeted; `(none)` for Self-Instruct.

{_table(("category", "rows"), categories.most_common())}
{_coverage_section(rows, ctx)}
## Columns of `data`

| column | meaning |
|---|---|
| prompt | a harmful user request written by the generator |
| response | the responder's safe, helpful answer |
| category | the weakness (harm category) the prompt targeted; empty for Self-Instruct |
| taxonomy_category | the taxonomy category the prompt judge placed it in; empty without one |
| round | the round that produced it |
| method | `data_advisor` or `self_instruct` |
"""
    return str(DatasetCard(f"---\n{data.to_yaml()}\n---\n{body}"))


# --- writing and pushing -----------------------------------------------------------------------


def export_run(
    store: RunStore,
    out_dir: str | Path,
    formats: tuple[str, ...] = FORMATS,
    settings: dict[str, Any] | None = None,
    *,
    license: str | None = None,
) -> dict[str, Path]:
    """Write every form in the requested formats and the card into ``out_dir``.

    Returns the paths by ``<form>.<format>`` (``jsonl``, ``parquet`` and ``hf`` for the
    ``data`` form) and ``card``.
    """
    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise ValueError(f"unknown export format(s) {sorted(unknown)}; choose from {FORMATS}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = export_rows(store)
    paths: dict[str, Path] = {}
    for form in FORMS:
        data = _dataset(form, rows)
        for fmt in formats:
            path = out / file_name(form, fmt)
            if fmt == "jsonl":
                data.to_json(path, lines=True, force_ascii=False)
            elif fmt == "parquet":
                data.to_parquet(path)
            else:
                data.save_to_disk(str(path))
            paths[fmt if form == "data" else f"{form}.{fmt}"] = path
    hub_format = next((f for f in ("parquet", "jsonl") if f in formats), None)
    card = dataset_card(
        store.run_id,
        rows,
        settings=settings or {},
        counts={**store.counts(), "rounds": len(store.rounds())},
        templates=store.templates(),
        files={f: file_name(f, hub_format) for f in FORMS} if hub_format else {},
        license=license,
    )
    paths["card"] = out / "README.md"
    for folder in [out, *(out / file_name(f, "hf") for f in FORMS if "hf" in formats)]:
        (folder / "README.md").write_text(card, "utf-8")
    return paths


def _dataset(form: str, rows: list[dict[str, Any]]) -> Dataset:
    if rows:
        return Dataset.from_list([_FORM_ROWS[form](row) for row in rows])
    if form == "data":
        return Dataset.from_dict({c: [] for c in COLUMNS})
    empty = {"id": "", "category": "", "prompt": "", "response": ""}
    return Dataset.from_list([_FORM_ROWS[form](empty)]).select([])  # typed, no rows


def push_to_hub(
    paths: dict[str, Path], repo_id: str, *, private: bool = True, token: str | None = None
) -> str:
    """Upload the card and the JSONL / Parquet files of an export; return the commit URL.

    The repository (a dataset) is created if needed, private unless ``private=False``; the
    token is ``token``, else ``HF_TOKEN`` / the saved login (``huggingface_hub``'s lookup). The
    ``hf*`` folders are not uploaded: on the Hub the card's configs read the data files.
    """
    from huggingface_hub import HfApi

    files = [p for key, p in paths.items() if key.endswith(("jsonl", "parquet"))]
    if not files:
        raise ValueError("--push-to-hub uploads JSONL or Parquet files: add --format parquet")
    root = paths["card"].parent
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        info = api.upload_folder(
            repo_id=repo_id,
            repo_type="dataset",
            folder_path=root,
            allow_patterns=["README.md", *(p.relative_to(root).as_posix() for p in files)],
            commit_message="Upload data-advisor export",
        )
    except (OSError, httpx.HTTPError) as exc:  # HTTP errors, offline mode, no connection
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(
            f"could not push to the Hub dataset {repo_id}: {reason} (the export is kept in {root})"
        ) from exc
    return str(info.commit_url)
