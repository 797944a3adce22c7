"""BraTS sequence names and their synonyms."""

from __future__ import annotations

from brainseg.data.brats import sequence_of


def test_sequence_names_and_synonyms():
    groups = {
        "t1c": ["t1gd", "T1ce", "t1c", "T1-Gd", "t1post", "T1_CE", "t1+c"],
        "flair": ["flair", "FLAIR", "t2f", "T2-FLAIR", "t2_flair"],
        "t1": ["t1w", "T1n", "t1", "MPRAGE", "T1W"],
        "t2": ["t2w", "T2", "T2W"],
    }
    for seq, names in groups.items():
        assert {sequence_of(n) for n in names} == {seq}, seq
    assert sequence_of("DWI") is None and sequence_of("CT") is None and sequence_of("t1t2") is None
