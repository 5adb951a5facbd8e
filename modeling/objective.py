"""The data2vec objective shared by all modalities: config fields, output, teacher life cycle, loss.

A modality's ``*ForPreTraining`` model mixes in :class:`Data2VecPreTrainingMixin`, says which of its
modules the EMA teacher mirrors and which parts of it are shared, and implements ``forward`` as
"student predictions at masked positions" + "teacher layer outputs"; everything else lives here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import ClassVar

import torch
from torch import nn
from transformers.utils import ModelOutput, logging

from .ema import EMATeacher, annealed_ema_decay
from .losses import feature_std, regression_loss
from .targets import build_targets

OBJECTIVE_DOC = """
    Objective fields (shared by every data2vec pretraining config):

        average_top_k_layers (`int`): number of top teacher blocks whose FFN outputs are averaged into targets.
        instance_norm_target_layer (`bool`): instance-normalise each block output over time before averaging.
        layer_norm_target_layer (`bool`): parameter-less layer norm of each block output before averaging.
        instance_norm_targets (`bool`): instance-normalise the averaged target.
        layer_norm_targets (`bool`): parameter-less layer norm of the averaged target.
        loss_beta (`float`): Smooth L1 β; 0 gives the squared error.
        loss_scale (`float`, *optional*): multiplies the per-position loss; `None` means 1/√hidden_size.
        ema_decay (`float`): EMA decay τ at the first update.
        ema_end_decay (`float`): EMA decay reached after `ema_anneal_end_step` updates (linear anneal).
        ema_anneal_end_step (`int`): number of updates over which τ is annealed (None: the whole run, which
            the pretraining scripts set from ``--max_train_steps``).
        ema_fp32 (`bool`): keep the teacher in float32 when the student is created in half precision.
        min_target_var (`float`): collapse guard threshold on the targets' feature std (checked by the trainer;
            0 = no guard, as in the recipes without one).
        min_pred_var (`float`): collapse guard threshold on the predictions' feature std (0 = none).
        collapse_guard_after (`int`): number of updates before the collapse guard starts checking.
"""


@dataclass(repr=False)
class Data2VecObjectiveConfigMixin:
    """Dataclass fields of the data2vec objective; mixed into each modality's pretraining config."""

    average_top_k_layers: int = 8
    instance_norm_target_layer: bool = False
    layer_norm_target_layer: bool = False
    instance_norm_targets: bool = False
    layer_norm_targets: bool = False
    loss_beta: float | int = 0.0
    loss_scale: float | int | None = None
    ema_decay: float = 0.999
    ema_end_decay: float = 0.9999
    ema_anneal_end_step: int = 30000
    ema_fp32: bool = True
    min_target_var: float = 0.1
    min_pred_var: float = 0.01
    collapse_guard_after: int = 5000


@dataclass(repr=False)
class Data2VecBackboneConfigMixin(Data2VecObjectiveConfigMixin):
    """data2vec 1.0 pretraining configs: a transformers backbone config plus the objective fields.

    Subclasses name their native backbone config and list their own extra (masking, head) fields,
    so that the backbone config can be rebuilt without them. (2.0 configs describe their own models.)
    """

    backbone_config_class: ClassVar[type]
    pretraining_only_fields: ClassVar[tuple[str, ...]] = ()

    def to_backbone_config(self):
        """The native transformers config of the backbone (pretraining fields removed)."""
        backbone_cls = self.backbone_config_class
        drop = {f.name for f in fields(Data2VecObjectiveConfigMixin)} | set(self.pretraining_only_fields)
        drop |= {"model_type", "architectures", "auto_map"}
        values = {k: v for k, v in self.to_dict().items() if k not in drop}
        return backbone_cls.from_dict(values)


@dataclass
class Data2VecPreTrainingOutput(ModelOutput):
    """Output of every ``*ForPreTraining`` model.

    Args:
        loss: mean regression loss over the masked positions (scalar).
        loss_sum: the summed per-position loss (detached) — divide by a global count of masked
            positions to normalise across processes and accumulation steps.
        num_masked: number of masked positions regressed (every clone counted for data2vec 2.0).
        target_var / pred_var: feature std of targets / predictions (detached), for logging and the
            collapse guard.
        mask: the boolean mask that was used (B x T), handy when the model sampled it.
        prediction / target: regression-head outputs and teacher targets at the masked positions
            (N x D, detached), in the order of ``mask``'s True entries.
        last_hidden_state: the student's final hidden states (B x T x D).
    """

    loss: torch.Tensor | None = None
    loss_sum: torch.Tensor | None = None
    num_masked: torch.Tensor | None = None
    target_var: torch.Tensor | None = None
    pred_var: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    prediction: torch.Tensor | None = None
    target: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None


class Data2VecPreTrainingMixin:
    """Teacher life cycle and regression objective for a ``PreTrainedModel`` subclass.

    Subclasses set ``teacher_shared`` (names, relative to the mirrored module, that the teacher shares
    with the student) and implement ``teacher_source()`` (the student module the teacher averages).
    """

    teacher_shared: tuple[str, ...] = ()

    def teacher_source(self) -> nn.Module:
        raise NotImplementedError

    def _build_teacher(self) -> None:
        cfg = self.config
        if not 1 <= cfg.average_top_k_layers <= cfg.num_hidden_layers:
            raise ValueError(
                f"average_top_k_layers={cfg.average_top_k_layers} must be between 1 and num_hidden_layers="
                f"{cfg.num_hidden_layers}; set it in the config (or pass average_top_k_layers=... to from_pretrained)"
            )
        self.teacher = EMATeacher(
            self.teacher_source(), shared=self.teacher_shared, fp32=self.config.ema_fp32
        )

    def reset_teacher(self) -> None:
        """Make the teacher an exact copy of the student (done at init and when loading a backbone)."""
        self.teacher.copy_from(self.teacher_source())

    def ema_decay_at(self, num_updates: int) -> float:
        cfg = self.config
        if cfg.ema_anneal_end_step is None:
            raise ValueError(
                "ema_anneal_end_step is None, which means 'the number of updates of the run' (the pretraining "
                "scripts fill it in); set it to the number of updates over which to anneal the EMA decay"
            )
        return annealed_ema_decay(num_updates, cfg.ema_decay, cfg.ema_end_decay, cfg.ema_anneal_end_step)

    def ema_step(self, num_updates: int) -> float:
        """Update the teacher after optimizer update number ``num_updates``; returns the τ used."""
        decay = self.ema_decay_at(num_updates)
        if decay < 1.0:
            self.teacher.step(self.teacher_source(), decay)
        return decay

    def _targets(self, layer_outputs, padding_mask=None) -> torch.Tensor:
        cfg = self.config
        return build_targets(
            layer_outputs,
            cfg.average_top_k_layers,
            instance_norm_target_layer=cfg.instance_norm_target_layer,
            layer_norm_target_layer=cfg.layer_norm_target_layer,
            instance_norm_targets=cfg.instance_norm_targets,
            layer_norm_targets=cfg.layer_norm_targets,
            padding_mask=padding_mask,
        )

    def _objective(self, prediction, target, mask, last_hidden_state=None) -> Data2VecPreTrainingOutput:
        """Loss between N x D predictions and targets taken at the masked positions."""
        per_position = regression_loss(prediction, target, self.config.loss_beta, self.config.loss_scale)
        num_masked = torch.tensor(per_position.numel(), device=per_position.device)
        loss_sum = per_position.sum()
        return Data2VecPreTrainingOutput(
            loss=loss_sum / num_masked.clamp(min=1),
            loss_sum=loss_sum.detach(),
            num_masked=num_masked,
            target_var=feature_std(target),
            pred_var=feature_std(prediction),
            mask=mask,
            prediction=prediction.detach(),
            target=target,
            last_hidden_state=last_hidden_state,
        )

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """Like ``PreTrainedModel.from_pretrained``; also accepts an exported encoder (a native transformers
        data2vec model, a converted fairseq checkpoint, a backbone saved by this package). Then the student
        is loaded from it, the teacher copied from the student and the pretraining head initialised; one INFO
        line says so and names what was newly initialised, and transformers' load report lists only what is
        really amiss (see :meth:`_adjust_missing_and_unexpected_keys`). With ``output_loading_info=True``,
        ``missing_keys`` are the tensors that were newly initialised, never the teacher's when it was copied.
        A checkpoint with a teacher that lacks some of its tensors gets its whole teacher reset to a copy of
        the student, with a warning."""
        want_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        source = (args[0] if args else kwargs.get("pretrained_model_name_or_path")) or "the given state dict"
        encoder_load = model.__dict__.pop("_encoder_checkpoint_load", None)
        teacher_missing = sorted(key for key in info.get("missing_keys", ()) if key.startswith("teacher."))
        logger = logging.get_logger(__name__)  # not a module global: the remote code has one per file
        if encoder_load is not None:
            model.reset_teacher()
            newly = encoder_load["newly_initialised"]
            info["missing_keys"] = set(info.get("missing_keys", ())) | encoder_load["missing"]
            logger.info(
                f"{cls.__name__}: loaded the student encoder ({model.base_model_prefix}) from {source}; the EMA "
                "teacher is a copy of it (the checkpoint has no teacher); newly initialised: "
                + model._describe_keys(newly)
            )
        elif teacher_missing:
            model.reset_teacher()
            logger.warning(
                f"{cls.__name__}: the checkpoint {source} lacks {len(teacher_missing)} of the teacher's "
                f"{len(model._teacher_keys())} tensors (MISSING in the load report above); the whole EMA teacher "
                "was reset to a copy of the loaded student"
            )
        return (model, info) if want_info else model

    # Student tensors that an exported encoder may legitimately lack (regular expressions on the model's
    # state-dict keys), e.g. a mask embedding that transformers only creates with SpecAugment enabled.
    # Pretraining initialises them; when they are absent they are named in the load message.
    _optional_in_exported_encoders: ClassVar[tuple[str, ...]] = ()

    def _teacher_keys(self) -> set[str]:
        return {f"teacher.{key}" for key in self.teacher.state_dict()}

    def _head_modules(self) -> list[str]:
        """Top-level modules that are neither the student nor the teacher: the pretraining head."""
        return [name for name, _ in self.named_children() if name not in (self.base_model_prefix, "teacher")]

    def _describe_keys(self, keys) -> str:
        """``decoder (6 tensors), data2vec_audio.masked_spec_embed``: head modules by name with their
        number of tensors, any other tensor by its full name."""
        heads = self._head_modules()
        groups: dict[str, int] = {}
        for key in sorted(keys):
            top = key.split(".", 1)[0]
            name = top if top in heads else key
            groups[name] = groups.get(name, 0) + 1
        if not groups:
            return "nothing"
        return ", ".join(
            f"{name} ({count} tensor{'s' if count != 1 else ''})" if name in heads else name
            for name, count in groups.items()
        )

    def _adjust_missing_and_unexpected_keys(self, *args, **kwargs):
        """transformers' hook that drops the keys matching the model's ``_keys_to_ignore_on_load_missing``
        from the missing keys just before it prints its load report ("MISSING ... newly initialized").

        A checkpoint that holds no teacher tensor but does hold student ones is an exported encoder. For this
        load only, the patterns are extended by the teacher (copied from the student by ``from_pretrained``),
        the pretraining head and ``_optional_in_exported_encoders`` (all expected to be absent, initialised
        for pretraining and named in our own log line). Any other missing tensor — a student tensor, or any
        tensor of a full pretraining checkpoint — stays in the report."""
        info = args[0] if args else kwargs.get("loading_info")
        # a LoadStateDictInfo; tolerate the missing keys themselves (the hook's older signature)
        missing = set(getattr(info, "missing_keys", info) or ())
        mismatched = {entry[0] for entry in getattr(info, "mismatched_keys", ()) or ()}
        teacher = self._teacher_keys()
        student_prefix = f"{self.base_model_prefix}."
        student = {key for key in self.state_dict() if key.startswith(student_prefix)}
        if not teacher or not teacher <= missing or student <= missing | mismatched:
            return super()._adjust_missing_and_unexpected_keys(*args, **kwargs)

        self._encoder_checkpoint_load = {
            "newly_initialised": sorted(
                (missing | mismatched) - teacher
            ),  # mismatched ones are re-initialised
            "missing": missing - teacher,
        }
        expected_absent = {r"^teacher\.", *self._optional_in_exported_encoders}
        expected_absent |= {rf"^{re.escape(name)}\." for name in self._head_modules()}
        own = self._keys_to_ignore_on_load_missing
        self._keys_to_ignore_on_load_missing = set(own or ()) | expected_absent
        try:
            return super()._adjust_missing_and_unexpected_keys(*args, **kwargs)
        finally:
            self._keys_to_ignore_on_load_missing = own
