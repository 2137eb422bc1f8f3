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
