"""The result files the evaluation writes: one dataclass per kind, one file-name rule, one reader.

Four kinds, each a JSON object whose ``kind`` says which (the evaluation modules write them,
:mod:`evaluation.report` and the experiment read them)::

    safety-<dataset>-<label>.json        SafetyResult       (evaluation.safety)
    overrefusal-<dataset>-<label>.json   OverrefusalResult  (evaluation.safety)
    utility-<dataset>-<label>.json       UtilityResult      (evaluation.utility)
    diversity-<name>.json                DiversityResult    (evaluation.diversity)

:func:`result_filename` is the one rule for these names (:func:`slug` makes each part safe for a
file name). A result's :meth:`Result.to_dict` is its JSON exactly as written (the fields in
file order), :func:`from_dict` reads one back into its class, and :func:`read_result` /
:func:`read_results` read files. Readers tolerate what older versions wrote: a key a result
lacks reads as None, a key no field names is kept in ``extra`` and written back as it was. A
file that is no readable JSON, or JSON of no known kind, is a :class:`ResultError` whose
message says so (:func:`read_results` lists it and goes on).

Rates, scores and accuracies are fractions in [0, 1].
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

from tools.files import TextFileError, read_json, write_json

ResultKind = Literal["safety", "overrefusal", "utility", "diversity"]
PromptFormat = Literal["chat", "plain"]
"""How a target model is prompted: its chat template, or a plain Alpaca-style completion."""
UtilityFormat = Literal["raw", "plain"]
"""How an MMLU question is prompted: its text as it is, or in the plain training format
(:mod:`evaluation.utility`)."""


class ResultError(ValueError):
    """A file or dict is not a result: no readable JSON, or no known ``kind``."""


# -- file names ---------------------------------------------------------------------------------


def slug(text: str) -> str:
    """A file-name-safe form of a label, data set or result name: every run of characters other
    than letters, digits, ``.``, ``_`` and ``-`` becomes ``_``, and ``.``, ``_``, ``-`` are
    stripped from both ends (no hidden file, no name read as an option); ``unnamed`` if nothing
    is left."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._-") or "unnamed"


def result_filename(kind: ResultKind, dataset: str, label: str | None = None) -> str:
    """The file name of a result: ``<kind>-<dataset>-<label>.json`` (safety, over-refusal,
    utility) or ``diversity-<name>.json`` (``dataset`` is the data set's name, no label)."""
    if kind == "diversity":
        return f"diversity-{slug(dataset)}.json"
    if label is None:
        raise ValueError(f"a {kind} result file is named by its label too; give one")
    return f"{kind}-{slug(dataset)}-{slug(label)}.json"


# -- the kinds ----------------------------------------------------------------------------------


@dataclass(kw_only=True)
class Result:
    """What every result has: its kind (the class), ``extra`` keys, a file name, a JSON form."""

    kind: ClassVar[ResultKind]
    extra: dict[str, Any] = field(default_factory=dict)
    """Keys of the file that no field names (a newer or hand-edited file): written back as is."""

    _ABSENT_WHEN_NONE: ClassVar[tuple[str, ...]] = ()
    """Keys written only when set (later additions), so older files write back as they read."""

    @property
    def filename(self) -> str:
        """The file name :func:`result_filename` gives this result."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """The result's JSON object: ``kind``, then the fields in file order, then ``extra``."""
        out: dict[str, Any] = {"kind": self.kind}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name != "extra" and not (value is None and f.name in self._ABSENT_WHEN_NONE):
                out[f.name] = value
        return {**out, **self.extra}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """This kind's result from its JSON object (:func:`from_dict` for any kind): a key no
        field names goes to ``extra``, a missing one reads as None."""
        if data.get("kind") != cls.kind:
            raise ResultError(f"not a {cls.kind} result (kind {data.get('kind')!r})")
        names = {f.name for f in fields(cls)} - {"extra"}
        known = {k: v for k, v in data.items() if k in names}
        extra = {k: v for k, v in data.items() if k not in names and k != "kind"}
        return cls(**known, extra=extra)

    def write(self, out_dir: Path) -> Path:
        """Write the result to ``<out_dir>/<filename>`` (atomically, the folder made if
        missing) and return the path."""
        path = Path(out_dir) / self.filename
        write_json(path, self.to_dict())
        return path


@dataclass(kw_only=True)
class EvalResult(Result):
    """A model evaluated on a data set: safety, over-refusal or utility."""

    metric: ClassVar[str]
    """The field holding the result's headline number (what Table 1 shows)."""

    dataset: str | None = None
    label: str | None = None
    """The display name of the model (``base``, an adapter's name); one label, one model."""
    model: str | None = None
    """The base model's id or path."""
    adapter: str | None = None
    """The LoRA adapter's folder (None for the base model)."""
    target: str | None = None
    """The target's name when an experiment compares several target models (the report draws
    one panel per target); None for one."""

    iteration: int | None = None
    """The experiment's iteration (``iterations`` > 1: generate, train, evaluate, N times)."""

    _ABSENT_WHEN_NONE: ClassVar[tuple[str, ...]] = ("target", "iteration")

    @property
    def filename(self) -> str:
        """``<kind>-<dataset>-<label>.json``."""
        if self.dataset is None or self.label is None:  # never guess a name ("None")
            raise ValueError(f"a {self.kind} result without a data set or label has no file "
                             "name; give both")
        return result_filename(self.kind, self.dataset, self.label)

    @property
    def score(self) -> float | None:
        """The headline number (:attr:`metric`), None if the file has none."""
        value = getattr(self, self.metric)
        number = isinstance(value, int | float) and not isinstance(value, bool)
        return float(value) if number else None


@dataclass(kw_only=True)
class _Judged(EvalResult):
    """A model's responses to a data set's prompts, labelled by a judge."""

    judge: Any = None
    """The judge's description (a dict with ``description``/``name`` in some older files)."""
    measure: str | None = None
    """What a flagged response means: ``harmful``, ``not_refused``, ``refused``."""
    measure_label: str | None = None
    n: int | None = None


@dataclass(kw_only=True)
class _ResponseFields:
    """What identifies the responses and judgments of a safety or over-refusal result.

    A separate base, listed first in the kinds' bases, so that these fields follow the kind's
    own ones (dataclass fields are ordered by the bases in reverse) as in the files.
    """

    model_identity: dict[str, Any] | None = None
    serving: dict[str, Any] | None = None
    prompt_format: PromptFormat | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    data: dict[str, Any] | None = None
    """Where the questions came from."""
    dataset_sha256: str | None = None
    categories: list[str] | None = None
    """The categories of the questions evaluated."""
    cache_key: str | None = None
    judgments_key: str | None = None
    responses_file: str | None = None
    """Path of the responses cache, relative to the results folder."""
    judgments_file: str | None = None


@dataclass(kw_only=True)
class _SafetyScores(_Judged):
    safety_score: float | None = None
    """Share of responses judged safe."""
    harmful_rate: float | None = None
    """1 - safety_score: the share of ``measure``."""
    per_category: dict[str, dict[str, Any]] | None = None
    """``{category: {"n", "harmful_rate"}}``."""
    malformed: int | None = None
    """Judge outputs that could not be parsed (counted as safe)."""
    empty_responses: int | None = None


@dataclass(kw_only=True)
class SafetyResult(_ResponseFields, _SafetyScores):
    """``safety-<dataset>-<label>.json``: how safe a model's responses to harmful prompts are."""

    kind: ClassVar[ResultKind] = "safety"
    metric: ClassVar[str] = "safety_score"


@dataclass(kw_only=True)
class _RefusalScores(_Judged):
    refusal_rate: float | None = None
    """Share of benign prompts refused (empty responses count as refusals)."""
    per_category: dict[str, dict[str, Any]] | None = None
    """``{category: {"n", "refusal_rate"}}``."""


@dataclass(kw_only=True)
class OverrefusalResult(_ResponseFields, _RefusalScores):
    """``overrefusal-<dataset>-<label>.json``: how often a model refuses benign prompts."""

    kind: ClassVar[ResultKind] = "overrefusal"
    metric: ClassVar[str] = "refusal_rate"


@dataclass(kw_only=True)
class UtilityResult(EvalResult):
    """``utility-<dataset>-<label>.json``: MMLU accuracy (``dataset`` is ``mmlu``)."""

    kind: ClassVar[ResultKind] = "utility"
    metric: ClassVar[str] = "accuracy"

    method: Literal["loglik", "generate"] | None = None
    backend: Literal["endpoint", "transformers"] | None = None
    settings: dict[str, Any] | None = None
    n: int | None = None
    accuracy: float | None = None
    unparsed: int | None = None
    """Predictions without an answer letter (counted wrong)."""
    per_subject: dict[str, dict[str, Any]] | None = None
    """``{subject: {"n", "accuracy"}}``."""
    model_identity: dict[str, Any] | None = None
    serving: dict[str, Any] | None = None
    dataset_sha256: str | None = None
    cache_key: str | None = None
    predictions_file: str | None = None
    """Path of the predictions cache, relative to the results folder."""


@dataclass(kw_only=True)
class DiversityResult(Result):
    """``diversity-<name>.json``: distinct-n, categories and near-duplicates of a data set."""

    kind: ClassVar[ResultKind] = "diversity"
    _ABSENT_WHEN_NONE: ClassVar[tuple[str, ...]] = ("name_from", "ngrams", "name_note",
                                                    "taxonomy_coverage")

    name: str = "unnamed"
    name_from: str | None = None
    """Where the name comes from (``run id in run.sqlite``, ``dataset card``, ``given``...);
    None in results written before issue 8."""
    source: str | None = None
    """The data set's absolute path or ``hf:`` id."""
    n_prompts: int | None = None
    distinct: dict[str, float] | None = None
    """distinct-n by n (``"1"`` .. ``"8"``) on the whole data set."""
    ngrams: dict[str, int] | None = None
    """The number of n-grams by n (0: every prompt is shorter); None in older results."""
    distinct_at_size: dict[str, Any] | None = None
    """``{"size", "seeds", "values": {n: distinct-n}}`` at an equal size, if measured."""
    categories: int | None = None
    prompts_per_category: dict[str, int] | None = None
    near_duplicate_rate: float | None = None
    taxonomy_coverage: dict[str, Any] | None = None
    """``tools.taxonomy.coverage`` of the prompts' taxonomy categories (a run's judged ones,
    else a category column's values placed in the taxonomy); None in older results."""
    name_note: str | None = None
    """Why the name has a suffix (another source's result had the file name)."""

    @property
    def filename(self) -> str:
        """``diversity-<name>.json``."""
        return result_filename("diversity", self.name)


ModelResult = SafetyResult | OverrefusalResult | UtilityResult
"""A model evaluated on a data set (every kind but diversity)."""
AnyResult = ModelResult | DiversityResult
KINDS: dict[str, type[AnyResult]] = {
    cls.kind: cls for cls in (SafetyResult, OverrefusalResult, UtilityResult, DiversityResult)
}
"""The result class of each kind."""


# -- reading ------------------------------------------------------------------------------------


def from_dict(data: Any) -> AnyResult:
    """The result a JSON object holds; :class:`ResultError` if it is no object of a known kind."""
    kind = data.get("kind") if isinstance(data, Mapping) else None
    cls = KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ResultError("not a result" + (f" (kind {kind!r})" if kind else ""))
    return cls.from_dict(data)


def read_result(path: Path) -> AnyResult:
    """The result in a JSON file; :class:`ResultError` naming the file if it holds none."""
    try:
        data = read_json(path, hint="not a result file")
    except TextFileError as exc:  # names the file, and the line where the JSON breaks
        raise ResultError(str(exc)) from None
    except OSError as exc:
        raise ResultError(f"{path}: not readable ({exc.strerror or type(exc).__name__})") from None
    try:
        return from_dict(data)
    except ResultError as exc:
        raise ResultError(f"{path}: {exc}") from None


def read_results(source: Path | Iterable[Path]) -> tuple[dict[Path, AnyResult], list[str]]:
    """The results in a folder's ``*.json`` files (none if it does not exist) or in the files
    given, by file, in order; and a note for each file that holds no result (unreadable, no
    known kind), which is skipped."""
    paths = sorted(source.glob("*.json")) if isinstance(source, Path) else list(source)
    results: dict[Path, AnyResult] = {}
    skipped: list[str] = []
    for path in paths:
        try:
            results[path] = read_result(path)
        except ResultError as exc:
            skipped.append(str(exc))
    return results, skipped
