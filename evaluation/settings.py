"""The probe settings, declared once: the flags of ``data2vec-probe`` (:class:`ProbeSettings`, under its
own names) and of online evaluation during pretraining (:data:`OnlineEvaluationArguments`: the same
settings behind ``--eval_``, ``--data_dir``/``--data_file`` being ``--eval_dir``/``--eval_file``, and
when to evaluate).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from data2vec_hf.pretraining.typed_flags import from_namespace, prefixed

from .probes import KNN_TEMPERATURE


@dataclass
class ProbeSettings:
    """Which labelled data the frozen features are probed on (exactly one source), and how."""

    _argument_group_name = "labelled data and probes"
    _argument_group_description = (
        "exactly one source of labelled data: --embedded, --dataset_name, --data_dir or --data_file"
    )

    embedded: bool = field(
        default=False,
        metadata={
            "help": "the embedded probe set of the model's modality: spoken animal words (12 classes, unseen "
            "speakers), printed digits (10 classes) or original vs word-shuffled sentences (2 classes); built "
            "offline, disjoint from the embedded pretraining corpora"
        },
    )
    dataset_name: str | None = field(default=None, metadata={"help": "a labelled datasets Hub name"})
    dataset_config_name: str | None = field(
        default=None, metadata={"help": "the configuration name of the Hub dataset"}
    )
    data_dir: str | None = field(
        default=None,
        metadata={
            "help": "a folder: metadata.csv/metadata.jsonl (input, label and optional 'split' column), class "
            "sub-folders (<dir>/<label>/<file>; text: .txt files, one example per line), or train/ and test/ "
            "with class sub-folders"
        },
    )
    data_file: str | None = field(
        default=None,
        metadata={
            "help": "a .csv/.jsonl/.json manifest: file_name or path (relative to the manifest) or text, the "
            "label column, and optionally 'split' (train/test)"
        },
    )
    label_column: str = field(default="label", metadata={"help": "column holding the class labels"})
    input_column: str | None = field(
        default=None,
        metadata={
            "help": "audio/image/text column (default: the typed column, then audio/file/path/file_name, "
            "image/img/file_name/path or text/sentence/content)"
        },
    )
    train_split: str = field(default="train", metadata={"help": "split the probes are fitted on"})
    test_split: str = field(
        default="test",
        metadata={"help": "split the probes are scored on; without one, a held-out share of the train split"},
    )
    test_fraction: float = field(
        default=0.2,
        metadata={
            "help": "without a test split: share of each class held out for testing (stratified, seeded)"
        },
    )
    max_examples: int = field(
        default=5000, metadata={"help": "at most this many examples per split (seeded)"}
    )
    max_seconds: float = field(default=30.0, metadata={"help": "longer clips are centre-cropped (audio)"})
    batch_size: int = field(default=16, metadata={"help": "examples per forward when extracting features"})
    knn_k: int = field(default=20, metadata={"help": "neighbours of the cosine k-NN probe"})
    knn_temperature: float = field(
        default=KNN_TEMPERATURE, metadata={"help": "k-NN votes weigh exp(similarity / T)"}
    )
    probe_iterations: int = field(
        default=100,
        metadata={
            "help": "L-BFGS iterations of the linear and weighted-sum probes (full batch, a fixed budget)"
        },
    )
    seed: int = field(default=0, metadata={"help": "seed of the held-out split and of subsets"})


@dataclass
class OnlineSchedule:
    """When a pretraining run probes its student."""

    steps: int = field(
        default=500,
        metadata={"help": "evaluate every N updates (and after the last one); 0 = only after the last one"},
    )
    at_start: bool = field(
        default=False, metadata={"help": "also evaluate the initial model, before the first update"}
    )


ONLINE_PREFIX = "eval_"
ONLINE_RENAMES = {"data_dir": "eval_dir", "data_file": "eval_file"}
# the flags of online evaluation: ProbeSettings and OnlineSchedule behind --eval_
OnlineEvaluationArguments = prefixed(
    "OnlineEvaluationArguments",
    (ProbeSettings, OnlineSchedule),
    ONLINE_PREFIX,
    ONLINE_RENAMES,
    _argument_group_name="online evaluation",
    _argument_group_description="probe the frozen student on a labelled task while training (off by default)",
)
OnlineEvaluationArguments.__module__ = __name__


def online_settings(args) -> tuple[ProbeSettings, OnlineSchedule]:
    """The probe settings and schedule of a pretraining run's ``--eval_*`` flags (defaults for those
    ``args`` does not have)."""
    return (
        from_namespace(ProbeSettings, args, ONLINE_PREFIX, ONLINE_RENAMES),
        from_namespace(OnlineSchedule, args, ONLINE_PREFIX),
    )
