"""Judging a model: loss and classifier metrics on a split (`metrics`), answers scored against references
(`generation`), and the run's HTML report (`report`).

Why below training: the training loop calls these (validation while training, the test split at the end), and
they need nothing of it: a model, a tokenized split and the data's format.
"""
