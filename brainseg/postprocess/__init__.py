"""From network output to a clean label map, and its volumes.

Plain functions on numpy arrays (file voxel order, spacing in mm per array axis):
:mod:`.decision` (probabilities to labels, the input-mask and enhancing-tumour rules),
:mod:`.components` (per-label connected-component clean-up, the main foreground component)
and :mod:`.volumes` (structure volumes in mm³, ``volumes.csv``).
"""
