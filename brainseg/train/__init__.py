"""Training: loss, optimiser, schedule and split (``recipe``), the loop (``trainer``), the run
folder's state (``state``), validation (``validation``), DDP plumbing (``distributed``) and
curves (``monitor``); patches come from ``train.sampling``.
"""
