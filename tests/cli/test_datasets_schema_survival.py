"""`fedcare datasets schema --time --event`: a survival draft from the command line."""

import yaml
from typer.testing import CliRunner

from fedcare.cli.main import app

runner = CliRunner()


def test_time_and_event_draft_a_survival_schema_and_one_alone_is_refused(tmp_path):
    csv = tmp_path / "north.csv"
    csv.write_text("age,days,status\n61,120,1\n70,800,0\n55,30,0\n")
    drafted = runner.invoke(
        app, ["datasets", "schema", str(csv), "--time", "days", "--event", "status"]
    )
    assert drafted.exit_code == 0, drafted.output
    survival = yaml.safe_load(drafted.output)["survival"]
    assert survival == {
        "time": "days",
        "event": "status",
        "event_values": ["1"],
        "censored_values": ["0"],
    }
    alone = runner.invoke(app, ["datasets", "schema", str(csv), "--event", "status"])
    assert alone.exit_code == 2
    assert "needs both --time and --event" in alone.output
