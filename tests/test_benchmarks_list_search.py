"""benchmarks/list_search.py runs end to end and finds, list by list, the links faiss's search finds."""

from __future__ import annotations

import json
import sys

from benchmarks import list_search


def test_the_benchmark_reports_both_timings_and_the_same_links(tmp_path, monkeypatch):
    path = tmp_path / "result.json"
    monkeypatch.setattr(sys, "argv", ["list_search", "--size", "4000", "--queries", "1000", "--dim", "32",
                                      "--threshold", "0.5", "--json", str(path)])
    list_search.main()
    result = json.loads(path.read_text())
    assert result["same_links"] is True and result["links"] > 1000  # self-matches and neighbours
    assert result["faiss_seconds"] > 0 and result["by_list_seconds"] > 0 and result["nlist"] == 102
