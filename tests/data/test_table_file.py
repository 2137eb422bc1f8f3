"""Reading a hospital's export: delimiters and stray spaces, read alike in simulation and at a site."""

import numpy as np
import pytest
import yaml

from fedcare.data.schema import TabularSchema
from fedcare.data.site_table import SiteTableSpec, check_site_table, read_table
from fedcare.data.table_file import detect_delimiter, read_table_file
from fedcare.data.tabular import load_tabular_sites, validate_sites
from tests.data.conftest import SCHEMA_DICT, site_frame, write_csv

SCHEMA = TabularSchema.parse(SCHEMA_DICT)


def export(tmp_path, name: str, sep: str, space: str = "") -> str:
    """site_frame(0, 40) as a hospital system might write it."""
    path = tmp_path / f"{name}.csv"
    frame = site_frame(0, 40)
    lines = [(sep + space).join(frame.columns)]
    for row in frame.itertuples(index=False):
        lines.append((sep + space).join("" if v != v else str(v) for v in row))  # NaN: empty
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    ("sep", "name"), [(";", "semicolon"), ("\t", "tab"), ("|", "pipe")], ids=["semi", "tab", "pipe"]
)
def test_a_file_with_another_delimiter_is_read_with_a_warning_naming_it(tmp_path, sep, name):
    files = {"a": export(tmp_path, "a", sep), "b": write_csv(tmp_path, "b", site_frame(1, 40))}
    report = validate_sites(SCHEMA, files)
    assert report.ok, [str(e) for e in report.errors]
    (warning,) = report.warnings
    assert f"site 'a', file '{files['a']}': read with the {name} ({sep!r}) delimiter" in str(
        warning
    )
    comma = load_tabular_sites(SCHEMA, {"a": write_csv(tmp_path, "c", site_frame(0, 40))})
    other = load_tabular_sites(SCHEMA, {"a": files["a"]})
    np.testing.assert_array_equal(comma.site("a").x_train, other.site("a").x_train)


def test_spaces_after_commas_and_around_names_are_ignored_with_a_warning(tmp_path):
    path = export(tmp_path, "a", ",", space=" ")
    text = path.read_text().splitlines()
    path.write_text("\n".join([" age , smoker,ward, bmi,outcome ", *text[1:]]) + "\n")
    read = read_table_file("a", path)
    assert list(read.frame.columns) == ["age", "smoker", "ward", "bmi", "outcome"]
    assert read.frame["age"].dtype.kind == "i"
    (warning,) = read.warnings
    assert "spaces around column names were removed: ' age ', ' smoker', ' bmi', 'outcome '" in str(
        warning
    )
    assert validate_sites(SCHEMA, {"a": path}).ok


def test_quoted_delimiters_do_not_fool_the_detection():
    text = 'name;note\n"a";"x, y, z"\n"b";"p, q"\n'
    assert detect_delimiter(text) == ";"
    assert detect_delimiter("age,sex\n1,0\n2,1\n") == ","
    assert detect_delimiter("single\n1\n2\n") == ","


def test_an_undetectable_delimiter_is_one_issue_saying_what_was_probably_wrong(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("age:smoker:ward:bmi:outcome\n61:yes:icu:24.1:yes\n50:no:icu::no\n")
    (issue,) = validate_sites(SCHEMA, {"a": path}).errors
    text = str(issue)
    assert "read as a single column, so 4 declared columns are missing" in text
    assert "probably not separated by a comma, semicolon, tab or pipe" in text
    assert "'age:smoker:ward:bmi:outcome'" in text


def test_a_misspelled_column_gets_a_did_you_mean_from_the_file_columns(tmp_path):
    frame = site_frame(0, 40).rename(columns={"smoker": "smokr", "ward": "Ward"})
    path = write_csv(tmp_path, "a", frame)
    issues = sorted(str(e) for e in validate_sites(SCHEMA, {"a": path}).errors)
    assert len(issues) == 2  # one per missing column
    assert "column 'smoker': missing column; did you mean 'smokr'?" in issues[0]
    assert "column 'ward': missing column; did you mean 'Ward'?" in issues[1]


def test_the_deployed_site_reads_and_reports_a_file_exactly_as_the_simulator(tmp_path):
    schema = tmp_path / "schema.yaml"
    schema.write_text(yaml.safe_dump(SCHEMA_DICT))
    spec = SiteTableSpec.from_study({"schema": str(schema)})
    path = export(tmp_path, "a", ";")
    path.write_text(path.read_text().replace(";no\n", ";No\n", 1))  # one undeclared label
    site = check_site_table(spec, "a", path, 0)
    simulated = validate_sites(spec.schema, {"a": path})
    assert [str(e) for e in site.errors] == [str(e) for e in simulated.errors]
    assert "not among the declared values" in str(site.errors[0])
    assert "'No' in row" in str(site.errors[0])
    assert [str(w) for w in site.warnings] == [str(w) for w in simulated.warnings]
    assert read_table("a", path).frame.equals(read_table_file("a", path).frame)


def test_a_deployed_site_with_one_class_training_rows_gets_the_simulator_warning(tmp_path):
    schema = tmp_path / "schema.yaml"
    schema.write_text(yaml.safe_dump(SCHEMA_DICT))
    spec = SiteTableSpec.from_study({"schema": str(schema)})
    frame = site_frame(0, 40)
    frame["outcome"] = "yes"
    path = write_csv(tmp_path, "a", frame)
    check = check_site_table(spec, "a", path, 0)
    assert check.ok
    (warning,) = check.warnings
    simulated = load_tabular_sites(spec.schema, {"a": path}, normalise="site")
    assert str(warning) == (
        f"site 'a', file '{path}', column 'outcome': "
        + simulated.extra["warnings"][0].removeprefix("site 'a': ")
    )
