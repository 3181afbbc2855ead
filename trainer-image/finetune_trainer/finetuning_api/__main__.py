"""`python -m finetune_trainer.finetuning_api`: serve OpenAI's fine-tuning API with uvicorn (settings: config.py)."""

from __future__ import annotations

import logging
import sys


def main() -> int:
    import uvicorn

    from finetune_trainer.core.errors import ConfigInvalid
    from finetune_trainer.finetuning_api.app import build_app
    from finetune_trainer.finetuning_api.config import ApiConfig

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        config = ApiConfig.from_env()
    except ConfigInvalid as error:
        print(f"finetuning-api: {error}", file=sys.stderr)
        return 2
    uvicorn.run(build_app(config), host=config.host, port=config.port, proxy_headers=True, log_level="info")
    return 0


if __name__ == "__main__":
    sys.exit(main())
