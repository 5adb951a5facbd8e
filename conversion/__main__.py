"""``python -m data2vec_hf.conversion --checkpoint PATH --output_dir DIR [options]``."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
