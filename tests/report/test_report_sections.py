from fedcare.report.html import render_report
from fedcare.report.results import parse_results


def with_sections(metrics: dict) -> dict:
    fed = next(s for s in metrics["strategies"] if s["kind"] == "federated")
    site = metrics["sites"][0]["name"]
    fed["explanations"] = {
        "features": ["age", "<b>chol</b>"],
        "accuracy_drop": {"mean": [0.05, 0.01], "std": [0.0, 0.0]},
    }
    fed["personalisation"] = {
        site: {
            "personal": {"mean": 0.8},
            "global": {"mean": 0.7},
            "local": {"mean": 0.85},
            "gain_vs_global": 0.1,
            "gain_vs_local": -0.05,
        }
    }
    return metrics


def test_explanations_and_personalisation_sections_render_escaped(metrics_doc):
    metrics = with_sections(metrics_doc)
    page = render_report(parse_results(metrics))
    assert "<h2>Explanations</h2>" in page
    assert "&lt;b&gt;chol&lt;/b&gt;" in page
    assert "<h2>Personalisation</h2>" in page
    assert "-0.050" in page and "worse" in page


def test_sections_are_absent_without_data(metrics_doc):
    page = render_report(parse_results(metrics_doc))
    assert "<h2>Explanations</h2>" not in page
    assert "<h2>Personalisation</h2>" not in page
