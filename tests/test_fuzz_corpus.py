"""Replay the fuzzer's corpus (tests/fuzz/corpus) as ordinary tests."""

import pathlib

import pytest

atheris = pytest.importorskip("atheris")

CORPUS = sorted((pathlib.Path(__file__).parent / "fuzz" / "corpus").glob("*"))


@pytest.fixture(scope="module")
def one_input():
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).parent / "fuzz"))
    from fuzz_route import one_input

    return one_input


@pytest.mark.parametrize("path", CORPUS, ids=[p.name[:12] for p in CORPUS])
def test_corpus_input(kernel_path, one_input, path):
    one_input(path.read_bytes())
