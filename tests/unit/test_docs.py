"""Docs that must stay in step with the code."""

import re
from pathlib import Path

from consumer_core.outcome import ErrorKind

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_errors_page_lists_exactly_the_error_kinds():
    table = (DOCS / "errors.md").read_text()
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", table, flags=re.MULTILINE))
    assert documented == {kind.value for kind in ErrorKind}
