import pytest

from fedcare.core.errors import ConfigError
from fedcare.study.config import load_config, parse_config
from fedcare.study.presets import heart_demo_config


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
