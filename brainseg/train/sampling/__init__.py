"""Training patches: where to cut them (``patches``), how to augment them (``augment``) and the
loader that draws them from the cache (``loader``).
"""
