import json

from conftest import run_graph
from datasets import load_from_disk

from graph.export import export_run


def test_export_formats(stub, context, tmp_path):
    _, store = run_graph("data_advisor", context(rounds=2, prompts_per_round=3), thread_id="ex")
    paths = export_run(store, tmp_path / "out", run_info={"generator_model": "stub"})
    rows = [json.loads(line) for line in paths["jsonl"].read_text().splitlines()]
    assert len(rows) == 6
    assert {"prompt", "response", "category", "round", "method"} <= set(rows[0])
    hf = load_from_disk(str(paths["hf"]))
    assert hf.num_rows == 6 and hf[0]["prompt"] == rows[0]["prompt"]
    card = (paths["hf"] / "README.md").read_text()
    assert "rows: 6" in card and "data_advisor" in card
    import pyarrow.parquet as pq

    assert pq.read_table(paths["parquet"]).num_rows == 6
