"""data2vec and data2vec 2.0 for the Hugging Face stack.

``import data2vec_hf`` registers every config and model with transformers' Auto classes.
"""

import transformers

from .auto import register
from .data2vec2_audio import (
    Data2Vec2AudioConfig,
    Data2Vec2AudioForCTC,
    Data2Vec2AudioForPreTraining,
    Data2Vec2AudioForSequenceClassification,
    Data2Vec2AudioModel,
)
from .data2vec2_text import (
    Data2Vec2TextConfig,
    Data2Vec2TextForPreTraining,
    Data2Vec2TextForSequenceClassification,
    Data2Vec2TextModel,
)
from .data2vec2_vision import (
    Data2Vec2VisionConfig,
    Data2Vec2VisionForImageClassification,
    Data2Vec2VisionForPreTraining,
    Data2Vec2VisionModel,
)
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

#: the Auto classes of each data2vec 2.0 config (registration here, ``auto_map`` of remote-code checkpoints)
DATA2VEC2_AUTO_CLASSES = {
    Data2Vec2AudioConfig: {
        "AutoModel": Data2Vec2AudioModel,
        "AutoModelForPreTraining": Data2Vec2AudioForPreTraining,
        "AutoModelForCTC": Data2Vec2AudioForCTC,
        "AutoModelForAudioClassification": Data2Vec2AudioForSequenceClassification,
    },
    Data2Vec2VisionConfig: {
        "AutoModel": Data2Vec2VisionModel,
        "AutoModelForPreTraining": Data2Vec2VisionForPreTraining,
        "AutoModelForImageClassification": Data2Vec2VisionForImageClassification,
    },
    Data2Vec2TextConfig: {
        "AutoModel": Data2Vec2TextModel,
        "AutoModelForPreTraining": Data2Vec2TextForPreTraining,
        "AutoModelForSequenceClassification": Data2Vec2TextForSequenceClassification,
    },
}
for _config_cls, _models in DATA2VEC2_AUTO_CLASSES.items():
    register(_config_cls, task_models=[(getattr(transformers, name), cls) for name, cls in _models.items()])
del _config_cls, _models

__all__ = [
    "Data2Vec2AudioConfig",
    "Data2Vec2AudioForCTC",
    "Data2Vec2AudioForPreTraining",
    "Data2Vec2AudioForSequenceClassification",
    "Data2Vec2AudioModel",
    "Data2Vec2TextConfig",
    "Data2Vec2TextForPreTraining",
    "Data2Vec2TextForSequenceClassification",
    "Data2Vec2TextModel",
    "Data2Vec2VisionConfig",
    "Data2Vec2VisionForImageClassification",
    "Data2Vec2VisionForPreTraining",
    "Data2Vec2VisionModel",
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
    "DATA2VEC2_AUTO_CLASSES",
    "EMATeacher",
    "annealed_ema_decay",
]
