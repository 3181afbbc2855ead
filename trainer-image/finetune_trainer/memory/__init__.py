"""The memory plan: will a training run fit its accelerator, and what batch does it take there?

Why its own layer: the plan is pure (config.json and the trainer config in, numbers out; `shapes`, `estimate`,
`plan`, against the accelerator table `gpus`), so `validate` can refuse a run that cannot fit before a GPU is
requested (`check`), and `train` decides `batchSize: auto` with the same code.
"""
