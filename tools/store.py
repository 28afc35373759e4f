"""The run store: the growing dataset, the in-context pool and per-round records, in SQLite.

The dataset never enters graph state (a checkpoint would then grow with it). Every write is
keyed so that a step re-executed after a crash replaces its own rows: it neither loses nor
duplicates them. Tables (all keyed by ``run_id``, so one file may hold many runs or threads):

- ``samples``: kept prompts and their responses, ``id = "{run_id}:{round}:{slot}"``.
- ``rejections``: generator outputs that were filtered out, with the reason.
- ``pool``: in-context examples (the seeds, then one prompt per round).
- ``rounds``: one row per round: weakness, summary before/after, rule-check verdict, counts,
  timings and tokens per node.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import sqlite_utils

_JSON_COLUMNS = {
    "summary_before",
    "summary_proposed",
    "summary_after",
    "corrections",
    "rejected",
    "timings",
    "tokens",
    "critic_attempts",
}


class RunStore:
    """Tables of one run inside a SQLite file."""

    def __init__(self, path: str | Path, run_id: str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.run_id = run_id
        self.db = sqlite_utils.Database(self.path)
        self.db.execute("PRAGMA busy_timeout=30000")
        if self.db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            try:  # WAL lets the checkpointer and the store share the file
                self.db.execute("PRAGMA journal_mode=WAL")
            except sqlite3.OperationalError:
                pass  # another connection holds the file; rollback journal works too
        if not self.db["rounds"].exists():
            self._create()

    def _create(self) -> None:
        self.db["samples"].create(
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
            },
            pk="id",
            not_null={"run_id", "prompt"},
            if_not_exists=True,
        )
        self.db["rejections"].create(
            {"id": str, "run_id": str, "round": int, "slot": int, "text": str, "reason": str},
            pk="id",
            if_not_exists=True,
        )
        self.db["pool"].create(
            {"id": str, "run_id": str, "round": int, "prompt": str}, pk="id", if_not_exists=True
        )
        self.db["rounds"].create(
            {
                "run_id": str,
                "round": int,
                "method": str,
                "weakness": str,
                "weakness_novel": int,
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
            },
            pk=("run_id", "round"),
            if_not_exists=True,
        )
        for table in ("samples", "rejections", "pool"):
            self.db[table].create_index(["run_id", "round"], if_not_exists=True)

    # --- pool --------------------------------------------------------------------------------
    def seed_pool(self, prompts: Sequence[str]) -> None:
        """Insert the seed prompts (round 0) once; a second call changes nothing."""
        rows = [
            {"id": f"{self.run_id}:seed:{i}", "run_id": self.run_id, "round": 0, "prompt": p}
            for i, p in enumerate(prompts)
        ]
        self.db["pool"].insert_all(rows, ignore=True)

    def pool(self) -> list[str]:
        """Current in-context pool, seeds first."""
        return [
            r["prompt"]
            for r in self.db.query(
                "select prompt from pool where run_id = ? order by round, id", [self.run_id]
            )
        ]

    def add_to_pool(self, round_: int, prompt: str) -> None:
        """The round's best prompt joins the pool (replaces the round's entry if re-run)."""
        self.db["pool"].insert(
            {
                "id": f"{self.run_id}:{round_}",
                "run_id": self.run_id,
                "round": round_,
                "prompt": prompt,
            },
            replace=True,
        )

    # --- samples -----------------------------------------------------------------------------
    def prompts_before(self, round_: int) -> list[str]:
        """Kept prompts of the rounds before ``round_``."""
        return [
            r["prompt"]
            for r in self.db.query(
                "select prompt from samples where run_id = ? and round < ?", [self.run_id, round_]
            )
        ]

    def save_round(
        self, round_: int, kept: Sequence[dict[str, Any]], rejected: Sequence[dict[str, Any]]
    ) -> list[str]:
        """Replace the round's prompts and rejections in one transaction; return the kept ids."""
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
        with self.db.conn:
            for table in ("samples", "rejections"):
                self.db.execute(
                    f"delete from {table} where run_id = ? and round = ?", [self.run_id, round_]
                )
            self.db["samples"].insert_all(sample_rows)
            self.db["rejections"].insert_all(reject_rows)
        return [r["id"] for r in sample_rows]

    def get_samples(self, ids: Iterable[str]) -> list[dict[str, Any]]:
        """Rows for the given sample ids, in the given order."""
        ids = list(ids)
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        rows = {
            r["id"]: r for r in self.db.query(f"select * from samples where id in ({marks})", ids)
        }
        return [rows[i] for i in ids if i in rows]

    def set_responses(self, responses: dict[str, str], responder_model: str) -> None:
        """Store responses by sample id (a re-run overwrites)."""
        with self.db.conn:
            for sample_id, text in responses.items():
                self.db["samples"].update(
                    sample_id, {"response": text, "responder_model": responder_model}
                )

    def samples(self, with_response: bool = False) -> Iterator[dict[str, Any]]:
        """All sample rows of the run, by round and slot."""
        where = " and response is not null and response != ''" if with_response else ""
        yield from self.db.query(
            f"select * from samples where run_id = ?{where} order by round, slot", [self.run_id]
        )

    def counts(self) -> dict[str, int]:
        """Kept prompts, answered prompts and rejections so far."""
        one = lambda sql: next(self.db.query(sql, [self.run_id]))["n"]  # noqa: E731
        return {
            "prompts": one("select count(*) n from samples where run_id = ?"),
            "responses": one(
                "select count(*) n from samples where run_id = ? "
                "and response is not null and response != ''"
            ),
            "rejected": one("select count(*) n from rejections where run_id = ?"),
        }

    # --- rounds ------------------------------------------------------------------------------
    def start_round(self, round_: int, method: str) -> None:
        """Create the round's record if it does not exist yet."""
        self.db["rounds"].insert(
            {"run_id": self.run_id, "round": round_, "method": method, "started_at": time.time()},
            pk=("run_id", "round"),
            ignore=True,
        )

    def update_round(self, round_: int, **fields: Any) -> None:
        """Upsert fields of a round's record (JSON-encodes lists and dicts)."""
        row = {"run_id": self.run_id, "round": round_}
        for key, value in fields.items():
            row[key] = json.dumps(value) if key in _JSON_COLUMNS else value
        self.db["rounds"].upsert(row, pk=("run_id", "round"))

    def add_timing(self, round_: int, node: str, seconds: float, tokens: int) -> None:
        """Record one node's wall time and output tokens in the round's record."""
        current = self.get_round(round_) or {}
        timings = current.get("timings") or {}
        token_counts = current.get("tokens") or {}
        timings[node] = round(seconds, 4)
        token_counts[node] = tokens
        self.update_round(round_, timings=timings, tokens=token_counts)

    def get_round(self, round_: int) -> dict[str, Any] | None:
        """One round's record, JSON decoded."""
        rows = list(
            self.db.query(
                "select * from rounds where run_id = ? and round = ?", [self.run_id, round_]
            )
        )
        return _decode(rows[0]) if rows else None

    def rounds(self) -> list[dict[str, Any]]:
        """All round records, in order."""
        return [
            _decode(r)
            for r in self.db.query(
                "select * from rounds where run_id = ? order by round", [self.run_id]
            )
        ]

    def weaknesses(self, before_round: int) -> list[str]:
        """Weaknesses named in the rounds before ``before_round``, in round order."""
        return [
            r["weakness"]
            for r in self.db.query(
                "select weakness from rounds where run_id = ? and round < ? "
                "and weakness is not null order by round",
                [self.run_id, before_round],
            )
        ]

    def close(self) -> None:
        """Close the connection."""
        self.db.close()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    return {
        k: (json.loads(v) if k in _JSON_COLUMNS and isinstance(v, str) else v)
        for k, v in row.items()
    }
