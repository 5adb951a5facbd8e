"""Evaluation metrics computed offline with numpy, with the exact standard definitions.

``evaluate.load("glue", ...)`` and ``evaluate.load("wer")`` fetch their scripts from the Hub and fail
offline, so the fine-tuning scripts use these functions instead. Each one gives the same value as the
reference implementation named in its docstring (checked in ``tests/test_metrics.py``):

- GLUE (as the ``glue`` metric of ``evaluate``/``datasets``): accuracy, binary F1 (MRPC, QQP),
  Matthews correlation (CoLA), Pearson and Spearman correlation (STS-B) — see :func:`glue_metrics`.
- Speech recognition: corpus-level word and character error rates (jiwer's definitions).
- Image classification: top-k accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Which metrics the GLUE benchmark reports per task (the `glue` metric of `evaluate`).
GLUE_TASK_METRICS: dict[str, tuple[str, ...]] = {
    "cola": ("matthews_correlation",),
    "sst2": ("accuracy",),
    "mrpc": ("accuracy", "f1"),
    "qqp": ("accuracy", "f1"),
    "stsb": ("pearson", "spearmanr"),
    "mnli": ("accuracy",),
    "mnli_matched": ("accuracy",),
    "mnli_mismatched": ("accuracy",),
    "qnli": ("accuracy",),
    "rte": ("accuracy",),
    "wnli": ("accuracy",),
    "hans": ("accuracy",),
    "ax": ("matthews_correlation",),
}


def _pair(predictions, references) -> tuple[np.ndarray, np.ndarray]:
    predictions, references = np.asarray(predictions).ravel(), np.asarray(references).ravel()
    if predictions.shape != references.shape:
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if len(references) == 0:
        raise ValueError("no predictions to score")
    return predictions, references


# --------------------------------------------------------------------------------------------------
# Classification


def accuracy(predictions, references) -> float:
    """Fraction of exact matches (``sklearn.metrics.accuracy_score``)."""
    predictions, references = _pair(predictions, references)
    return float(np.mean(predictions == references))


def f1_score(predictions, references, positive_label=1) -> float:
    """Binary F1 of the positive class, 2TP / (2TP + FP + FN), as GLUE scores MRPC and QQP
    (``sklearn.metrics.f1_score`` with ``average="binary"``; 0.0 when there is no positive at all)."""
    predictions, references = _pair(predictions, references)
    predicted, actual = predictions == positive_label, references == positive_label
    true_positives = np.sum(predicted & actual)
    denominator = 2 * true_positives + np.sum(predicted & ~actual) + np.sum(~predicted & actual)
    return float(2 * true_positives / denominator) if denominator else 0.0


def matthews_correlation(predictions, references) -> float:
    """Matthews correlation coefficient, multi-class form (Gorodkin 2004) that reduces to
    (TP·TN − FP·FN) / √((TP+FP)(TP+FN)(TN+FP)(TN+FN)) for two classes
    (``sklearn.metrics.matthews_corrcoef``; 0.0 when undefined)."""
    predictions, references = _pair(predictions, references)
    classes, indices = np.unique(np.concatenate([references, predictions]), return_inverse=True)
    true_idx, pred_idx = indices[: len(references)], indices[len(references) :]
    confusion = np.zeros((len(classes), len(classes)), dtype=np.float64)
    np.add.at(confusion, (true_idx, pred_idx), 1)
    t_sum, p_sum = confusion.sum(axis=1), confusion.sum(axis=0)
    correct, samples = np.trace(confusion), confusion.sum()
    cov_ytyp = correct * samples - np.dot(t_sum, p_sum)
    cov_ypyp = samples**2 - np.dot(p_sum, p_sum)
    cov_ytyt = samples**2 - np.dot(t_sum, t_sum)
    if cov_ypyp * cov_ytyt == 0:
        return 0.0
    return float(cov_ytyp / np.sqrt(cov_ytyt * cov_ypyp))


def top_k_accuracy(logits, references, k: int = 1) -> float:
    """Fraction of examples whose reference is among the ``k`` highest logits (top-1 = argmax)."""
    logits = np.asarray(logits)
    references = np.asarray(references).ravel()
    if logits.ndim != 2 or len(logits) != len(references):
        raise ValueError(f"logits of shape {logits.shape} do not match {len(references)} references")
    if k == 1:
        return accuracy(logits.argmax(axis=-1), references)
    if k >= logits.shape[1]:
        return 1.0
    top = np.argpartition(-logits, kth=k - 1, axis=-1)[:, :k]
    return float(np.mean(np.any(top == references[:, None], axis=-1)))


# --------------------------------------------------------------------------------------------------
# Regression (STS-B)


def pearson_correlation(predictions, references) -> float:
    """Pearson's r (``scipy.stats.pearsonr``; NaN when either input is constant)."""
    x, y = (a.astype(np.float64) for a in _pair(predictions, references))
    x, y = x - x.mean(), y - y.mean()
    denominator = np.sqrt(np.dot(x, x) * np.dot(y, y))
    if denominator == 0:
        return float("nan")
    return float(np.clip(np.dot(x, y) / denominator, -1.0, 1.0))


def average_ranks(values) -> np.ndarray:
    """1-based ranks, ties given the average of the ranks they span (``scipy.stats.rankdata``)."""
    values = np.asarray(values).ravel()
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    starts_group = np.r_[True, ordered[1:] != ordered[:-1]]
    starts = np.flatnonzero(starts_group)
    counts = np.diff(np.r_[starts, len(values)])
    group_rank = starts + (counts + 1) / 2.0  # mean of the 1-based ranks start+1 .. start+count
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = group_rank[np.cumsum(starts_group) - 1]
    return ranks


def spearman_correlation(predictions, references) -> float:
    """Spearman's ρ: Pearson's r of the average ranks (``scipy.stats.spearmanr``)."""
    predictions, references = _pair(predictions, references)
    return pearson_correlation(average_ranks(predictions), average_ranks(references))


# --------------------------------------------------------------------------------------------------
# GLUE

_METRIC_FUNCTIONS = {
    "accuracy": accuracy,
    "f1": f1_score,
    "matthews_correlation": matthews_correlation,
    "pearson": pearson_correlation,
    "spearmanr": spearman_correlation,
}


def glue_metrics(task_name: str | None, predictions, references, is_regression: bool = False) -> dict:
    """The metrics GLUE reports for ``task_name``, named as ``evaluate``'s ``glue`` metric names them
    (``accuracy``, ``f1``, ``matthews_correlation``, ``pearson``, ``spearmanr``), plus the mean of
    several as ``combined_score`` (as transformers' ``run_glue.py``).

    ``predictions`` are class ids (regression: scores). Without a GLUE task: Pearson/Spearman for
    regression, else accuracy (and binary F1 when there are two classes).
    """
    if task_name is not None:
        if task_name not in GLUE_TASK_METRICS:
            raise ValueError(f"unknown GLUE task {task_name!r}; expected one of {sorted(GLUE_TASK_METRICS)}")
        names = GLUE_TASK_METRICS[task_name]
    elif is_regression:
        names = ("pearson", "spearmanr")
    else:
        binary = set(np.unique(np.concatenate([np.ravel(predictions), np.ravel(references)]))) <= {0, 1}
        names = ("accuracy", "f1") if binary else ("accuracy",)
    result = {name: _METRIC_FUNCTIONS[name](predictions, references) for name in names}
    if len(result) > 1:
        result["combined_score"] = float(np.mean(list(result.values())))
    return result


# --------------------------------------------------------------------------------------------------
# Speech recognition


def edit_distance(reference: Sequence, hypothesis: Sequence) -> int:
    """Levenshtein distance (substitutions, deletions, insertions, each costing 1) of two sequences.

    One numpy pass per element of the shorter sequence: substitution and deletion are vectorised, and
    the chain of insertions along a row is a running minimum, d[j] = min_k≤j (t[k] + j − k).
    """
    vocabulary: dict = {}
    a = np.array([vocabulary.setdefault(token, len(vocabulary)) for token in reference], dtype=np.int64)
    b = np.array([vocabulary.setdefault(token, len(vocabulary)) for token in hypothesis], dtype=np.int64)
    if len(a) > len(b):  # symmetric: loop over the shorter one
        a, b = b, a
    if len(a) == 0:
        return len(b)
    offsets = np.arange(len(b) + 1)
    previous = offsets.copy()
    row = np.empty(len(b) + 1, dtype=np.int64)
    for i, token in enumerate(a, start=1):
        row[0] = i
        np.minimum(previous[1:] + 1, previous[:-1] + (b != token), out=row[1:])
        previous = np.minimum.accumulate(row - offsets) + offsets
    return int(previous[-1])


def _error_rate(references: Sequence[str], predictions: Sequence[str], split) -> float:
    if len(references) != len(predictions):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    errors = total = 0
    for reference, prediction in zip(references, predictions):
        reference, prediction = split(reference), split(prediction)
        errors += edit_distance(reference, prediction)
        total += len(reference)
    return errors / max(total, 1)  # jiwer's convention for an all-empty reference: the error count


def word_error_rate(references: Sequence[str], predictions: Sequence[str]) -> float:
    """Corpus WER: word-level edit distances summed over all pairs / total number of reference words.

    Words are the whitespace-separated tokens (``jiwer.wer`` with its default transform).
    """
    return _error_rate(references, predictions, str.split)


def character_error_rate(references: Sequence[str], predictions: Sequence[str]) -> float:
    """Corpus CER: character-level edit distances summed over all pairs / total reference characters.

    Characters of each string with leading/trailing whitespace stripped; inner spaces count
    (``jiwer.cer`` with its default transform).
    """
    return _error_rate(references, predictions, lambda text: list(text.strip()))
