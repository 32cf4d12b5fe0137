"""An NLP domain: topic classification of short generated news sentences
with a bag-of-words model (``nn.EmbeddingBag``).

:func:`make_topic_corpus` writes sentences from templates and a fixed
lexicon (:data:`TOPICS`: sports, markets, weather, technology), with words
shared by two topics ("record", "cloud", "storm"...) and content words
borrowed from other topics, so that some sentences are ambiguous.  Nothing
is downloaded and nothing is bundled: the same seed gives the same corpus on
every machine.  The seeded generator only makes up public synthetic text; it
protects no one, and a federation's DP noise, sampling and masks never come
from it.

The vocabulary (:func:`vocabulary`) is the generator's public lexicon, not
words counted in any client's data (a vocabulary built from client text
would reveal which words, even which rare names, the clients hold).  Texts
become fixed-width rows of token ids (:func:`encode_texts`: each distinct
known word once, unknown words as ``<unk>``, padding 0), stored as float32
like every feature matrix of :class:`~securefl.federation.data.FederatedData`
(token ids are exact in float32 below 2^24); :class:`BagOfWordsClassifier`
turns them back into integer ids.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch import nn

from securefl.errors import ConfigurationError
from securefl.federation.data import FederatedData, dirichlet_split

__all__ = [
    "MAX_TOKENS",
    "PAD",
    "TOPICS",
    "UNKNOWN",
    "BagOfWordsClassifier",
    "encode_texts",
    "load_topics_federated",
    "make_topic_corpus",
    "tokenize",
    "vocabulary",
]

PAD = 0
"""Token id of padding (ignored by :class:`BagOfWordsClassifier`)."""
UNKNOWN = 1
"""Token id of a word outside the vocabulary."""
MAX_TOKENS = 16
"""Distinct words kept per text by default (the generated sentences have at
most 12)."""

TOPICS: Mapping[str, Mapping[str, tuple[str, ...]]] = {
    "sports": {
        "noun": ("team", "coach", "striker", "league", "stadium", "season", "goal", "match",
                 "champion", "referee", "fans", "tournament"),
        "verb": ("won", "lost", "scored", "defended", "drew", "celebrated", "trained",
                 "qualified"),
        "adjective": ("unbeaten", "injured", "home", "away", "decisive", "young"),
    },
    "markets": {
        "noun": ("shares", "investors", "bonds", "index", "earnings", "dividend", "bank",
                 "inflation", "currency", "traders", "profits", "stocks"),
        "verb": ("rallied", "slumped", "rose", "fell", "traded", "hedged", "priced",
                 "rebounded"),
        "adjective": ("bullish", "bearish", "quarterly", "volatile", "fiscal", "weak"),
    },
    "weather": {
        "noun": ("rain", "forecast", "temperatures", "wind", "snow", "showers", "sunshine",
                 "fog", "heatwave", "frost", "humidity", "thunder"),
        "verb": ("poured", "cooled", "warmed", "swept", "cleared", "froze", "drifted",
                 "flooded"),
        "adjective": ("sunny", "chilly", "humid", "windy", "mild", "overcast"),
    },
    "technology": {
        "noun": ("software", "chip", "startup", "smartphone", "algorithm", "network",
                 "developers", "robot", "processor", "update", "battery", "app"),
        "verb": ("launched", "shipped", "patched", "upgraded", "crashed", "encrypted",
                 "released", "compiled"),
        "adjective": ("wireless", "open", "digital", "faster", "mobile", "quantum"),
    },
}
"""Topic -> part of speech -> its words (the order of topics is the label order)."""

_SHARED = {
    ("sports", "technology"): ("record", "speed"),
    ("markets", "weather"): ("storm", "outlook"),
    ("weather", "technology"): ("cloud", "stream"),
    ("sports", "markets"): ("rally", "transfer"),
}
"""Words two topics share: ambiguous on their own."""

_FILLER = ("the", "a", "on", "in", "after", "as", "today", "this", "week", "again", "and",
           "with", "said", "report", "local", "new")

_TEMPLATES = (
    "the {adjective} {noun} {verb} {filler} {filler}",
    "{noun} {verb} as {adjective} {noun} {verb} {filler}",
    "a {adjective} {noun} {verb} the {noun} {filler}",
    "{filler} the {noun} and {noun} {verb} {shared}",
    "report said {adjective} {noun} {verb} after {shared} {noun}",
    "{shared} {noun} {verb} {filler} {adjective} {noun} {filler}",
)

_WORD = re.compile(r"[a-z]+")


def tokenize(text: str) -> list[str]:
    """Lower-case words (runs of ASCII letters); everything else separates."""
    return _WORD.findall(text.lower())


def vocabulary() -> dict[str, int]:
    """The public vocabulary: every word the generator can write, in a fixed
    order, mapped to ids from 2 (:data:`PAD` is 0, :data:`UNKNOWN` 1)."""
    words: list[str] = list(_FILLER)
    for lexicon in TOPICS.values():
        for part in ("noun", "verb", "adjective"):
            words.extend(lexicon[part])
    for shared in _SHARED.values():
        words.extend(shared)
    ordered = list(dict.fromkeys(words))
    return {word: index for index, word in enumerate(ordered, start=2)}


def make_topic_corpus(num_texts: int = 4000, *, seed: int = 0,
                      borrow: float = 0.3) -> tuple[list[str], np.ndarray]:
    """Generated one-sentence news items and their topics.

    Each text fills a template; its content words come from its topic, each
    with probability ``borrow`` from another topic instead (so that some
    texts are ambiguous), and its ``{shared}`` slot from a word the topic
    shares with another.

    Returns:
        ``(texts, labels)``: the sentences, and int64 labels indexing
        :data:`TOPICS` in order (balanced up to sampling).

    Raises:
        ConfigurationError: fewer than 10 texts, or ``borrow`` outside [0, 1].
    """
    if num_texts < 10:
        raise ConfigurationError(f"need at least 10 texts, got {num_texts}")
    if not 0.0 <= borrow <= 1.0:
        raise ConfigurationError(f"borrow must be in [0, 1], got {borrow}")
    rng = np.random.default_rng([seed, 31])
    names = list(TOPICS)
    labels = rng.integers(len(names), size=num_texts).astype(np.int64)
    texts = []
    for label in labels:
        topic = names[int(label)]
        shared = [w for pair, words in _SHARED.items() if topic in pair for w in words]
        template = _TEMPLATES[int(rng.integers(len(_TEMPLATES)))]
        slots = re.findall(r"\{(\w+)\}", template)
        words = []
        for slot in slots:
            if slot == "filler":
                pool: Sequence[str] = _FILLER
            elif slot == "shared":
                pool = shared
            else:
                source = topic
                if rng.random() < borrow:
                    others = [n for n in names if n != topic]
                    source = others[int(rng.integers(len(others)))]
                pool = TOPICS[source][slot]
            words.append(pool[int(rng.integers(len(pool)))])
        texts.append(re.sub(r"\{\w+\}", "{}", template).format(*words))
    return texts, labels


def encode_texts(texts: Sequence[str], vocab: Mapping[str, int] | None = None, *,
                 max_tokens: int = MAX_TOKENS) -> np.ndarray:
    """Rows of token ids: each text's distinct words in order of first
    appearance (a bag of words counts a word once), unknown words as
    :data:`UNKNOWN`, cut at ``max_tokens`` and padded with :data:`PAD`.

    Returns:
        float32 ``(len(texts), max_tokens)``.

    Raises:
        ConfigurationError: ``max_tokens`` < 1, or a vocabulary id that is
            not an integer in ``[2, 2^24)``.
    """
    if max_tokens < 1:
        raise ConfigurationError(f"max_tokens must be >= 1, got {max_tokens}")
    vocab = vocabulary() if vocab is None else vocab
    if any(not isinstance(i, int) or not 2 <= i < 2 ** 24 for i in vocab.values()):
        raise ConfigurationError("vocabulary ids must be integers in [2, 2^24)")
    rows = np.full((len(texts), max_tokens), PAD, dtype=np.float32)
    for r, text in enumerate(texts):
        ids = list(dict.fromkeys(vocab.get(word, UNKNOWN) for word in tokenize(text)))
        rows[r, :min(len(ids), max_tokens)] = ids[:max_tokens]
    return rows


def load_topics_federated(num_clients: int = 5, *, num_texts: int = 4000, alpha: float = 1.0,
                          seed: int = 0, test_fraction: float = 0.2,
                          borrow: float = 0.3) -> FederatedData:
    """:func:`make_topic_corpus` encoded with the public :func:`vocabulary`,
    a stratified held-out test set, and the rest split non-IID across
    ``num_clients`` (:func:`~securefl.federation.data.dirichlet_split`).
    ``num_features`` is :data:`MAX_TOKENS` (the row width), not the
    vocabulary size; build the model with ``len(vocabulary()) + 2`` ids.

    Raises:
        ConfigurationError: see :func:`make_topic_corpus` and
            :func:`~securefl.federation.data.dirichlet_split`.
    """
    if not 0 < test_fraction < 1:
        raise ConfigurationError(f"test fraction must be in (0, 1), got {test_fraction}")
    texts, labels = make_topic_corpus(num_texts, seed=seed, borrow=borrow)
    features = encode_texts(texts)
    x_train, x_test, y_train, y_test = train_test_split(
        features, labels, test_size=test_fraction, random_state=seed, stratify=labels)
    shards = dirichlet_split(y_train, num_clients, alpha, np.random.default_rng([seed, 7]))
    return FederatedData(
        clients=[(x_train[s], y_train[s]) for s in shards],
        test=(x_test, y_test), num_features=MAX_TOKENS, num_classes=len(TOPICS),
        name="topics",
    )


class BagOfWordsClassifier(nn.Module):
    """Mean of the word embeddings of a text (``nn.EmbeddingBag``, which
    Opacus trains with per-sample gradients), then a linear layer to the
    classes.

    Input: rows of token ids as :func:`encode_texts` writes them (any
    numeric dtype; :data:`PAD` entries are skipped; a row of padding only
    gets the zero embedding).  Output: one logit per class.

    Args:
        num_embeddings: vocabulary size including :data:`PAD` and
            :data:`UNKNOWN` (``len(vocabulary()) + 2``).
        num_classes: output classes.
        embedding_dim: size of a word embedding.
        seed: seeds the initial weights (a torch generator of its own).
    """

    def __init__(self, num_embeddings: int, num_classes: int, embedding_dim: int = 16, *,
                 seed: int = 0) -> None:
        super().__init__()
        if num_embeddings < 2 or num_classes < 2 or embedding_dim < 1:
            raise ConfigurationError("need num_embeddings >= 2, num_classes >= 2 and"
                                     " embedding_dim >= 1")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.embedding = nn.EmbeddingBag(num_embeddings, embedding_dim, mode="mean")
            self.classifier = nn.Linear(embedding_dim, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits ``(batch, num_classes)`` of ``(batch, width)`` token ids."""
        ids = tokens.long()
        keep = ids != PAD
        lengths = keep.sum(dim=1)
        offsets = torch.cumsum(lengths, dim=0) - lengths
        # EmbeddingBag's 1-D form (ids, offsets) is the one Opacus's per-sample
        # gradient sampler reads
        bags = self.embedding(ids[keep], offsets)
        return self.classifier(bags)  # type: ignore[no-any-return]
