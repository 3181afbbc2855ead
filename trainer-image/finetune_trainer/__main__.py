"""`python -m finetune_trainer train|serve ...` (see `finetune_trainer.cli`)."""

import sys

from finetune_trainer.cli import main

if __name__ == "__main__":
    sys.exit(main())
