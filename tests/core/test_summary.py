"""The console's results table: one row per stage and verifier, then one per stage that ran a writer-identification
probe, open-set identification or k-against-k verification, columns aligned whatever the names."""

from __future__ import annotations

from hvkit.pipeline import summary


def test_rows_align_however_long_the_names() -> None:
    metrics = {
        "vicreg": {"verification": {"cosine_pair": {"roc_auc": 0.91, "accuracy": 0.8312, "eer": 0.17},
                                    "all_pairs": {"roc_auc": 0.9, "eer": 0.2}}},
        "a_stage_named_at_some_length": {"verification": {"correlation_pair": {"roc_auc": 0.8329, "accuracy": 0.7715,
                                                                               "eer": 0.2344}}},
    }
    lines = summary(metrics).splitlines()
    assert lines[0] == "results:"
    assert [line.split() for line in lines[1:]] == [
        ["vicreg", "cosine_pair", "accuracy", "0.8312", "AUC", "0.9100", "EER", "0.1700"],
        ["vicreg", "all_pairs", "accuracy", "-", "AUC", "0.9000", "EER", "0.2000"],
        ["a_stage_named_at_some_length", "correlation_pair", "accuracy", "0.7715", "AUC", "0.8329", "EER", "0.2344"]]
    assert len({line.index("accuracy") for line in lines[1:]}) == 1
    assert len({line.index("AUC") for line in lines[1:]}) == 1


def test_probes_follow_the_verifiers_a_row_a_stage() -> None:
    metrics = {
        "data": {"synthetic": True},
        "frozen": {"verification": {"cosine_pair": {"roc_auc": 0.9, "accuracy": 0.8, "eer": 0.2}},
                   "knn_probe": {"accuracy": 0.33221, "k": 5}, "linear_probe": {"accuracy": 0.47169, "split": True}},
        "a_stage_named_at_greater_length": {"linear_probe": {"skipped": True, "writers_with_two_images": 1},
                                            "knn_probe": {"accuracy": 0.5}},
        "linear_only": {"linear_probe": {"accuracy": 0.25}},
    }
    lines = summary(metrics).splitlines()
    assert lines[1].split()[:2] == ["frozen", "cosine_pair"]
    assert lines[2] == "writer identification, accuracy:"
    assert [line.split() for line in lines[3:]] == [
        ["frozen", "k-NN", "0.3322", "linear", "probe", "0.4717"],
        ["a_stage_named_at_greater_length", "k-NN", "0.5000", "linear", "probe", "-"],
        ["linear_only", "k-NN", "-", "linear", "probe", "0.2500"]]
    assert len({line.index("k-NN") for line in lines[3:]}) == 1
    assert len({line.index("linear probe") for line in lines[3:]}) == 1
    assert summary({"probe": {"linear_probe": {"accuracy": 0.5}}}).splitlines() == [
        "results: (no verification metrics)", "writer identification, accuracy:",
        f"  {'probe':<22} k-NN   -     linear probe 0.5000"]
    assert summary({"data": {"synthetic": False}}) == "results: (no verification metrics)"


def test_set_verification_follows_a_row_a_stage_with_the_sizes_that_had_trials() -> None:
    metrics = {
        "frozen": {"verification": {"cosine_pair": {"roc_auc": 0.9, "accuracy": 0.8, "eer": 0.2}},
                   "set_verification": {"cross_document": True,
                                        "k2": {"trials": 40, "roc_auc": 0.95, "accuracy": 0.9},
                                        "k1": {"trials": 50, "roc_auc": 0.9, "accuracy": 0.8},
                                        "k8": {"trials": 0, "writers": 0}}},
        "no_val": {"set_verification": {"cross_document": False, "k1": {"trials": 4, "roc_auc": 0.75}}},
        "too_big": {"set_verification": {"cross_document": False, "k9": {"trials": 0, "writers": 0}}},
    }
    lines = summary(metrics).splitlines()
    assert lines[2] == "k known against k questioned images, accuracy / AUC:"
    assert [line.split() for line in lines[3:]] == [
        ["frozen", "k=1", "0.8000", "/", "0.9000", "k=2", "0.9000", "/", "0.9500"],
        ["no_val", "k=1", "-", "/", "0.7500"], ["too_big", "no", "trials"]]
    assert len({line.index("k=1") for line in lines[3:5]}) == 1


def test_open_set_identification_follows_the_probes_a_row_a_stage() -> None:
    metrics = {
        "frozen": {"knn_probe": {"accuracy": 0.3},
                   "open_set": {"rank1": 0.25, "dir_at_far_0.01": 0.016, "dir_at_far_0.1": 0.0736, "ci": {}}},
        "a_longer_stage_name_here": {"open_set": {"rank1": 0.6, "dir_at_far_0.05": 0.2}},
        "skipped": {"open_set": {"skipped": True, "enrolled_writers": 1, "writers": 2}},
    }
    lines = summary(metrics).splitlines()
    assert lines[3] == ("open-set identification (half the writers known), rank 1 / detection and identification "
                        "rate at each false alarm rate:")
    assert [line.split() for line in lines[4:]] == [
        ["frozen", "rank", "1", "0.2500", "DIR@0.01", "0.0160", "DIR@0.1", "0.0736"],
        ["a_longer_stage_name_here", "rank", "1", "0.6000", "DIR@0.05", "0.2000"]]
    assert len({line.index("rank 1") for line in lines[4:]}) == 1
