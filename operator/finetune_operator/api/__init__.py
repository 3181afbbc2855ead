"""The API the operator serves and speaks: one typed spec module per kind, labels and child names, conditions,
object shapes. Pure: imports nothing else of the operator."""
