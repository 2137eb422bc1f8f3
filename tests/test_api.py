import pytest

from fedcare.api import Study


def test_a_study_in_a_few_lines_of_python(tmp_path):
    study = Study(
        dataset="heart-disease",
        model="logistic",
        rounds=10,
        seeds=[0],
        local={"lr": 0.05, "batch_size": 16},
    )
    study.add_strategy("fedavg")
    study.add_strategy("fedadam", server_lr=0.03)
    result = study.run(tmp_path)
    assert 0.5 < result.accuracy("fedadam") <= 1.0
    assert 0.0 <= result.accuracy("local", site="va") <= 1.0
    assert "fedadam" in result.table()
    assert (tmp_path / "report.html").exists()


def test_a_survival_study_reports_its_c_index_and_names_the_metric_it_lacks(tmp_path):
    study = Study(
        dataset="tcga-brca",
        dataset_params={"normalisation": "site"},
        model="fedcare.models.cox:LinearRisk",
        rounds=3,
        seeds=[0],
        local={"optimizer": "sgd", "lr": 0.03, "steps": 2, "batch_size": 16},
    )
    study.add_strategy("fedavg")
    result = study.run(tmp_path)
    assert 0.0 <= result.c_index("fedavg") <= 1.0
    assert 0.0 <= result.c_index("fedavg", site="europe") <= 1.0
    with pytest.raises(KeyError, match=r"reports c-index, not accuracy: use result.c_index"):
        result.accuracy("fedavg")
    with pytest.raises(KeyError, match=r"no site 'mars'"):
        result.c_index("fedavg", site="mars")
