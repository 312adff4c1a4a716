"""Folder trees and the same file given twice.

`-r -o` mirrors the input tree under the output folder; a file met twice
(named twice, through a hard or symbolic link, or inside a folder also given)
is processed once and `--json` says which input it duplicated.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from bgrm import batch

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def _tree(root: Path) -> Path:
    (root / "a").mkdir(parents=True)
    (root / "b" / "deep").mkdir(parents=True)
    shutil.copy(FIXTURES / "chelsea.png", root / "a" / "x.png")
    shutil.copy(FIXTURES / "rocket.jpg", root / "b" / "x.jpg")
    shutil.copy(FIXTURES / "coffee.png", root / "b" / "deep" / "y.png")
    shutil.copy(FIXTURES / "astronaut.png", root / "top.png")
    return root


def test_names_mirror_the_tree_of_each_folder_given(tmp_path):
    shots = _tree(tmp_path / "shots")
    files = [e for e in batch.expand([str(shots), str(FIXTURES / "coffee.png")], "image", True)
             if isinstance(e, Path)]
    out = tmp_path / "cut"
    names = batch.name_outputs(files, out, "png", [str(shots), str(FIXTURES / "coffee.png")])
    assert sorted(str(p.relative_to(out)) for p in names) == [
        "a/x_processed.png", "b/deep/y_processed.png", "b/x_processed.png",
        "coffee_processed.png", "top_processed.png"]
    # Without -o, beside each input, as before; and without roots, flat as before.
    assert all(d.parent == s.parent for s, d in
               zip(files, batch.name_outputs(files, None, "png", [str(shots)]), strict=True))
    flat = batch.name_outputs(files, out, "png")
    assert {p.parent for p in flat} == {out}
    assert len({p.name for p in flat}) == len(flat)  # x_processed, x_processed_2


def test_two_folders_given_with_the_same_tree_still_get_distinct_names(tmp_path):
    one, two = _tree(tmp_path / "one"), _tree(tmp_path / "two")
    files = [e for e in batch.expand([str(one), str(two)], "image", True)
             if isinstance(e, Path)]
    names = batch.name_outputs(files, tmp_path / "cut", "png", [str(one), str(two)])
    assert len(set(names)) == len(names) == 8
    assert tmp_path / "cut" / "a" / "x_processed_2.png" in names


def test_the_same_file_is_listed_once(tmp_path):
    shots = _tree(tmp_path / "shots")
    x = shots / "a" / "x.png"
    os.link(x, tmp_path / "hard.png")
    (tmp_path / "soft.png").symlink_to(x)
    entries = batch.expand([str(x), str(shots), f"{shots}/./a/x.png", str(tmp_path / "hard.png"),
                            str(tmp_path / "soft.png")], "image", True)
    files = [e for e in entries if isinstance(e, Path)]
    dupes = [e for e in entries if not isinstance(e, Path)]
    assert files.count(x) == 1 and len(files) == 4  # x, then the folder's other three
    assert len(dupes) == 4 and all(d.ok and d.same_as == str(x) for d in dupes)


def test_cli_mirrors_the_tree_and_runs_a_file_given_twice_once(cli, tmp_path):
    shots = _tree(tmp_path / "shots")
    out = tmp_path / "cut"
    proc = cli("image", shots, shots / "a" / "x.png", "-r", "-o", out, "--json")
    assert proc.returncode == 0, proc.stderr.decode()
    made = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert made == ["a/x_processed.png", "b/deep/y_processed.png", "b/x_processed.png",
                    "top_processed.png"]
    report = json.loads(proc.stdout)
    assert len(report["files"]) == 4 and report["failed"] == []
    assert report["duplicates"] == [{
        "filename": "x.png", "input": str(shots / "a" / "x.png"),
        "same_as": str(shots / "a" / "x.png"), "url": str(out / "a" / "x_processed.png")}]
    assert b"the same file as" in proc.stderr
