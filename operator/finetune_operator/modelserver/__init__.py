"""ModelServer (shared serving): the pure plan (`plan.py`: admission, replicas, status) and its control loop
(`controller.py`)."""
