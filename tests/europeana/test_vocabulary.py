"""europeana/vocabulary.py: a vocabulary file read, or refused in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from ..support import assert_one_line_error, eic


@pytest.mark.parametrize(
    ("vocab_text", "message"),
    [
        (None, "no such file"),
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"map": 3}', "must map to a concept URI"),
    ],
)
def test_bad_vocabularies(tmp_path: Path, vocab_text: str | None, message: str) -> None:
    vocab = tmp_path / "v.json"
    if vocab_text is not None:
        vocab.write_text(vocab_text)
    result = eic("harvest", "--vocab", vocab, "-o", tmp_path / "h.csv", "--api-url", "http://127.0.0.1:9/x")
    assert_one_line_error(result, message)


def test_a_folder_given_as_the_vocabulary_is_named_in_one_line(tmp_path: Path) -> None:
    """It said `eic: error: 6: Is a directory` (a file descriptor, not the path), and the library raised a raw
    IsADirectoryError."""
    from europeana_imgcls.core.errors import DatasetError
    from europeana_imgcls.europeana.vocabulary import load_vocabulary

    (tmp_path / "vdir").mkdir()
    (tmp_path / "t.csv").write_text("ID,category\n/1/a,map\n")
    result = eic("stats", tmp_path / "t.csv", "--vocab", tmp_path / "vdir")
    assert_one_line_error(result, str(tmp_path / "vdir"))
    with pytest.raises(DatasetError, match="folder"):
        load_vocabulary(tmp_path / "vdir")
