import json

import pytest

from rlhf_fast.data.jsonl import DataError, read_rows


def write(tmp_path, lines, name="d.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(l if isinstance(l, str) else json.dumps(l) for l in lines) + "\n")
    return str(path)


def test_all_row_kinds_parse(tmp_path):
    assert read_rows(write(tmp_path, [{"prompt": "p", "response": "r"}]), "sft").rows == [{"prompt": "p", "response": "r"}]
    rows = read_rows(write(tmp_path, [{"prompt": "p", "responses": ["a", "b", "c"], "ranks": [1, 0, 1]},
                                      {"prompt": "q", "chosen": "good", "rejected": "bad"}]), "ranking").rows
    assert rows[0]["ranks"] == [1, 0, 1]
    assert rows[1] == {"prompt": "q", "responses": ["good", "bad"], "ranks": [0, 1]}
    assert read_rows(write(tmp_path, [{"prompt": "p", "extra": 1}]), "prompt").rows == [{"prompt": "p"}]


@pytest.mark.parametrize(
    "line,kind,match",
    [
        ('{"prompt": "p", "response": ', "sft", "invalid JSON"),
        ({"response": "r"}, "sft", "field 'prompt' is missing"),
        ({"prompt": "p"}, "sft", "field 'response' is missing"),
        ({"prompt": "p", "response": "  "}, "sft", "field 'response' is empty"),
        ({"prompt": 3, "response": "r"}, "sft", "field 'prompt' must be a string"),
        ([1, 2], "prompt", "expected a JSON object"),
        ({"prompt": "p", "responses": ["a"], "ranks": [0]}, "ranking", "K >= 2"),
        ({"prompt": "p", "responses": ["a", "b"], "ranks": [0]}, "ranking", r"one rank per response \(2\), got 1"),
        ({"prompt": "p", "responses": ["a", ""], "ranks": [0, 1]}, "ranking", r"'responses\[1\]' must be a non-empty string"),
        ({"prompt": "p", "responses": ["a", "b"]}, "ranking", "field 'ranks' is missing"),
        ({"prompt": "p", "responses": ["a", "b"], "ranks": [0, -2]}, "ranking", r"'ranks\[1\]' must be an integer >= 0"),
        ({"prompt": "p", "responses": ["a", "b"], "ranks": [1, 1]}, "ranking", "no comparison"),
        ({"prompt": "p", "chosen": "a"}, "ranking", "field 'rejected' is missing"),
    ],
)
def test_bad_rows_name_file_line_and_field(tmp_path, line, kind, match):
    good = {"prompt": "p", "response": "r"} if kind == "sft" else (
        {"prompt": "p", "responses": ["a", "b"], "ranks": [0, 1]} if kind == "ranking" else {"prompt": "p"})
    path = write(tmp_path, [good, line])
    with pytest.raises(DataError, match=rf"d\.jsonl:2: .*{match}"):
        read_rows(path, kind)
    report = read_rows(path, kind, skip_bad_rows=True)
    assert report.skipped == 1 and len(report.rows) == 1 and "d.jsonl:2" in report.first_errors[0]


def test_blank_lines_are_ignored_and_empty_files_rejected(tmp_path):
    path = write(tmp_path, [{"prompt": "p"}, "", {"prompt": "q"}])
    assert len(read_rows(path, "prompt").rows) == 2
    with pytest.raises(DataError, match="no valid sft rows"):
        read_rows(write(tmp_path, ["", ""], name="e.jsonl"), "sft")


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="nope.jsonl"):
        read_rows(str(tmp_path / "nope.jsonl"), "sft")
