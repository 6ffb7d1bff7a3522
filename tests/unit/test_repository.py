"""The repository stands on its own: nothing in it refers to a path beside the clone."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# a folder next to the checkout (``../something``) or the folder it sits in
OUTSIDE = re.compile(r"\.\./" + "shared|" + r"/work/" + "shared")


def tracked_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True,
                         check=True).stdout
    return [REPO / name for name in out.decode().split("\0") if name]


def test_no_file_refers_to_a_folder_beside_the_clone() -> None:
    files = tracked_files()
    assert len(files) > 100, "git ls-files found too few files to be this repository"
    offending = []
    for path in files:
        try:
            text = path.read_text("utf-8")
        except (UnicodeDecodeError, FileNotFoundError):
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if OUTSIDE.search(line):
                offending.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not offending, "files that refer outside the clone:\n" + "\n".join(offending)
