"""Measure what pretraining learned: frozen-feature probes (k-NN and linear) for data2vec encoders.

- :class:`OnlineEvaluator` (``--eval_*`` flags from :func:`add_arguments`) probes the student encoder
  of a running pretraining job every ``--eval_steps`` updates;
- ``data2vec-probe`` / ``python -m data2vec_hf.evaluation`` probes any checkpoint;
- :class:`ProbeSettings` declares the probe flags once: ``data2vec-probe``'s, and the same behind
  ``--eval_`` for online evaluation (:data:`OnlineEvaluationArguments`);
- :func:`build_probe_set` builds the embedded labelled probe sets (speech, images, text) offline.
"""

from .baselines import baseline_accuracy
from .data import LabelledData, LabelledSplit, load_labelled_data
from .features import EncoderInputs, NotAnEncoderError, encoder_kind, extract_features, student_encoder
from .online import OnlineEvaluator, add_arguments
from .probe_sets import build_probe_set
from .probes import knn_accuracy, knn_predict, linear_probe, weighted_layer_probe
from .settings import OnlineEvaluationArguments, OnlineSchedule, ProbeSettings

__all__ = [
    "EncoderInputs",
    "LabelledData",
    "LabelledSplit",
    "NotAnEncoderError",
    "OnlineEvaluationArguments",
    "OnlineEvaluator",
    "OnlineSchedule",
    "ProbeSettings",
    "add_arguments",
    "baseline_accuracy",
    "build_probe_set",
    "encoder_kind",
    "extract_features",
    "knn_accuracy",
    "knn_predict",
    "linear_probe",
    "load_labelled_data",
    "student_encoder",
    "weighted_layer_probe",
]
