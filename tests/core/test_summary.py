"""The console's results table: one row per stage and verifier, columns aligned whatever the names."""

from __future__ import annotations

from hvkit.pipeline import summary


def test_rows_align_however_long_the_names() -> None:
    metrics = {
        "vicreg": {"verification": {"cosine_pair": {"roc_auc": 0.91, "accuracy": 0.8312, "eer": 0.17},
                                    "all_pairs": {"roc_auc": 0.9, "eer": 0.2}}},
        "a_stage_named_at_some_length": {"verification": {"correlation_pair": {"roc_auc": 0.8329, "accuracy": 0.7715,
                                                                               "eer": 0.2344}}},
        "probe": {"linear_probe": {"accuracy": 0.5}},
    }
    lines = summary(metrics).splitlines()
    assert lines[0] == "results:"
    assert [line.split() for line in lines[1:]] == [
        ["vicreg", "cosine_pair", "accuracy", "0.8312", "AUC", "0.9100", "EER", "0.1700"],
        ["vicreg", "all_pairs", "accuracy", "-", "AUC", "0.9000", "EER", "0.2000"],
        ["a_stage_named_at_some_length", "correlation_pair", "accuracy", "0.7715", "AUC", "0.8329", "EER", "0.2344"]]
    assert len({line.index("accuracy") for line in lines[1:]}) == 1
    assert len({line.index("AUC") for line in lines[1:]}) == 1
    assert summary({"probe": {"linear_probe": {"accuracy": 0.5}}}) == "results: (no verification metrics)"
