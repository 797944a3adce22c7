"""Case ids name output files, so ``safe_case_id`` refuses anything that is not a plain file name."""

from __future__ import annotations

import pytest

from brainseg.data.cases import safe_case_id
from tests.data.conftest import error_of


@pytest.mark.parametrize(
    "bad", ["", ".", "..", "a/b", "../x", "a\\b", "a\x00b", ".hidden", "/etc/passwd", "C:\\x", "C:x", "a\nb"]
)
def test_safe_case_id_rejects(bad: str) -> None:
    msg = error_of(safe_case_id, bad, "dataset.json training[3]")
    assert msg.startswith("dataset.json training[3]: case id")


@pytest.mark.parametrize("good", ["a", "sub-01", "BraTS2021_00000", "case.v2", "héllo", "x..y"])
def test_safe_case_id_accepts(good: str) -> None:
    assert safe_case_id(good, "src") == good
