"""FineTuneJob: the pure plan (`plan.py`, joining the run, training-state, validation, gate and tracking
pieces) and its control loop (`controller.py`)."""
