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


def test_communication_section_lists_upload_per_site_and_round(metrics_doc):
    fed = next(s for s in metrics_doc["strategies"] if s["kind"] == "federated")
    fed["communication"]["site_upload_bytes_per_round"] = {
        site["name"]: 2048.0 for site in metrics_doc["sites"]
    }
    page = render_report(parse_results(metrics_doc))
    assert "<h2>Communication</h2>" in page
    assert ">2.0 KiB</td>" in page


def test_contributions_section_shows_shapley_and_leave_one_out(metrics_doc):
    metrics_doc["contributions"] = {
        "utility": "mean site test accuracy",
        "all_sites_utility": 0.75,
        "empty_utility": 0.5,
        "coalitions_evaluated": 16,
        "sites": {"cleveland": {"shapley_exact": 0.1, "leave_one_out": 0.02}},
    }
    page = render_report(parse_results(metrics_doc))
    assert "<h2>Contribution of each site</h2>" in page
    assert "+0.100" in page and "+0.020" in page
