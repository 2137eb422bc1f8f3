import pytest
import yaml

from fedcare.core.errors import ConfigError, DataValidationError
from fedcare.data.registry import load_dataset
from fedcare.study.config import load_config, parse_config
from fedcare.study.presets import heart_demo_config
from tests.data.conftest import SCHEMA_DICT, site_frame, write_csv


def test_misspelled_key_is_named_with_its_place_and_a_suggestion():
    with pytest.raises(ConfigError) as err:
        parse_config(
            {
                "rounds": 3,
                "local": {"optimzer": "sgd"},
                "strategies": [{"name": "fedavg", "parms": {}}],
            }
        )
    text = str(err.value)
    assert "unknown key 'local.optimzer'; did you mean 'optimizer'?" in text
    assert "unknown key 'strategies[0].parms'; did you mean 'params'?" in text


def test_bad_values_and_unknown_strategies_are_explained():
    with pytest.raises(ConfigError, match=r"'rounds': Input should be greater than or equal to 1"):
        parse_config({"rounds": 0})
    with pytest.raises(ConfigError, match="unknown strategy 'fedavgx'"):
        parse_config({"strategies": [{"name": "fedavgx"}]})
    with pytest.raises(ConfigError, match="either 'epochs' or 'steps'"):
        parse_config({"local": {"epochs": 2, "steps": 10}})


def test_duplicate_strategy_names_need_labels():
    with pytest.raises(ConfigError, match="give repeated ones a 'label'"):
        parse_config({"strategies": [{"name": "fedavg"}, {"name": "fedavg"}]})


def test_file_problems_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("rounds: [1,\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: not valid YAML"):
        load_config(broken)


def test_the_embedded_heart_study_is_a_valid_config():
    config = heart_demo_config(seeds=[0], rounds=2)
    assert config.dataset.name == "heart-disease"
    assert config.rounds == 2
    assert {"fedavg", "scaffold", "fedadam", "fedyogi"} <= {s.name for s in config.strategies}


def test_relative_paths_in_a_study_yaml_are_relative_to_the_yaml_folder(tmp_path, monkeypatch):
    folder = tmp_path / "project"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "schema.yaml").write_text(yaml.safe_dump(SCHEMA_DICT))
    write_csv(folder / "data", "north", site_frame(0, 40))
    write_csv(folder / "data", "south", site_frame(1, 40))
    params = {
        "schema": "data/schema.yaml",
        "files": {"north": "data/north.csv", "south": "data/south.csv"},
    }
    study = {
        "name": "relative",
        "model": {"name": "logistic"},
        "dataset": {"name": "tabular", "params": params},
        "output": "out",
        "baselines": ["local"],
    }
    (folder / "study.yaml").write_text(yaml.safe_dump(study))
    monkeypatch.chdir(tmp_path)  # started from elsewhere: the paths still find the files
    config = load_config("project/study.yaml")
    assert config.dataset.params["schema"] == str(folder / "data" / "schema.yaml")
    assert config.dataset.params["files"]["south"] == str(folder / "data" / "south.csv")
    assert config.output == str(folder / "out")
    assert load_dataset("tabular", **config.dataset.params).site_names == ["north", "south"]


def test_a_missing_schema_or_site_file_shows_the_full_path_tried(tmp_path, monkeypatch):
    (tmp_path / "study.yaml").write_text(
        yaml.safe_dump(
            {
                "name": "missing-files",
                "model": {"name": "logistic"},
                "baselines": ["local"],
                "dataset": {
                    "name": "tabular",
                    "params": {"schema": "schema.yaml", "files": {"north": "north.csv"}},
                },
            }
        )
    )
    monkeypatch.chdir(tmp_path.parent)
    config = load_config(tmp_path / "study.yaml")
    with pytest.raises(ConfigError, match=f"schema file not found: {tmp_path / 'schema.yaml'}$"):
        load_dataset("tabular", **config.dataset.params)
    (tmp_path / "schema.yaml").write_text(yaml.safe_dump(SCHEMA_DICT))
    with pytest.raises(
        DataValidationError, match=f"file '{tmp_path / 'north.csv'}': file not found"
    ):
        load_dataset("tabular", **config.dataset.params)


def test_an_empty_study_file_names_the_file_and_the_keys_a_study_needs(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text("# nothing yet\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith(
        f"{path}: the study file is empty; a study needs the keys name, dataset, model and "
        "one of strategies, baselines, epsilon_sweep"
    )


def test_a_study_without_a_dataset_is_an_error_not_the_heart_default(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text("name: mine\nmodel: {name: logistic}\nstrategies: [{name: fedavg}]\n")
    with pytest.raises(ConfigError, match=rf"^{path}: missing required key\(s\): dataset\. "):
        load_config(path)
    path.write_text("name: mine\ndataset: {params: {}}\nmodel: {}\nbaselines: [local]\n")
    with pytest.raises(ConfigError, match=r"missing required key\(s\): dataset.name; model.name"):
        load_config(path)


def test_a_misspelled_required_key_gets_both_the_hint_and_the_missing_key(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(
        "name: mine\ndataste: {name: heart-disease}\nmodel: {name: logistic}\n"
        "strategies: [{name: fedavg}]\n"
    )
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "unknown key 'dataste'; did you mean 'dataset'?" in str(err.value)
    assert "missing required key(s): dataset." in str(err.value)
