"""Reading and writing: scans with their exact geometry (``images``), atomic writes (``atomic``),
file names and suffixes (``naming``) and pictures (``pictures``). Imports nothing but ``errors``.
"""
