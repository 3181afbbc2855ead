"""The test tree's own rules: one name per test file, and a tests/README.md whose map points at files that exist.

Why: same-named files across tiers (five `test_tracking.py`) made "which one covers this?" a search, and a map of
"changed X -> run Y" that names a renamed file sends the reader to nothing. A glob in the map must match a file.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent


def test_no_two_test_files_share_a_name() -> None:
    by_name: dict[str, list[str]] = defaultdict(list)
    for path in TESTS.rglob("test_*.py"):
        by_name[path.name].append(str(path.relative_to(ROOT)))
    shared = {name: sorted(paths) for name, paths in by_name.items() if len(paths) > 1}
    assert not shared, f"test files sharing a name (say the tier or subject in the name): {shared}"


def test_every_tests_path_in_the_readme_exists() -> None:
    readme = (TESTS / "README.md").read_text()
    paths = set(re.findall(r"`(tests/[^`\s]*)`", readme))
    assert len(paths) > 50, "the map names no test files: was the README's format changed?"
    missing = sorted(p for p in paths if not any(ROOT.glob(p.rstrip("/"))))
    assert not missing, f"tests/README.md names paths that do not exist: {missing}"
