"""data2vec 2.0: the parts every modality shares, in three modules, and the names imported from here.

The layout follows fairseq's ``examples/data2vec/models/data2vec2.py`` and ``modalities/`` so released
checkpoints convert weight for weight: a modality-specific *local* encoder (CNN, patch embedding or token
embedding), a *contextual* stage (positional encoding, optional extra tokens, a LayerNorm and optional
"prenet" blocks), the shared post-LN transformer blocks, and a light convolutional decoder used only for
pretraining. The student encodes only the unmasked positions; masked ones re-enter at the decoder as
noise, in their original order. transformers has no data2vec 2.0, so these modules are written here:

* ``data2vec2_config.py``: the config fields the three modalities share and their documentation;
* ``data2vec2_encoder.py``: the transformer blocks, the shared encoder (``Data2Vec2Backbone``) and the
  base class of every 2.0 model (initialisation, remote-code saving, the heads' loss);
* ``data2vec2_pretraining.py``: the clone masks, the decoder and the student-teacher step.

The package imports from those modules; this one only re-exports the names that code outside the
package's modelling modules (tests) imports from ``data2vec_hf.data2vec2``.
"""

from __future__ import annotations

from .data2vec2_encoder import MaskInfo, conv_positions, gather_positions
from .data2vec2_pretraining import Decoder

__all__ = ["Decoder", "MaskInfo", "conv_positions", "gather_positions"]
