"""data2vec and data2vec 2.0 for the Hugging Face stack.

``import data2vec_hf`` registers every config and model with transformers' Auto classes.
"""

from .auto import register
from .data2vec_audio import (
    Data2VecAudioForPreTraining,
    Data2VecAudioPreTrainingBackbone,
    Data2VecAudioPreTrainingConfig,
)
from .data2vec_text import (
    Data2VecTextForPreTraining,
    Data2VecTextPreTrainingBackbone,
    Data2VecTextPreTrainingConfig,
)
from .data2vec_vision import (
    Data2VecVisionForPreTraining,
    Data2VecVisionPreTrainingBackbone,
    Data2VecVisionPreTrainingConfig,
)
from .ema import EMATeacher, annealed_ema_decay
from .objective import Data2VecPreTrainingOutput

__version__ = "0.1.0"

register(Data2VecAudioPreTrainingConfig, Data2VecAudioPreTrainingBackbone, Data2VecAudioForPreTraining)
register(Data2VecVisionPreTrainingConfig, Data2VecVisionPreTrainingBackbone, Data2VecVisionForPreTraining)
register(Data2VecTextPreTrainingConfig, Data2VecTextPreTrainingBackbone, Data2VecTextForPreTraining)

__all__ = [
    "Data2VecAudioForPreTraining",
    "Data2VecAudioPreTrainingBackbone",
    "Data2VecAudioPreTrainingConfig",
    "Data2VecPreTrainingOutput",
    "Data2VecTextForPreTraining",
    "Data2VecTextPreTrainingBackbone",
    "Data2VecTextPreTrainingConfig",
    "Data2VecVisionForPreTraining",
    "Data2VecVisionPreTrainingBackbone",
    "Data2VecVisionPreTrainingConfig",
    "EMATeacher",
    "annealed_ema_decay",
]
