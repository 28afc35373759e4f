"""The run store's round records: summaries stored as edits read back whole."""

from __future__ import annotations

import json

import pytest

from tools.store import RunStore, apply_summary_edit, summary_edit

BEFORE = [f"Group {n}: " + "; ".join(f"kind{n}x{k}" for k in range(20)) for n in range(40)]


def raw(store: RunStore, round_: int, column: str) -> object:
    row = store.db.execute(
        f"select {column} from rounds where run_id = ? and round = ?", [store.run_id, round_]
    ).fetchone()
    return json.loads(row[0])


@pytest.mark.parametrize("after", [
    [*BEFORE, "New category"],                              # a line added
    [BEFORE[0], *BEFORE[2:], BEFORE[1] + "; extra"],        # a line extended and moved last
    BEFORE[::-1],                                           # reordered
    ["Something else"],                                     # replaced whole
    [],
])
def test_edit_reads_back_the_same_summary(tmp_path, after):
    edit = summary_edit(BEFORE, after)
    assert (apply_summary_edit(BEFORE, edit) if isinstance(edit, dict) else edit) == after
    with RunStore(tmp_path / "run.sqlite", "r1") as store:
        store.update_round(1, summary_before=BEFORE)
        store.update_round(1, summary_proposed=after)
        store.update_round(1, summary_after=after, timing=("rule_check", 0.1, 0))
        for record in (store.get_round(1), store.rounds()[0]):
            assert record is not None
            assert record["summary_before"] == BEFORE
            assert record["summary_proposed"] == after and record["summary_after"] == after


def test_a_round_record_holds_one_copy_of_a_long_summary(tmp_path):
    after = [*BEFORE, "New category"]
    with RunStore(tmp_path / "run.sqlite", "r1") as store:
        store.update_round(1, summary_before=BEFORE)
        store.update_round(1, summary_proposed=after, summary_after=after)
        stored = [json.dumps(raw(store, 1, c))
                  for c in ("summary_before", "summary_proposed", "summary_after")]
    assert sum(map(len, stored)) < 1.1 * len(json.dumps(after))


def test_a_new_summary_before_keeps_the_stored_edits_right(tmp_path):
    """A round re-run from another summary re-encodes what the record holds against it."""
    proposed, after = [*BEFORE, "Proposed"], [*BEFORE, "Checked"]
    with RunStore(tmp_path / "run.sqlite", "r1") as store:
        store.update_round(1, summary_before=BEFORE)
        store.update_round(1, summary_proposed=proposed, summary_after=after)
        store.update_round(1, summary_before=BEFORE[5:])
        record = store.get_round(1)
    assert record is not None and record["summary_before"] == BEFORE[5:]
    assert record["summary_proposed"] == proposed and record["summary_after"] == after


def test_full_copies_of_older_files_read_as_they_are(tmp_path):
    after = [*BEFORE, "New category"]
    with RunStore(tmp_path / "run.sqlite", "r1") as store:
        store.db["rounds"].insert({"run_id": "r1", "round": 1,
                                   "summary_before": json.dumps(BEFORE),
                                   "summary_proposed": json.dumps(after),
                                   "summary_after": json.dumps(after)})
        record = store.get_round(1)
        store.update_round(1, timing=("rule_check", 0.1, 0))  # a later write keeps them
        assert raw(store, 1, "summary_after") == after
    assert record is not None and record["summary_after"] == after
    assert record["summary_proposed"] == after and record["summary_before"] == BEFORE
