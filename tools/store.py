"""The run store: the growing dataset, the in-context pool and per-round records, in SQLite.

The dataset never enters graph state (a checkpoint would then grow with it). Every write is
keyed so that a step re-executed after a crash replaces its own rows: it neither loses nor
duplicates them. Tables (all keyed by ``run_id``, so one file may hold many runs or threads):

- ``samples``: kept prompts and their responses, ``id = "{run_id}:{round}:{slot}"``; the
  ``index``-th generator task of a round (its ``index``-th weakness) owns slots
  ``index * K ... index * K + K - 1``.
- ``rejections``: generator outputs that were filtered out, with the reason.
- ``pool``: in-context examples (the seeds, then one prompt per generator task: W a round).
- ``rounds``: one row per round: the nodes the round needs (``nodes``, written when the round
  opens), its ``weaknesses`` (W of them, with ``weaknesses_novel``), summary before/after,
  rule-check verdict (and per weakness, ``weakness_checks``), counts, timings and tokens per
  node (one entry per generator task when W > 1). The summary before the round is stored in
  full; the proposed and the checked summary as an edit of it (:func:`summary_edit`) when that
  is shorter, so a record does not hold three copies of a long summary. The readers here
  return full lists; files written before this hold full lists, read as they are.
- ``templates``: the sha256 of every prompt template a run started (or restarted) with, and the
  first round it applied to, so an export can say which templates wrote the data.

A run folder's ``run.sqlite`` is keyed by the run's id recorded in ``run.json`` (its folder
name for runs made before ids were recorded): :func:`run_id_of_store` is how readers find it,
so a renamed or moved folder keeps its data. Metadata files are written atomically
(:func:`tools.files.write_atomic`).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlite_utils

RUN_FILE = "run.json"
"""A run folder's metadata file (method, context, ``id``); see ``graph.runner``."""
DB_FILE = "run.sqlite"
"""A run folder's data file."""


def run_id_from(data: Mapping[str, Any], folder: Path) -> str:
    """The run id ``run.json``'s ``data`` records; a run made before ids: its folder name."""
    return str(data.get("id") or folder.name)


def run_id_of_store(db_path: str | Path) -> str | None:
    """The run id a run folder's ``run.sqlite`` is keyed by (from the ``run.json`` beside it),
    or None for a file outside a run folder (then all its rows are the data set)."""
    db_path = Path(db_path)
    meta = db_path.parent / RUN_FILE
    if db_path.name != DB_FILE or not meta.is_file():
        return None
    try:
        data = json.loads(meta.read_text("utf-8"))
    except ValueError as exc:
        raise ValueError(
            f"{meta}: not valid JSON ({exc}); it names the run {db_path} holds: restore it "
            "from a backup"
        ) from None
    return run_id_from(data, db_path.parent)

_EDITED_SUMMARIES = ("summary_proposed", "summary_after")
"""Round columns stored as an edit of ``summary_before`` (see :func:`summary_edit`)."""

_JSON_COLUMNS = {
    "summary_before",
    "summary_proposed",
    "summary_after",
    "corrections",
    "rejected",
    "timings",
    "tokens",
    "critic_attempts",
    "nodes",
    "weaknesses",
    "weaknesses_novel",
    "weakness_checks",
    "weakness_coverage",
}

_ADDED_ROUND_COLUMNS = {
    "ended_at": float, "nodes": str, "weaknesses": str, "weaknesses_novel": str,
    "weakness_checks": str, "weakness_coverage": str,
}
"""Round columns added after the first files were written: added to an older file on open.
A file from before rounds named several weaknesses has one ``weakness`` (and
``weakness_novel``) per round: copied into the lists when they are added (the old columns stay,
unused)."""


_ADDED_SAMPLE_COLUMNS = {"taxonomy_category": str, "judge_verdict": str, "judge_answer": str}
"""Sample columns added after the first files were written (the prompt judge's): added to an
older file on open, read as None there (no judge)."""


class StoreFileError(sqlite3.DatabaseError):
    """A run store's SQLite file cannot be opened (corrupt, not a database, not writable)."""

    def __init__(self, path: Path, error: sqlite3.DatabaseError) -> None:
        super().__init__(f"{path}: {error}")
        self.path = path
        self.error = error


class RunStore:
    """Tables of one run inside a SQLite file.

    The connection may be shared by the threads that run a graph's nodes: every method holds
    the store's lock, and :meth:`transaction` groups several writes into one commit.
    """

    def __init__(self, path: str | Path, run_id: str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.run_id = run_id
        self._lock = threading.RLock()
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False)
            self._open(conn)
        except sqlite3.DatabaseError as exc:  # corrupt, not a database, not writable
            if conn is not None:
                conn.close()
            raise StoreFileError(self.path, exc) from exc

    def _open(self, conn: sqlite3.Connection) -> None:
        self.db = sqlite_utils.Database(conn)
        if self.db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            try:  # WAL lets the checkpointer and the store share the file
                self.db.execute("PRAGMA journal_mode=WAL")
            except sqlite3.OperationalError:
                pass  # another connection holds the file; rollback journal works too
        # In WAL mode NORMAL stays consistent after a crash of the process; only an OS crash
        # or power loss may undo the last commits (the node is then re-executed on resume).
        self.db.execute("PRAGMA synchronous=NORMAL")
        stat = os.stat(self.path)
        self._file_id = (stat.st_dev, stat.st_ino)
        if not self.db.table("rounds").exists():
            self._create()
        elif missing := sorted(_ADDED_ROUND_COLUMNS.keys()
                               - self.db.table("rounds").columns_dict.keys()):
            with self.transaction():  # a run file from before them: their values read as None
                for column in missing:
                    self.db.table("rounds").add_column(column, _ADDED_ROUND_COLUMNS[column])
                if "weaknesses" in missing and "weakness" in self.db.table("rounds").columns_dict:
                    self.db.execute(
                        "update rounds set weaknesses = json_array(weakness), "
                        "weaknesses_novel = json_array(weakness_novel) where weakness is not null"
                    )
        samples = self.db.table("samples")
        if samples.exists() and (missing := sorted(_ADDED_SAMPLE_COLUMNS.keys()
                                                   - samples.columns_dict.keys())):
            with self.transaction():
                for column in missing:
                    samples.add_column(column, _ADDED_SAMPLE_COLUMNS[column])
        if not self.db.table("templates").exists():  # also in run files from before it
            with self.transaction():
                self.db.table("templates").create(
                    {"run_id": str, "name": str, "sha256": str, "from_round": int,
                     "recorded_at": float},
                    pk=("run_id", "name", "sha256"),
                    if_not_exists=True,
                )

    @contextmanager
    def transaction(self) -> Iterator[RunStore]:
        """Hold the store and make the writes inside one transaction (nests)."""
        with self._lock, self.db.atomic():
            yield self

    def _rows(self, sql: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.db.query(sql, params))

    def _create(self) -> None:
        self.db.table("samples").create(
            {
                "id": str,
                "run_id": str,
                "round": int,
                "slot": int,
                "method": str,
                "weakness": str,
                "prompt": str,
                "response": str,
                "generator_model": str,
                "responder_model": str,
                "created_at": float,
                "taxonomy_category": str,
                "judge_verdict": str,
                "judge_answer": str,
            },
            pk="id",
            not_null={"run_id", "prompt"},
            if_not_exists=True,
        )
        self.db.table("rejections").create(
            {"id": str, "run_id": str, "round": int, "slot": int, "text": str, "reason": str},
            pk="id",
            if_not_exists=True,
        )
        self.db.table("pool").create(
            {"id": str, "run_id": str, "round": int, "prompt": str}, pk="id", if_not_exists=True
        )
        self.db.table("rounds").create(
            {
                "run_id": str,
                "round": int,
                "method": str,
                "nodes": str,
                "weaknesses": str,
                "weaknesses_novel": str,
                "weakness_checks": str,
                "weakness_coverage": str,
                "critic_attempts": str,
                "summary_before": str,
                "summary_proposed": str,
                "summary_after": str,
                "rule_check": str,
                "corrections": str,
                "kept": int,
                "rejected": str,
                "responses": int,
                "timings": str,
                "tokens": str,
                "started_at": float,
                "finished_at": float,
                "ended_at": float,
            },
            pk=("run_id", "round"),
            if_not_exists=True,
        )
        for table in ("samples", "rejections", "pool"):
            self.db.table(table).create_index(["run_id", "round"], if_not_exists=True)

    # --- pool --------------------------------------------------------------------------------
    def seed_pool(self, prompts: Sequence[str]) -> None:
        """Insert the seed prompts (round 0) once; a second call changes nothing."""
        rows = [
            {"id": f"{self.run_id}:seed:{i}", "run_id": self.run_id, "round": 0, "prompt": p}
            for i, p in enumerate(prompts)
        ]
        with self.transaction():
            self.db.table("pool").insert_all(rows, ignore=True)

    def steer_pool(self, round_: int, prompts: Sequence[str]) -> int:
        """Failed evaluation questions join the pool as in-context examples (Self-Instruct's
        steering, ``tools.steering``), from the round after ``round_``; a question already in
        the pool is not added again. Returns how many were added."""
        known = set(self.pool())
        new = [p for p in dict.fromkeys(prompts) if p not in known]
        rows = [{"id": f"{self.run_id}:steer:{round_}:{i}", "run_id": self.run_id,
                 "round": round_, "prompt": p} for i, p in enumerate(new)]
        with self.transaction():
            self.db.table("pool").insert_all(rows, ignore=True)
        return len(rows)

    def pool(self, before_round: int | None = None) -> list[str]:
        """The in-context pool, seeds first (as round ``before_round`` found it: without the
        entries of that round and later)."""
        bound = "" if before_round is None else " and round < ?"
        rows = self._rows(
            f"select prompt from pool where run_id = ?{bound} order by round, id",
            [self.run_id, *([] if before_round is None else [before_round])],
        )
        return [r["prompt"] for r in rows]

    def add_to_pool(self, round_: int, prompt: str, index: int = 0) -> None:
        """The best prompt of the round's ``index``-th generator task joins the pool (replaces
        that task's entry if it ran again). The first task's id is the round's alone, as
        before rounds had several tasks."""
        entry = f"{self.run_id}:{round_}" + (f":{index}" if index else "")
        with self.transaction():
            self.db.table("pool").insert(
                {"id": entry, "run_id": self.run_id, "round": round_, "prompt": prompt},
                replace=True,
            )

    # --- samples -----------------------------------------------------------------------------
    def prompts_before(self, round_: int, since: int = 0) -> list[str]:
        """Kept prompts of the rounds before ``round_`` (from round ``since`` on)."""
        rows = self._rows(
            "select prompt from samples where run_id = ? and round >= ? and round < ?",
            [self.run_id, since, round_],
        )
        return [r["prompt"] for r in rows]

    def save_round(
        self,
        round_: int,
        kept: Sequence[dict[str, Any]],
        rejected: Sequence[dict[str, Any]],
        *,
        slots: range | None = None,
    ) -> list[str]:
        """Replace the round's prompts and rejections in one transaction (only those in
        ``slots``, one generator task's, when given); return the kept ids."""
        now = time.time()
        sample_rows = [
            {
                "id": f"{self.run_id}:{round_}:{r['slot']}",
                "run_id": self.run_id,
                "round": round_,
                "created_at": now,
                "response": None,
                **r,
            }
            for r in kept
        ]
        reject_rows = [
            {
                "id": f"{self.run_id}:{round_}:{r['slot']}",
                "run_id": self.run_id,
                "round": round_,
                **r,
            }
            for r in rejected
        ]
        with self.transaction():
            within, bounds = "", []
            if slots is not None:
                within, bounds = " and slot >= ? and slot < ?", [slots.start, slots.stop]
            for table in ("samples", "rejections"):
                self.db.execute(
                    f"delete from {table} where run_id = ? and round = ?{within}",
                    [self.run_id, round_, *bounds],
                )
            self.db.table("samples").insert_all(sample_rows)
            self.db.table("rejections").insert_all(reject_rows)
        return [r["id"] for r in sample_rows]

    def round_prompts(self, round_: int, *, excluding: range) -> list[str]:
        """Kept prompts of the round outside the ``excluding`` slots (the round's other
        generator tasks')."""
        rows = self._rows(
            "select prompt from samples where run_id = ? and round = ? "
            "and (slot < ? or slot >= ?) order by slot",
            [self.run_id, round_, excluding.start, excluding.stop],
        )
        return [r["prompt"] for r in rows]

    def round_counts(self, round_: int) -> tuple[int, dict[str, int]]:
        """The round's kept prompts and its rejections by reason, as stored (all its tasks)."""
        kept = self._rows(
            "select count(*) n from samples where run_id = ? and round = ?", [self.run_id, round_]
        )[0]["n"]
        rows = self._rows(
            "select reason, count(*) n from rejections where run_id = ? and round = ? "
            "group by reason order by reason",
            [self.run_id, round_],
        )
        return int(kept), {r["reason"]: int(r["n"]) for r in rows}

    def taxonomy_labels(self, before_round: int | None = None) -> list[str | None]:
        """The taxonomy category of each kept prompt (None: not judged, or no category), of the
        rounds before ``before_round`` (all without it)."""
        bound = "" if before_round is None else " and round < ?"
        rows = self._rows(
            f"select taxonomy_category c from samples where run_id = ?{bound}",
            [self.run_id, *([] if before_round is None else [before_round])],
        )
        return [r["c"] for r in rows]

    def judge_counts(self) -> dict[int, dict[str, int]]:
        """Per round: prompts the judge kept as ``harmful``, kept as ``unjudged`` (malformed
        answers) and rejected as ``not_harmful`` (rounds without a judge: none)."""
        found: dict[int, dict[str, int]] = {}
        for row in self._rows(
            "select round, judge_verdict v, count(*) n from samples where run_id = ? "
            "and judge_verdict is not null group by round, judge_verdict union all "
            "select round, reason v, count(*) n from rejections where run_id = ? "
            "and reason = 'not_harmful' group by round",
            [self.run_id, self.run_id],
        ):
            found.setdefault(row["round"], {})[row["v"]] = int(row["n"])
        return found

    def unjudged_answers(self, limit: int = 3) -> list[dict[str, Any]]:
        """The first ``limit`` kept prompts the judge's answer could not be read for, with that
        answer (``prompt``, ``judge_answer``)."""
        return self._rows(
            "select prompt, judge_answer from samples where run_id = ? and judge_verdict = "
            "'unjudged' order by round, slot limit ?", [self.run_id, limit])

    def set_round_entry(self, round_: int, column: str, index: int, value: Any) -> None:
        """Set item ``index`` of a round's JSON list ``column`` (one per generator task; the
        items before it stay None until their tasks write them)."""
        with self.transaction():
            items = list(self._round_columns(round_, (column,)).get(column) or [])
            items += [None] * (index + 1 - len(items))
            items[index] = value
            fields: dict[str, Any] = {column: items}
            self.update_round(round_, **fields)

    def get_samples(self, ids: Iterable[str]) -> list[dict[str, Any]]:
        """Rows for the given sample ids, in the given order."""
        ids = list(ids)
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        rows = {r["id"]: r for r in self._rows(f"select * from samples where id in ({marks})", ids)}
        return [rows[i] for i in ids if i in rows]

    def set_responses(self, responses: dict[str, str], responder_model: str) -> None:
        """Store responses by sample id (a re-run overwrites)."""
        with self.transaction():
            self.db.conn.executemany(
                "update samples set response = ?, responder_model = ? where id = ?",
                [(text, responder_model, sample_id) for sample_id, text in responses.items()],
            )

    def unanswered(self) -> list[str]:
        """Ids of the run's kept prompts without a response, by round and slot."""
        rows = self._rows(
            "select id from samples where run_id = ? and response is null order by round, slot",
            [self.run_id])
        return [r["id"] for r in rows]

    def samples(self, with_response: bool = False) -> Iterator[dict[str, Any]]:
        """All sample rows of the run, by round and slot."""
        where = " and response is not null and response != ''" if with_response else ""
        yield from self._rows(
            f"select * from samples where run_id = ?{where} order by round, slot", [self.run_id]
        )

    def counts(self) -> dict[str, int]:
        """Kept prompts, answered prompts and rejections so far."""
        def one(sql: str) -> int:
            return int(self._rows(sql, [self.run_id])[0]["n"])

        return {
            "prompts": one("select count(*) n from samples where run_id = ?"),
            "responses": one(
                "select count(*) n from samples where run_id = ? "
                "and response is not null and response != ''"
            ),
            "rejected": one("select count(*) n from rejections where run_id = ?"),
        }

    def responses_per_round(self) -> dict[int, int]:
        """Answered prompts stored for each round of the run."""
        rows = self._rows(
            "select round, count(*) n from samples where run_id = ? and response is not null "
            "and response != '' group by round", [self.run_id],
        )
        return {r["round"]: r["n"] for r in rows}

    def kept_per_round(self) -> dict[int, int]:
        """Kept prompts stored for each round of the run."""
        rows = self._rows(
            "select round, count(*) n from samples where run_id = ? group by round",
            [self.run_id],
        )
        return {r["round"]: r["n"] for r in rows}

    def run_ids(self) -> list[str]:
        """Every run id with rounds or prompts in the file (one file may hold several runs or
        threads; seeds alone in the pool are no data)."""
        rows = self._rows(
            "select run_id from rounds union select run_id from samples order by 1", []
        )
        return [r["run_id"] for r in rows]

    def output_tokens(self) -> int:
        """Output tokens of all LLM calls of the run so far (from the round records)."""
        rows = self._rows(
            "select coalesce(sum(t.value), 0) n from rounds, json_each(rounds.tokens) t "
            "where rounds.run_id = ?",
            [self.run_id],
        )
        return int(rows[0]["n"])

    # --- templates ---------------------------------------------------------------------------
    def record_templates(self, from_round: int, templates: dict[str, str]) -> None:
        """Record the sha256 of each template text; a hash already recorded keeps its round."""
        now = time.time()
        rows = [
            {"run_id": self.run_id, "name": name, "from_round": from_round, "recorded_at": now,
             "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}
            for name, text in templates.items()
        ]
        with self.transaction():
            table = self.db.table("templates")
            table.insert_all(rows, pk=("run_id", "name", "sha256"), ignore=True)

    def templates(self) -> list[dict[str, Any]]:
        """Recorded template hashes (name, sha256, from_round), by name and first round."""
        return self._rows(
            "select name, sha256, from_round from templates where run_id = ? "
            "order by name, from_round, recorded_at",
            [self.run_id],
        )

    # --- rounds ------------------------------------------------------------------------------
    def start_round(
        self,
        round_: int,
        method: str,
        started_at: float | None = None,
        *,
        nodes: Sequence[str] | None = None,
    ) -> None:
        """Create the round's record if it does not exist yet.

        ``nodes`` are the nodes the round needs to finish (``graph.graph.round_nodes``): given
        when the round opens, also to a record that exists (a round opened again), so the
        record says what finishing it means (``graph.state.round_unfinished``).
        """
        with self.transaction():
            self.db.table("rounds").insert(
                {"run_id": self.run_id, "round": round_, "method": method,
                 "started_at": started_at or time.time()},
                pk=("run_id", "round"),
                ignore=True,
            )
            if nodes is not None:
                self.db.execute(
                    "update rounds set nodes = ? where run_id = ? and round = ?",
                    [json.dumps(list(nodes)), self.run_id, round_],
                )

    def update_round(
        self, round_: int, *, timing: tuple[str, float, int] | None = None, **fields: Any
    ) -> None:
        """Upsert fields of a round's record (JSON-encodes lists and dicts).

        ``timing=(node, seconds, output_tokens)`` adds one node's cost to the record's
        ``timings`` and ``tokens``, and moves ``ended_at`` (the end of the round's last node so
        far; nodes may run side by side) to now, in the same transaction.
        """
        with self.transaction():
            if timing is not None:
                node, seconds, tokens = timing
                current = self._round_columns(round_, ("timings", "tokens", "ended_at"))
                fields["timings"] = {**(current.get("timings") or {}), node: round(seconds, 4)}
                fields["tokens"] = {**(current.get("tokens") or {}), node: tokens}
                fields["ended_at"] = max(time.time(), current.get("ended_at") or 0.0)
            if fields.keys() & {"summary_before", *_EDITED_SUMMARIES}:
                fields = self._edited_summaries(round_, fields)
            row = {"run_id": self.run_id, "round": round_}
            for key, value in fields.items():
                row[key] = json.dumps(value) if key in _JSON_COLUMNS else value
            self.db.table("rounds").upsert(row, pk=("run_id", "round"))

    def _edited_summaries(self, round_: int, fields: dict[str, Any]) -> dict[str, Any]:
        """``fields`` with the proposed and checked summaries as edits of the round's summary
        before; a new summary before re-encodes the ones already stored against it."""
        stored = self._round_columns(round_, ("summary_before", *_EDITED_SUMMARIES))
        base = fields.get("summary_before", stored.get("summary_before"))
        if not isinstance(base, list):
            return fields
        fields = dict(fields)
        for column in _EDITED_SUMMARIES:
            if column in fields:
                value = fields[column]
            elif "summary_before" in fields and stored.get(column) is not None:
                value = stored[column]  # decoded against the summary before it replaces
            else:
                continue
            fields[column] = summary_edit(base, value) if isinstance(value, list) else value
        return fields

    def _round_columns(self, round_: int, columns: Sequence[str]) -> dict[str, Any]:
        """Some columns of a round's record, JSON decoded (``{}`` without a record): a node
        adding its timing need not decode the record's summaries."""
        rows = self._rows(
            f"select {', '.join(columns)} from rounds where run_id = ? and round = ?",
            [self.run_id, round_],
        )
        return _decode(rows[0]) if rows else {}

    def critic_attempts(self, since: int, before: int) -> list[tuple[list[str], list[str]]]:
        """``(weaknesses, critic attempts)`` of the rounds ``since <= round < before``, the most
        recent first (one query, without the records' summaries)."""
        rows = self._rows(
            "select weaknesses, critic_attempts from rounds where run_id = ? and round >= ? "
            "and round < ? order by round desc",
            [self.run_id, since, before],
        )
        records = [_decode(r) for r in rows]
        return [(r.get("weaknesses") or [], r.get("critic_attempts") or []) for r in records]

    def get_round(self, round_: int) -> dict[str, Any] | None:
        """One round's record, JSON decoded."""
        rows = self._rows(
            "select * from rounds where run_id = ? and round = ?", [self.run_id, round_]
        )
        return _decode(rows[0]) if rows else None

    def rounds(self) -> list[dict[str, Any]]:
        """All round records, in order."""
        rows = self._rows("select * from rounds where run_id = ? order by round", [self.run_id])
        return [_decode(r) for r in rows]

    def weaknesses(self, before_round: int) -> list[str]:
        """Weaknesses named in the rounds before ``before_round``, in round order (a round's
        in the critic's order)."""
        rows = self._rows(
            "select weaknesses from rounds where run_id = ? and round < ? "
            "and weaknesses is not null order by round",
            [self.run_id, before_round],
        )
        return [w for r in rows for w in json.loads(r["weaknesses"])]

    def is_current(self) -> bool:
        """False once the file was deleted or replaced under this open connection."""
        try:
            stat = os.stat(self.path)
        except OSError:
            return False
        return (stat.st_dev, stat.st_ino) == self._file_id

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self.db.close()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_SHARED: OrderedDict[tuple[str, str], RunStore] = OrderedDict()
_SHARED_LOCK = threading.Lock()
MAX_SHARED = 16
"""Open shared stores kept at most (a ``langgraph dev`` server may serve many threads)."""


def shared_store(path: str | Path, run_id: str) -> RunStore:
    """The process's open store for one run: one connection for all its node calls.

    Reopened when the file was deleted or replaced; the least recently used of more than
    :data:`MAX_SHARED` are closed. :func:`close_shared` closes them at the end of a run.
    """
    key = (os.path.abspath(path), run_id)  # no filesystem call: this runs once per node
    with _SHARED_LOCK:
        store = _SHARED.get(key)
        if store is not None and not store.is_current():
            store.close()
            store = None
        if store is None:
            store = _SHARED[key] = RunStore(path, run_id)
        _SHARED.move_to_end(key)
        while len(_SHARED) > MAX_SHARED:
            _, oldest = _SHARED.popitem(last=False)
            oldest.close()
        return store


def close_shared(path: str | Path | None = None) -> None:
    """Close the shared stores of one SQLite file (all of them without ``path``)."""
    wanted = None if path is None else os.path.abspath(path)
    with _SHARED_LOCK:
        for key in [k for k in _SHARED if wanted is None or k[0] == wanted]:
            _SHARED.pop(key).close()


def summary_edit(base: list[str], summary: list[str]) -> list[str] | dict[str, Any]:
    """``summary`` as an edit of ``base`` when that is shorter, else ``summary`` itself.

    The edit is ``{"edit_of": "summary_before", "parts": [...]}``: each part a ``[start, end]``
    slice of ``base`` or a line of its own, in order (:func:`apply_summary_edit`).
    """
    parts: list[Any] = []
    matcher = difflib.SequenceMatcher(None, base, summary, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            parts.append([i1, i2])
        elif tag != "delete":
            parts += summary[j1:j2]
    edit = {"edit_of": "summary_before", "parts": parts}
    return edit if len(json.dumps(edit)) < len(json.dumps(summary)) else summary


def apply_summary_edit(base: list[str], edit: dict[str, Any]) -> list[str]:
    """The summary a :func:`summary_edit` of ``base`` stands for."""
    lines: list[str] = []
    for part in edit["parts"]:
        lines += base[part[0]:part[1]] if isinstance(part, list) else [part]
    return lines


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    decoded = {
        k: (json.loads(v) if k in _JSON_COLUMNS and isinstance(v, str) else v)
        for k, v in row.items()
    }
    base = decoded.get("summary_before")
    for column in _EDITED_SUMMARIES:
        if isinstance(decoded.get(column), dict) and isinstance(base, list):
            decoded[column] = apply_summary_edit(base, decoded[column])
    return decoded
