"""Dataset readers: formats, column names from the header, and helpful errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.training.conftest import write_idx
from training.data import load_fashion_mnist, read_glue_tsv, read_idx


def test_read_idx_round_trips(tmp_path: Path) -> None:
    array = np.arange(2 * 3 * 4).reshape(2, 3, 4) % 256
    write_idx(tmp_path / "x.gz", array)
    np.testing.assert_array_equal(read_idx(tmp_path / "x.gz"), array)


def test_read_idx_rejects_truncated_files(tmp_path: Path) -> None:
    write_idx(tmp_path / "x.gz", np.zeros((2, 2)))
    import gzip

    data = gzip.open(tmp_path / "x.gz").read()[:-1]
    (tmp_path / "bad").write_bytes(data)
    with pytest.raises(ValueError, match="header says"):
        read_idx(tmp_path / "bad")


def test_glue_tsv_reads_columns_by_header(tmp_path: Path) -> None:
    (tmp_path / "a.tsv").write_text("label\tsentence\n1\tgood film\n0\tbad\n")
    (tmp_path / "b.tsv").write_text("content\tlabel\ngood film\t1\n")
    assert read_glue_tsv(tmp_path / "a.tsv").texts == ["good film", "bad"]
    split = read_glue_tsv(tmp_path / "b.tsv")
    assert split.texts == ["good film"]
    assert split.labels.tolist() == [1]
    (tmp_path / "c.tsv").write_text("x\ty\n1\t2\n")
    with pytest.raises(ValueError, match="needs a 'label'"):
        read_glue_tsv(tmp_path / "c.tsv")


def test_missing_data_says_where_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path)
    with pytest.raises(FileNotFoundError, match="GLUE"):
        read_glue_tsv(tmp_path / "train.tsv")


def test_an_unlabelled_test_split_says_where_labelled_test_data_comes_from(tmp_path: Path) -> None:
    (tmp_path / "test.tsv").write_text("index\tsentence\n0\ta film\n")  # GLUE's own test.tsv
    with pytest.raises(ValueError, match="GLUE's test split is unlabelled.*Stanford Sentiment Treebank"):
        read_glue_tsv(tmp_path / "test.tsv")
    with pytest.raises(FileNotFoundError, match="SetFit/sst2"):
        read_glue_tsv(tmp_path / "missing" / "test.tsv")
