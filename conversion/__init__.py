"""data2vec_hf.conversion: fairseq data2vec checkpoints → Hugging Face folders.

Command line: ``data2vec-convert`` / ``python -m data2vec_hf.conversion`` (see ``cli.py``).
Converters are registered in ``registry.py``; safe reading in ``checkpoint.py``; the strict
mapping machinery in ``mapping.py``.
"""

from .mapping import ConversionError

__all__ = ["ConversionError"]
