"""What a reader and a clone rely on: lines that fit a screen, file names that fit every disk."""
import subprocess
from pathlib import Path

from tests.helpers import SCRIPTS

ROOT = Path(__file__).resolve().parent.parent


def test_no_line_over_100_characters_in_the_scripts_and_common():
    files = [ROOT / f"{s}.py" for s in SCRIPTS] + sorted((ROOT / "common").glob("*.py"))
    long = [f"{f.name}:{n}" for f in files for n, line in enumerate(f.read_text().splitlines(), 1)
            if len(line) > 100]
    assert len(files) == len(SCRIPTS) + len(list((ROOT / "common").glob("*.py"))) >= 11
    assert not long, f"lines over 100 characters: {long}"


def test_no_two_tracked_paths_differ_only_in_case():
    # a clone on macOS or Windows keeps one of the two (RESULTS.md and results.md once collided)
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True)
    paths = listed.stdout.splitlines()
    assert "README.md" in paths
    seen = {}
    clashes = [(seen[p.lower()], p) for p in paths if seen.setdefault(p.lower(), p) != p]
    assert not clashes, clashes
