"""Atomic writes leave either the old file or the new one, never a partial file."""

from __future__ import annotations

import os
import stat

import pytest

from zhlora.errors import DataError
from zhlora.io_utils import atomic_write_json, atomic_write_text, read_jsonl, sha256_file


def test_atomic_write_replaces_and_keeps_normal_permissions(tmp_path):
    target = tmp_path / "sub" / "out.json"
    atomic_write_json(target, {"b": 1, "a": "中文"})
    assert target.read_text(encoding="utf-8") == '{\n  "a": "中文",\n  "b": 1\n}\n'
    mode = stat.S_IMODE(target.stat().st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask
    assert [p.name for p in target.parent.iterdir()] == ["out.json"]


def test_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "out.txt"
    atomic_write_text(target, "old")

    class Boom(Exception):
        pass

    from zhlora.io_utils import atomic_path

    with pytest.raises(Boom):
        with atomic_path(target) as tmp:
            tmp.write_text("half", encoding="utf-8")
            raise Boom
    assert target.read_text(encoding="utf-8") == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_read_jsonl_names_file_and_line(tmp_path):
    bad = tmp_path / "x.jsonl"
    bad.write_text('{"a": 1}\n{"a": \n', encoding="utf-8")
    with pytest.raises(DataError, match=r"x\.jsonl, line 2"):
        read_jsonl(bad)


def test_sha256_file(tmp_path):
    f = tmp_path / "f"
    f.write_bytes(b"abc")
    assert sha256_file(f) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_replace_folder_swaps_whole_folders(tmp_path):
    from zhlora.io_utils import replace_folder

    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    staging = tmp_path / ".out.partial"
    staging.mkdir()
    (staging / "new.txt").write_text("new")
    assert replace_folder(staging, target) == target
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging or old copy left behind
    fresh = tmp_path / ".fresh.partial"
    fresh.mkdir()
    replace_folder(fresh, tmp_path / "fresh")
    assert (tmp_path / "fresh").is_dir() and not fresh.exists()


def test_read_jsonl_names_a_non_utf8_line(tmp_path):
    from zhlora.errors import DataError
    from zhlora.io_utils import read_jsonl

    path = tmp_path / "train.jsonl"
    path.write_bytes('{"a": "中"}\n'.encode() + b'{"a": "\xe4\xb8"}\n')
    with pytest.raises(DataError, match=r"train.jsonl, line 2: not UTF-8 text .* Delete it and rerun"):
        read_jsonl(path)
