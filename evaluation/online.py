"""Online evaluation during pretraining: the ``--eval_*`` flags and :class:`OnlineEvaluator`.

Typical wiring in a training loop (the evaluator runs on every process; the metrics it returns are the
same on all of them)::

    evaluator = OnlineEvaluator.from_args(args, "audio", processor, accelerator)  # None: no eval source

    def evaluate(loop, metrics):
        step = loop.progress.num_updates
        if evaluator is not None and evaluator.due(step, loop.args.max_train_steps):
            metrics.update(evaluator.evaluate(loop.unwrapped, step))

    PretrainingLoop(spec, args, callbacks=[evaluate]).train()

The metrics are flat floats: ``eval/knn_layer_{i}`` and ``eval/linear_layer_{i}`` for every hidden
state ``i`` (0 = the input of the first block), ``eval/knn_layer_{i}_cls`` / ``eval/linear_layer_{i}_cls``
for the CLS token of 2.0 image encoders, ``eval/linear_best`` with ``eval/best_layer`` (and
``eval/best_is_cls``), ``eval/knn_best`` with ``eval/knn_best_layer``, ``eval/chance`` (most frequent
test class) and ``eval/seconds``. Accuracies are fractions in [0, 1].
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import time

import torch
from data2vec_hf.pretraining.typed_flags import add_dataclass_arguments

from .data import LabelledData, load_labelled_data
from .features import EncoderInputs, encoder_kind, extract_features, sampling_rate_of, student_encoder
from .probes import KNN_TEMPERATURE, knn_accuracy, linear_probe
from .settings import OnlineEvaluationArguments, OnlineSchedule, ProbeSettings, online_settings

logger = logging.getLogger("data2vec_hf.evaluation")


def add_arguments(group: argparse._ArgumentGroup) -> None:
    """Add the online-evaluation flags (all off by default; :data:`~.settings.OnlineEvaluationArguments`,
    the probe settings of ``data2vec-probe`` behind ``--eval_``) to an argparse parser or group."""
    add_dataclass_arguments(group, OnlineEvaluationArguments)


class OnlineEvaluator:
    """Probes the frozen student encoder on a labelled train/test pair; see the module docstring.

    Args:
        data: the decoded labelled data (:func:`~data2vec_hf.evaluation.load_labelled_data`).
        processor: what the pretraining script exports with the encoder (feature extractor, image
            processor or tokenizer): the probe data is prepared the way the model sees its training data.
        accelerator: with several processes, each encodes its share of the examples and the features are
            gathered; the probes are fitted on the main process and their accuracies broadcast.
        eval_steps: :meth:`due` is true every ``eval_steps`` updates (0: only at the last one).
    """

    def __init__(
        self,
        data: LabelledData,
        processor,
        accelerator=None,
        *,
        eval_steps: int = 500,
        eval_at_start: bool = False,
        knn_k: int = 20,
        knn_temperature: float = KNN_TEMPERATURE,
        probe_iterations: int = 100,
        batch_size: int = 16,
        max_seconds: float | None = 30.0,
        seed: int = 0,
    ):
        self.data, self.processor, self.accelerator = data, processor, accelerator
        self.eval_steps, self.eval_at_start = eval_steps, eval_at_start
        self.knn_k, self.knn_temperature = knn_k, knn_temperature
        self.probe_iterations, self.batch_size, self.max_seconds, self.seed = (
            probe_iterations, batch_size, max_seconds, seed
        )  # fmt: skip
        self.history: list[tuple[int | None, dict[str, float]]] = []
        self._inputs: dict = {}

    @classmethod
    def from_args(cls, args, modality: str, processor, accelerator=None) -> OnlineEvaluator | None:
        """The evaluator the ``--eval_*`` flags ask for, or None when no eval data source was given.
        Loading (and building the embedded set) runs on the main process first, then on the others."""
        settings, schedule = online_settings(args)
        return cls.from_settings(
            settings,
            modality,
            processor,
            accelerator,
            schedule=schedule,
            cache_dir=getattr(args, "cache_dir", None),
        )

    @classmethod
    def from_settings(
        cls,
        settings: ProbeSettings,
        modality: str,
        processor,
        accelerator=None,
        *,
        schedule: OnlineSchedule | None = None,
        cache_dir: str | None = None,
    ) -> OnlineEvaluator | None:
        """The evaluator of typed probe settings (None when they name no labelled data source)."""
        if not any((settings.dataset_name, settings.data_dir, settings.data_file, settings.embedded)):
            return None
        schedule = schedule or OnlineSchedule()
        guard = accelerator.main_process_first() if accelerator is not None else contextlib.nullcontext()
        with guard:
            data = load_labelled_data(
                modality,
                embedded=bool(settings.embedded),
                dataset_name=settings.dataset_name,
                dataset_config_name=settings.dataset_config_name,
                data_dir=settings.data_dir,
                data_file=settings.data_file,
                label_column=settings.label_column,
                input_column=settings.input_column,
                train_split=settings.train_split,
                test_split=settings.test_split,
                test_fraction=settings.test_fraction,
                max_examples=settings.max_examples,
                sampling_rate=sampling_rate_of(processor) if modality == "audio" else 16000,
                max_seconds=settings.max_seconds,
                seed=settings.seed,
                cache_dir=cache_dir,
            )
        return cls(
            data,
            processor,
            accelerator,
            eval_steps=schedule.steps,
            eval_at_start=bool(schedule.at_start),
            knn_k=settings.knn_k,
            knn_temperature=settings.knn_temperature,
            probe_iterations=settings.probe_iterations,
            batch_size=settings.batch_size,
            max_seconds=settings.max_seconds,
            seed=settings.seed,
        )

    def due(self, step: int, max_steps: int | None = None) -> bool:
        """Whether to evaluate after update ``step`` (``0``: before the first, with ``eval_at_start``)."""
        if step == 0:
            return self.eval_at_start
        if max_steps is not None and step >= max_steps:
            return True
        return bool(self.eval_steps) and step % self.eval_steps == 0

    def inputs(self, encoder) -> EncoderInputs:
        """Training and test examples prepared for this encoder (cached per image size / text length)."""
        config = encoder.config
        key = (getattr(config, "image_size", None), getattr(config, "max_position_embeddings", None))
        if key not in self._inputs:
            values = list(self.data.train.values) + list(self.data.test.values)
            self._inputs = {
                key: EncoderInputs(self.data.modality, values, self.processor, config, self.max_seconds)
            }
        return self._inputs[key]

    def features(self, model) -> dict[str, torch.Tensor]:
        """Per-layer pooled features of the training and test examples: ``{"mean"|"cls": (L, N, D)}``
        with the training examples first (on every process)."""
        return extract_features(
            model,
            self.inputs(student_encoder(model)),
            batch_size=self.batch_size,
            accelerator=self.accelerator,
        )

    def evaluate(self, model, step: int | None = None) -> dict[str, float]:
        """Probe ``model`` (a ``*ForPreTraining`` model or an encoder) and return the flat metrics.

        Runs on every process and returns the same dict on all of them. The model's train/eval mode is
        restored, and the global random state is left untouched (evaluating does not change training).
        """
        started = time.perf_counter()
        encoder = student_encoder(model)
        modality, _ = encoder_kind(encoder)
        if modality != self.data.modality:
            raise ValueError(f"the eval data is {self.data.modality}, the model is a {modality} encoder")
        with torch.random.fork_rng(devices=[]):
            features = self.features(model)
            names = metric_names(features)
            main = self.accelerator is None or self.accelerator.is_main_process
            values = self.probe(features) if main else torch.zeros(len(names))
        device = next(iter(features.values())).device
        values = torch.cat(
            [values.to(device, torch.float64), torch.tensor([0.0], device=device, dtype=torch.float64)]
        )
        values[-1] = time.perf_counter() - started
        if self.accelerator is not None and self.accelerator.num_processes > 1:
            from accelerate.utils import broadcast

            values = broadcast(values, from_process=0)
        metrics = dict(zip([*names, "eval/seconds"], values.tolist()))
        self.history.append((step, metrics))
        if main:
            logger.info(
                "eval at update %s: linear %.3f (layer %d), k-NN %.3f (layer %d), chance %.3f, %.1f s",
                step, metrics["eval/linear_best"], metrics["eval/best_layer"], metrics["eval/knn_best"],
                metrics["eval/knn_best_layer"], metrics["eval/chance"], metrics["eval/seconds"],
            )  # fmt: skip
        return metrics

    def probe(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """The probe accuracies, in the order of :func:`metric_names`."""
        data = self.data
        n_train = len(data.train)
        device = next(iter(features.values())).device
        y_train = torch.tensor(data.train.labels, device=device)
        y_test = torch.tensor(data.test.labels, device=device)
        results = {}
        for name, value in features.items():
            train, test = value[:, :n_train], value[:, n_train:]
            knn = knn_accuracy(
                train, y_train, test, y_test, data.num_classes, k=self.knn_k, temperature=self.knn_temperature
            )
            linear = linear_probe(
                train, y_train, test, y_test, data.num_classes, max_iter=self.probe_iterations, seed=self.seed
            ).accuracy
            results[name] = (knn.cpu(), linear.cpu())
        return summarise(results, chance(data.test.labels))


def chance(labels: list[int]) -> float:
    """Accuracy of always answering the most frequent class."""
    return max(labels.count(c) for c in set(labels)) / len(labels)


def metric_names(features: dict[str, torch.Tensor]) -> list[str]:
    """Metric keys for the feature sets (every process can compute them from the feature shapes)."""
    names = []
    for name, value in features.items():
        suffix = "_cls" if name == "cls" else ""
        for i in range(value.shape[0]):
            names += [f"eval/knn_layer_{i}{suffix}", f"eval/linear_layer_{i}{suffix}"]
    names += ["eval/linear_best", "eval/best_layer", "eval/knn_best", "eval/knn_best_layer"]
    if "cls" in features:
        names.append("eval/best_is_cls")
    return [*names, "eval/chance"]


def summarise(results: dict[str, tuple[torch.Tensor, torch.Tensor]], chance_level: float) -> torch.Tensor:
    """Flatten per-set (knn, linear) accuracies into the :func:`metric_names` order, with the bests."""
    values = []
    for knn, linear in results.values():
        values += torch.stack([knn, linear], dim=1).flatten().tolist()
    knn_all = torch.cat([knn for knn, _ in results.values()])
    linear_all = torch.cat([linear for _, linear in results.values()])
    layers = next(iter(results.values()))[0].shape[0]
    best_linear, best_knn = int(linear_all.argmax()), int(knn_all.argmax())
    values += [
        float(linear_all[best_linear]),
        best_linear % layers,
        float(knn_all[best_knn]),
        best_knn % layers,
    ]
    if "cls" in results:
        values.append(float(best_linear >= layers))
    return torch.tensor([*values, chance_level], dtype=torch.float64)
