"""Reading metrics.jsonl: a torn last line is skipped and said; damage elsewhere is named."""

from __future__ import annotations

import json

import pytest
import yaml

from raydt.errors import DataError
from raydt.sinks import read_metrics


def rows(n):
    return "".join(json.dumps({"step": 100 * (i + 1), "eval/normalized_score": 10.0 * i}) + "\n" for i in range(n))


def test_a_torn_last_line_is_skipped_with_a_warning_naming_the_file(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(rows(3) + '{"step": 400, "eval/norm')  # killed mid-write
    said = []
    assert [r["step"] for r in read_metrics(path, warn=said.append)] == [100, 200, 300]
    assert len(said) == 1 and str(path) in said[0] and "last line (4)" in said[0]


def test_a_bad_line_before_the_last_names_file_and_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(rows(1) + "not json\n" + rows(2))
    with pytest.raises(DataError, match=r"metrics.jsonl, line 2: not a JSON row"):
        read_metrics(path)


def test_report_goes_on_past_damaged_trials(tmp_path, capsys):
    from raydt.cli import main

    config = {"train": {"seed": 0}, "model": {"backbone": "random"}}
    for name, text in (("good", rows(3)), ("torn", rows(2) + '{"st'), ("bad", "{}\nxx\n" + rows(1))):
        run = tmp_path / name
        run.mkdir()
        (run / "config.resolved.yaml").write_text(yaml.safe_dump(config))
        (run / "metrics.jsonl").write_text(text)
    assert main(["report", str(tmp_path), "--csv"]) == 0
    captured = capsys.readouterr()
    assert "torn/metrics.jsonl: skipped its last line" in captured.err
    assert "bad/metrics.jsonl, line 2" in captured.err and "Traceback" not in captured.err
    assert captured.out.splitlines()[1].startswith("3,")  # three runs, one group: none dropped silently
