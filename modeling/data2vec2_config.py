"""data2vec 2.0 configuration: the fields the audio, vision and text configs share.

:class:`Data2Vec2ConfigMixin` holds the transformer and pretraining fields with the released base models'
defaults, and ``DATA2VEC2_DOC`` documents them (each modality's config docstring includes it). The
encoder that reads them is in ``data2vec2_encoder.py``, the pretraining step in ``data2vec2_pretraining.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .objective import Data2VecObjectiveConfigMixin

DATA2VEC2_DOC = """
    Transformer fields (fairseq ``model`` section):

        hidden_size (`int`): ``embed_dim``. num_hidden_layers (`int`): ``depth``. num_attention_heads (`int`).
        intermediate_size (`int`): FFN width (``mlp_ratio * embed_dim``). layer_norm_eps (`float`): ``norm_eps``.
        hidden_dropout (`float`): ``encoder_dropout`` (after attention). attention_dropout (`float`).
        activation_dropout (`float`): inside the FFN. post_mlp_dropout (`float`): ``post_mlp_drop``.
        layerdrop (`float`). drop_path_rate (`float`): ``end_drop_path_rate`` (linear from 0 over the blocks).
        prenet_depth (`int`): extra blocks in the modality encoder. prenet_dropout / prenet_layerdrop (`float`).
        num_extra_tokens (`int`): learned tokens (CLS) prepended before the blocks.
        init_extra_token_zero (`bool`): the first extra token starts at zero (else, like the others, N(0, 1)).
        initializer_range (`float`): std of the normal initialisation.

    Pretraining fields (fairseq ``model`` and ``modalities.<m>`` sections):

        clone_batch (`int`): M, masked copies of each sample (the teacher runs once per sample).
        mask_prob (`float`), mask_length (`int`), inverse_mask (`bool`), mask_prob_adjust (`float`): the
            (inverse) block masking; every sample gets exactly the same number of masked positions.
        mask_noise_std (`float`): std of the noise that fills masked positions at the decoder input.
        decoder_dim / decoder_kernel / decoder_layers / decoder_groups (`int`), decoder_residual (`bool`),
        decoder_input_dropout (`float`), decoder_projection_layers (`int`), decoder_projection_ratio (`float`):
            the convolutional decoder.
        cls_loss (`float`): weight of the CLS-token loss (student CLS vs. time-mean of the targets).
        ema_encoder_only (`bool`): the teacher averages the transformer blocks only.
        ema_local_encoder (`bool`): the teacher also has its own local encoder (images; it also kept a
            small audio model from collapsing, see the README).
"""


@dataclass(repr=False)
class Data2Vec2ConfigMixin(Data2VecObjectiveConfigMixin):
    """Fields shared by the three data2vec 2.0 configs (defaults: the released base models)."""

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    layer_norm_eps: float = 1e-5
    hidden_dropout: float | int = 0.1
    attention_dropout: float | int = 0.1
    activation_dropout: float | int = 0.0
    post_mlp_dropout: float | int = 0.1
    layerdrop: float | int = 0.0
    drop_path_rate: float | int = 0.0
    prenet_depth: int = 0
    prenet_dropout: float | int = 0.0
    prenet_layerdrop: float | int = 0.0
    num_extra_tokens: int = 0
    initializer_range: float = 0.02
    # pretraining
    clone_batch: int = 8
    mask_prob: float = 0.5
    mask_length: int = 5
    inverse_mask: bool = False
    mask_prob_adjust: float | int = 0.0
    mask_noise_std: float = 0.01
    decoder_dim: int = 384
    decoder_kernel: int = 7
    decoder_layers: int = 4
    decoder_groups: int = 16
    decoder_residual: bool = True
    decoder_input_dropout: float | int = 0.1
    decoder_projection_layers: int = 1
    decoder_projection_ratio: float | int = 2.0
    cls_loss: float | int = 0.0
    init_extra_token_zero: bool = True
    ema_encoder_only: bool = False
    ema_local_encoder: bool = False
