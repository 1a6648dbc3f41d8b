"""Box files given at test time: JSON and CSV read alike, every bad entry named with the file."""

import json

import pytest

from wspet.data.box_prompts import read_box_prompts


def test_json_and_csv_give_the_same_boxes(tmp_path):
    as_json = tmp_path / "boxes.json"
    as_json.write_text(json.dumps({"a": [[1, 2, 3, 4, 5, 6]], "b": [[0, 0, 0, 2, 2, 2], [3, 3, 3, 5, 6, 7]]}))
    as_csv = tmp_path / "boxes.csv"
    as_csv.write_text("case,i0,j0,k0,i1,j1,k1\na,1,2,3,4,5,6\nb,0,0,0,2,2,2\nb,3,3,3,5,6,7\n")
    expected = {"a": [(1, 2, 3, 4, 5, 6)], "b": [(0, 0, 0, 2, 2, 2), (3, 3, 3, 5, 6, 7)]}
    assert read_box_prompts(as_json) == expected == read_box_prompts(as_csv)


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("b.json", '{"a": [[1, 2, 3, 4, 5]]}', r"case 'a' box 0 \[1, 2, 3, 4, 5\]: not six integers"),
        ("b.json", '{"a": [[4, 2, 3, 1, 5, 6]]}', "start >= stop on axis 0"),
        ("b.json", '[[1, 2, 3, 4, 5, 6]]', "expected an object"),
        ("b.json", '{"a": "box"}', "is not a list of boxes"),
        ("b.json", '{"a": [', "not valid JSON"),
        ("b.json", '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}", "not valid JSON: nested too deeply"),
        ("b.csv", "case,x,y\na,1,2\n", "the header must be case,i0,j0,k0,i1,j1,k1"),
        ("b.csv", "case,i0,j0,k0,i1,j1,k1\na,1,2,3,4,5,six\n", r"row 2: corners .* are not integers"),
        ("b.txt", "", "is .json or .csv"),
    ],
)
def test_bad_box_files_are_refused_naming_the_file_and_the_entry(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as error:
        read_box_prompts(path)
    assert str(path) in str(error.value)


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="box file does not exist"):
        read_box_prompts(tmp_path / "nowhere.json")
