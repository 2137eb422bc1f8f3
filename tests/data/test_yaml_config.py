"""Settings files are bounded: size, nesting and alias expansion are refused before the
YAML is built into objects, each with the file (and line) named."""

from __future__ import annotations

import pytest

from fedcare.core.errors import ConfigError
from fedcare.data.json_file import read_json
from fedcare.data.yaml_config import MAX_YAML_BYTES, read_yaml


def test_a_file_just_over_the_size_bound_is_refused_with_the_size_found(tmp_path):
    path = tmp_path / "huge.yaml"
    path.write_bytes(b"#" * (MAX_YAML_BYTES + 1))
    with pytest.raises(ConfigError) as err:
        read_yaml(path, "config file")
    assert str(err.value).startswith(
        f"config file '{path}' is 1.0 MiB (1,048,577 bytes); the most a config file may be "
        "is 1.0 MiB (1,048,576 bytes)"
    )
    path.write_bytes(b"#" * MAX_YAML_BYTES)  # at the bound: read (a comment: None)
    assert read_yaml(path, "config file") is None


@pytest.mark.parametrize(
    "text",
    [
        "a: " + "[" * 20_000 + "]" * 20_000 + "\n",  # flow style
        "a: " + "{b: " * 20_000 + "1" + "}" * 20_000 + "\n",
        "".join("  " * i + f"k{i}:\n" for i in range(500)) + "  " * 500 + "x: 1\n",  # block
    ],
    ids=["lists", "mappings", "block"],
)
def test_deep_nesting_is_a_config_error_naming_file_and_line_not_a_traceback(tmp_path, text):
    path = tmp_path / "deep.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"{path}(, line \d+: nested more than 32|.*line 1)"):
        read_yaml(path, "config file")


def test_the_nesting_bound_names_the_line_where_it_is_crossed(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text("".join("  " * i + f"k{i}:\n" for i in range(40)) + "  " * 40 + "x: 1\n")
    with pytest.raises(ConfigError, match=rf"^{path}, line 33: nested more than 32 levels deep"):
        read_yaml(path, "config file")


def test_an_alias_bomb_is_refused_before_it_is_expanded(tmp_path):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    path = tmp_path / "laughs.yaml"
    path.write_text("\n".join(lines) + "\n")  # 10^9 values once expanded, 700 bytes on disk
    with pytest.raises(ConfigError, match=rf"^{path}, line 6: more than 1,000,000 values"):
        read_yaml(path, "config file")


def test_text_that_is_not_utf8_names_the_line(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: study\nsite: Zürich\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"line 2: not UTF-8 text \(byte 0xfc"):
        read_yaml(path, "config file")


def test_a_normal_file_with_anchors_reads_as_before(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("local: &l {lr: 0.1}\nstrategies: [{name: fedavg, local: *l}]\n")
    assert read_yaml(path, "config file") == {
        "local": {"lr": 0.1},
        "strategies": [{"name": "fedavg", "local": {"lr": 0.1}}],
    }


def test_json_state_files_are_bounded_too(tmp_path):
    path = tmp_path / "approvals.json"
    path.write_text(
        '{"a": "[[[[ brackets in a string do not count",\n "b": ' + "[" * 65 + "]" * 65 + "}"
    )
    with pytest.raises(ConfigError, match=rf"^approval file '{path}', line 2: nested more than 64"):
        read_json(path, "approval file", 1 << 20)
    path.write_text('{"a": 1}  ')
    with pytest.raises(ConfigError, match=r"is 10 bytes; the most an? approval file may be is 9"):
        read_json(path, "approval file", 9)
    path.write_text('{"a": [1, 2]}')
    assert read_json(path, "approval file", 1 << 20) == {"a": [1, 2]}
