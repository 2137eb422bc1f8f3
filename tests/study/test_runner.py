import json

import numpy as np
from safetensors.numpy import load_file

from fedcare.study.config import parse_config
from fedcare.study.runner import StudyRunner, best_federated
from tests.conftest import make_sites


def test_study_writes_metrics_report_and_models(tmp_path):
    config = parse_config(
        {
            "name": "toy",
            "seeds": [0, 1],
            "rounds": 3,
            "local": {"lr": 0.1, "batch_size": 8},
            "strategies": [{"name": "fedavg"}, {"name": "fedadam", "params": {"server_lr": 0.05}}],
        }
    )
    dataset = make_sites([40, 25, 30])
    outcome = StudyRunner(config, tmp_path, dataset=dataset).run()
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert [s["name"] for s in metrics["strategies"]] == ["local", "pooled", "fedavg", "fedadam"]
    fedavg = metrics["strategies"][2]
    assert len(fedavg["per_site"]["site0"]["accuracy"]["values"]) == 2
    assert fedavg["curves"]["round"] == [1, 2, 3]
    assert fedavg["communication"]["upload_bytes"] > 0
    # Mean of sites = mean over the per-site values, seed by seed.
    per_seed = np.mean(
        [
            [fedavg["per_site"][s]["accuracy"]["values"][i] for s in ("site0", "site1", "site2")]
            for i in range(2)
        ],
        axis=1,
    )
    assert fedavg["overall"]["mean_site_accuracy"]["mean"] == np.mean(per_seed)
    for name in ("report.html", "metrics.csv", "config.yaml"):
        assert (tmp_path / name).is_file()
    local_model = load_file(str(tmp_path / "models" / "local-seed0.safetensors"))
    assert {"site0/linear.weight", "site2/linear.bias"} <= set(local_model)
    assert best_federated(outcome.metrics)[0] in {"fedavg", "fedadam"}
