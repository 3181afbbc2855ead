"""FineTuneSweep: its trials (`trials.py`), the pure plan (`plan.py`) and its control loop (`controller.py`)."""
