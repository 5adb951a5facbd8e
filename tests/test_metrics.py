"""The offline metrics equal scikit-learn, scipy and jiwer computed on the same predictions."""

from __future__ import annotations

import numpy as np
import pytest
from data2vec_hf import metrics
from scipy import stats
from sklearn import metrics as skm

jiwer = pytest.importorskip("jiwer")

SEEDS = range(5)


@pytest.mark.parametrize("seed", SEEDS)
def test_classification_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 300))
    labels = rng.integers(0, 2, n)
    preds = np.where(rng.random(n) < 0.7, labels, rng.integers(0, 2, n))  # correlated, with errors
    assert metrics.accuracy(preds, labels) == pytest.approx(skm.accuracy_score(labels, preds), abs=1e-12)
    assert metrics.f1_score(preds, labels) == pytest.approx(skm.f1_score(labels, preds), abs=1e-12)
    assert metrics.matthews_correlation(preds, labels) == pytest.approx(
        skm.matthews_corrcoef(labels, preds), abs=1e-12
    )
    multi_labels, multi_preds = rng.integers(0, 5, n), rng.integers(0, 5, n)
    assert metrics.matthews_correlation(multi_preds, multi_labels) == pytest.approx(
        skm.matthews_corrcoef(multi_labels, multi_preds), abs=1e-12
    )
    assert metrics.accuracy(multi_preds, multi_labels) == pytest.approx(
        skm.accuracy_score(multi_labels, multi_preds), abs=1e-12
    )


@pytest.mark.filterwarnings("ignore:A single label was found")
def test_degenerate_classification_cases_match_sklearn():
    labels = np.array([0, 0, 0, 0])
    for preds in (np.array([0, 0, 0, 0]), np.array([1, 0, 0, 0]), np.array([1, 1, 1, 1])):
        assert metrics.f1_score(preds, labels) == skm.f1_score(labels, preds, zero_division=0.0)
        assert metrics.matthews_correlation(preds, labels) == skm.matthews_corrcoef(labels, preds)
    with pytest.raises(ValueError):
        metrics.accuracy([1, 2], [1])


@pytest.mark.parametrize("seed", SEEDS)
def test_correlations_match_scipy(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 300))
    labels = rng.uniform(0, 5, n).round(1)  # STS-B style scores, many ties
    preds = labels + rng.normal(0, 1.5, n)
    preds[: n // 3] = preds[: n // 3].round()  # ties in the predictions too
    assert metrics.pearson_correlation(preds, labels) == pytest.approx(
        stats.pearsonr(preds, labels)[0], abs=1e-10
    )
    assert metrics.spearman_correlation(preds, labels) == pytest.approx(
        stats.spearmanr(preds, labels)[0], abs=1e-10
    )
    np.testing.assert_array_equal(metrics.average_ranks(labels), stats.rankdata(labels))


@pytest.mark.parametrize("seed", SEEDS)
def test_top_k_accuracy_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(200, 10))
    labels = rng.integers(0, 10, 200)
    for k in (1, 3, 5):
        expected = skm.top_k_accuracy_score(labels, logits, k=k, labels=np.arange(10))
        assert metrics.top_k_accuracy(logits, labels, k=k) == pytest.approx(expected, abs=1e-12)
    assert metrics.top_k_accuracy(logits, labels, k=1) == skm.accuracy_score(labels, logits.argmax(-1))


def test_glue_metrics_per_task():
    rng = np.random.default_rng(0)
    labels, preds = rng.integers(0, 2, 50), rng.integers(0, 2, 50)
    assert set(metrics.glue_metrics("cola", preds, labels)) == {"matthews_correlation"}
    mrpc = metrics.glue_metrics("mrpc", preds, labels)
    assert set(mrpc) == {"accuracy", "f1", "combined_score"}
    assert mrpc["combined_score"] == pytest.approx((mrpc["accuracy"] + mrpc["f1"]) / 2)
    assert set(metrics.glue_metrics("qqp", preds, labels)) == {"accuracy", "f1", "combined_score"}
    for task in ("sst2", "mnli", "mnli_mismatched", "qnli", "rte", "wnli"):
        assert set(metrics.glue_metrics(task, preds, labels)) == {"accuracy"}
    scores = rng.uniform(0, 5, 50)
    stsb = metrics.glue_metrics("stsb", scores + rng.normal(size=50), scores)
    assert set(stsb) == {"pearson", "spearmanr", "combined_score"}
    assert set(metrics.glue_metrics(None, preds, labels)) == {"accuracy", "f1", "combined_score"}
    assert set(metrics.glue_metrics(None, preds * 2, labels * 2)) == {"accuracy"}  # labels {0, 2}
    with pytest.raises(ValueError, match="unknown GLUE task"):
        metrics.glue_metrics("squad", preds, labels)


def _random_sentences(rng, n, words, max_len):
    return [" ".join(rng.choice(words, size=rng.integers(0, max_len))) for _ in range(n)]


@pytest.mark.parametrize("seed", SEEDS)
def test_wer_cer_match_jiwer(seed):
    rng = np.random.default_rng(seed)
    words = ["THE", "CAT", "SAT", "ON", "A", "MAT", "IT'S", "DOG", "DOGS"]
    references = [s or "A" for s in _random_sentences(rng, 40, words, 12)]  # jiwer rejects empty refs
    predictions = []
    for ref in references:  # edits of the reference: substitutions, deletions, insertions
        tokens = ref.split()
        tokens = [rng.choice(words) if rng.random() < 0.2 else t for t in tokens if rng.random() > 0.1]
        if rng.random() < 0.3:
            tokens.insert(int(rng.integers(0, len(tokens) + 1)), str(rng.choice(words)))
        predictions.append(" ".join(tokens))
    predictions[0] = ""  # an empty hypothesis
    predictions[1] = "  " + predictions[1] + "   "  # stray spaces
    assert metrics.word_error_rate(references, predictions) == pytest.approx(
        jiwer.wer(references, predictions), abs=1e-12
    )
    assert metrics.character_error_rate(references, predictions) == pytest.approx(
        jiwer.cer(references, predictions), abs=1e-12
    )


def test_edit_distance_against_plain_dynamic_programming():
    def reference_levenshtein(a, b):
        d = list(range(len(b) + 1))
        for i, x in enumerate(a, 1):
            prev, d[0] = d[0], i
            for j, y in enumerate(b, 1):
                prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (x != y))
        return d[-1]

    rng = np.random.default_rng(0)
    for _ in range(200):
        a = "".join(rng.choice(list("abc"), size=rng.integers(0, 12)))
        b = "".join(rng.choice(list("abc"), size=rng.integers(0, 12)))
        assert metrics.edit_distance(a, b) == reference_levenshtein(a, b), (a, b)
    assert metrics.word_error_rate(["A B"], ["A B"]) == 0.0
    assert metrics.character_error_rate(["AB"], ["AC"]) == 0.5
