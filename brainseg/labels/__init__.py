"""What label values mean: nested regions such as BraTS's WT/TC/ET (``regions``) and left/right
label pairs (``laterality``).
"""
