"""Text loaders and the embedded Wikipedia corpus (real human-written text, offline)."""

from __future__ import annotations

import json

import pytest

from pentachora.data.text import (
    WIKI_LICENCE,
    TextCorpus,
    clean_wiki_markup,
    load_jsonl,
    load_text_file,
    minilm_token_counter,
    parse_text_spec,
    split_heldout_every,
    wikipedia_corpus,
)


@pytest.fixture(scope="module")
def wiki() -> TextCorpus:
    return wikipedia_corpus()


def test_wikipedia_corpus_is_real_long_text_with_a_fixed_article_split(wiki):
    assert wiki.n_documents >= 2000
    assert 150 <= len(wiki.heldout) <= 400
    count = minilm_token_counter()
    lengths = count(wiki.train[::7] + wiki.heldout)
    assert min(lengths) >= 100 and max(lengths) <= 510
    # held-out documents come from whole articles that never appear in training
    assert not set(wiki.heldout_titles) & set(wiki.train_titles)
    assert len(set(wiki.train_titles)) > 50
    for doc in wiki.train[:200] + wiki.heldout:
        assert "[[" not in doc and "{{" not in doc and "'''" not in doc and "</" not in doc
    assert "CC BY-SA" in wiki.licence and wiki.licence == WIKI_LICENCE
    # deterministic (same documents, same split, same fingerprint)
    again = wikipedia_corpus()
    assert again.fingerprint() == wiki.fingerprint()
    assert any("Einstein" in t for t in wiki.heldout_titles + wiki.train_titles)


def test_clean_wiki_markup_keeps_prose_only():
    markup = (
        "{{Infobox|name=x}}\n'''Albedo''' is the [[reflection|diffuse reflectivity]] of a surface, measured on a "
        "scale from zero to one for perfect reflection.<ref>Coakley</ref>\n== History ==\n* a list item that is not "
        "prose at all\n{| class=wikitable\n| cell || 0.04\n|}\nShort line.\n"
    )
    paras = clean_wiki_markup(markup)
    assert paras == [
        "Albedo is the diffuse reflectivity of a surface, measured on a scale from zero to one for perfect reflection."
    ]


def test_plain_text_and_jsonl_loaders(tmp_path):
    p = tmp_path / "docs.txt"
    p.write_text("first document\nstill first\n\n\nsecond one\n\n   \n")
    assert load_text_file(p) == ["first document\nstill first", "second one"]
    assert load_text_file(p, separator="line") == ["first document", "still first", "second one"]
    j = tmp_path / "docs.jsonl"
    j.write_text(json.dumps({"text": "a"}) + "\n\n" + json.dumps({"text": "b", "body": "c"}) + "\n")
    assert load_jsonl(j) == ["a", "b"]
    with pytest.raises(ValueError, match="no field"):
        load_jsonl(j, field="body")
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json}\n")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_jsonl(bad)
    with pytest.raises(FileNotFoundError):
        load_text_file(tmp_path / "missing.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match="no text"):
        load_text_file(empty)


def test_text_specs_and_heldout_split(tmp_path):
    p = tmp_path / "docs.txt"
    p.write_text("\n\n".join(f"document number {i}" for i in range(25)))
    corpus = parse_text_spec(f"text:{p}")
    assert len(corpus.train) == 23 and len(corpus.heldout) == 2
    assert corpus.heldout == ["document number 9", "document number 19"]
    j = tmp_path / "d.jsonl"
    j.write_text("\n".join(json.dumps({"body": f"doc {i}"}) for i in range(12)))
    assert parse_text_spec(f"jsonl:{j}:body").heldout == ["doc 9"]
    train, held = split_heldout_every(["a", "b"], every=10)
    assert held == ["b"] and train == ["a"]
    with pytest.raises(ValueError, match="invalid text spec"):
        parse_text_spec("csv:whatever")


def test_hf_loader_reads_a_local_json_dataset(tmp_path):
    pytest.importorskip("datasets")
    from pentachora.data.text import load_hf_texts

    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps({"body": f"row {i}"}) for i in range(5)))
    assert load_hf_texts("json", column="body", max_docs=3, data_files=str(path)) == [
        "row 0",
        "row 1",
        "row 2",
    ]
    with pytest.raises(KeyError):
        load_hf_texts("json", column="text", data_files=str(path))
