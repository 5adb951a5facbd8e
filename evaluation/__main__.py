"""``python -m data2vec_hf.evaluation MODEL ...``: the ``data2vec-probe`` command."""

import sys

from .cli import main

sys.exit(main())
