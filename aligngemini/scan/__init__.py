"""``aligngemini scan``: many images into a crash-proof store, each distinct content scored once, on one
machine (``local.py``) or a Ray cluster (``ray_engine.py``); ``report.py`` reads the results back."""
