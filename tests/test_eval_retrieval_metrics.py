"""recall@k and mAP against a hand-computed ranking and scikit-learn's average_precision_score."""

import math

import pytest
import torch

from dinolab.features.eval.retrieval_metrics import retrieval_metrics, retrieval_metrics_from_features


def test_hand_computed_case():
    # Query 0 (label 0) ranks gallery labels [1, 0, 2, 0]: relevant at ranks 2 and 4.
    # Query 1 (label 2) ranks gallery labels [2, 1, 0, 0]: relevant at rank 1.
    gallery_labels = torch.tensor([0, 1, 0, 2])
    similarity = torch.tensor([[0.8, 0.9, 0.1, 0.5], [0.2, 0.6, 0.1, 0.7]])
    result = retrieval_metrics(similarity, torch.tensor([0, 2]), gallery_labels, ks=(1, 2))
    ap_query0 = (1 / 2 + 2 / 4) / 2
    ap_query1 = 1.0
    assert result["recall@1"] == pytest.approx(50.0)
    assert result["recall@2"] == pytest.approx(100.0)
    assert result["mAP"] == pytest.approx(100.0 * (ap_query0 + ap_query1) / 2)
    assert result["queries"] == 2 and result["queries_without_relevant"] == 0


def test_map_matches_sklearn_and_skips_queries_without_relevant():
    from sklearn.metrics import average_precision_score

    generator = torch.Generator().manual_seed(0)
    similarity = torch.rand(30, 50, generator=generator)
    query_labels = torch.randint(0, 6, (30,), generator=generator)
    query_labels[0] = 99  # no relevant gallery item: excluded from the means
    gallery_labels = torch.randint(0, 5, (50,), generator=generator)
    result = retrieval_metrics(similarity, query_labels, gallery_labels, ks=(3,))
    aps, recalls = [], []
    for row, label in zip(similarity, query_labels):
        relevant = (gallery_labels == label).numpy()
        if not relevant.any():
            continue
        aps.append(average_precision_score(relevant, row.numpy()))
        recalls.append(relevant[row.argsort(descending=True)[:3].numpy()].any())
    assert result["mAP"] == pytest.approx(100.0 * sum(aps) / len(aps), abs=1e-4)
    assert result["recall@3"] == pytest.approx(100.0 * sum(recalls) / len(recalls))
    assert result["queries_without_relevant"] >= 1
    assert not math.isnan(result["mAP"])


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="queries"):
        retrieval_metrics(torch.rand(2, 3), torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2]))


def test_chunked_features_equal_full_similarity():
    generator = torch.Generator().manual_seed(1)
    queries, gallery = torch.randn(23, 8, generator=generator), torch.randn(40, 8, generator=generator)
    query_labels = torch.randint(0, 4, (23,), generator=generator)
    gallery_labels = torch.randint(0, 4, (40,), generator=generator)
    unit = lambda x: torch.nn.functional.normalize(x, dim=1)  # noqa: E731
    full = retrieval_metrics(unit(queries) @ unit(gallery).T, query_labels, gallery_labels, ks=(1, 5))
    chunked = retrieval_metrics_from_features(queries, query_labels, gallery, gallery_labels, ks=(1, 5), chunk_size=5)
    assert chunked == pytest.approx(full)
