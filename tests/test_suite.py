"""The test suite's own setup, as the README describes it: the tokenizer files' directory and skip reasons."""

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.test_tokenizer import ENV_VAR, GPT2_FILES, find_gpt2_dir

REPO = Path(__file__).resolve().parent.parent


def test_a_relative_tokenizer_dir_is_resolved_where_it_is_read(tmp_path, monkeypatch):
    """The README's `MINIGPT_GPT2_TOKENIZER_DIR=../shared/data` is relative to where pytest runs."""
    files = tmp_path / "shared" / "data"
    files.mkdir(parents=True)
    for name in GPT2_FILES:
        (files / name).write_text(name)
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    monkeypatch.chdir(checkout)
    monkeypatch.setenv(ENV_VAR, "../shared/data")
    directory, reason = find_gpt2_dir()
    assert reason == "" and directory == files.resolve() and directory.is_absolute()
    # the local_hub fixture symlinks to it from elsewhere: the link must still reach the file
    link = tmp_path / "elsewhere" / "vocab.json"
    link.parent.mkdir()
    link.symlink_to(directory / "encoder.json")
    monkeypatch.chdir(tmp_path)
    assert link.read_text() == "encoder.json"


def test_a_skip_names_every_missing_file(tmp_path, monkeypatch):
    (tmp_path / "encoder.json").write_text("{}")
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    directory, reason = find_gpt2_dir()
    assert directory is None
    assert all(name in reason for name in GPT2_FILES if name != "encoder.json") and "encoder.json" not in reason


def test_the_readme_lists_the_files_the_tests_need():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    start = readme.index("\n## Tests\n")
    tests_section = readme[start:readme.index("\n## ", start + 1)]
    assert ENV_VAR in tests_section
    listed = set(re.findall(r"`([\w.]+\.(?:json|bpe|tiktoken|txt))`", tests_section))
    assert listed == set(GPT2_FILES)


def test_the_default_summary_shows_skip_reasons(tmp_path):
    """pyproject's addopts carry -rs, so a plain `python -m pytest` prints why each test skipped."""
    (tmp_path / "test_skips.py").write_text("import pytest\n\ndef test_x():\n    pytest.skip('the reason xyzzy')\n")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-c", str(REPO / "pyproject.toml"), "--rootdir", str(tmp_path),
         "-p", "no:cacheprovider", str(tmp_path / "test_skips.py")],
        capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}, timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"SKIPPED \[1\] .*the reason xyzzy", result.stdout), result.stdout
