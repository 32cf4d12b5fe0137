"""The finance and NLP domains (:mod:`securefl.federation.finance`,
:mod:`securefl.federation.text`): deterministic generated data with the
promised shape (a rare default class; topics over a public vocabulary), an
AUC that is the Mann-Whitney statistic, and a bag-of-words model whose
per-sample gradients under Opacus are each example's own gradient (what
DP-SGD clips must be the example's whole contribution)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch", reason="the train extra brings torch")
pytest.importorskip("sklearn", reason="the train extra brings scikit-learn")

from sklearn.metrics import roc_auc_score  # noqa: E402

from securefl.errors import ConfigurationError  # noqa: E402
from securefl.federation.finance import (  # noqa: E402
    CREDIT_FEATURES,
    default_scores,
    load_credit_federated,
    make_credit_data,
    roc_auc,
)
from securefl.federation.model import make_mlp  # noqa: E402
from securefl.federation.text import (  # noqa: E402
    PAD,
    TOPICS,
    UNKNOWN,
    BagOfWordsClassifier,
    encode_texts,
    load_topics_federated,
    make_topic_corpus,
    tokenize,
    vocabulary,
)

# -- finance -----------------------------------------------------------------------------


def test_credit_data_is_deterministic_imbalanced_and_scaled() -> None:
    x, y = make_credit_data(3000, seed=3)
    again_x, again_y = make_credit_data(3000, seed=3)
    assert np.array_equal(x, again_x) and np.array_equal(y, again_y)
    other_x, _ = make_credit_data(3000, seed=4)
    assert not np.array_equal(x, other_x)
    assert x.shape == (3000, len(CREDIT_FEATURES)) and x.dtype == np.float32
    assert y.dtype == np.int64 and set(np.unique(y)) == {0, 1}
    assert np.isfinite(x).all()
    # the public centring keeps every column near mean 0, spread about 1
    assert np.all(np.abs(x.mean(axis=0)) < 0.3) and np.all(x.std(axis=0) < 1.6)


@pytest.mark.parametrize("seed", range(5))
def test_defaults_are_a_rare_class(seed: int) -> None:
    _, y = make_credit_data(6000, seed=seed)
    assert 0.05 <= y.mean() <= 0.10


def test_credit_split_keeps_every_row_and_the_default_rate_in_the_test_set() -> None:
    data = load_credit_federated(4, num_applicants=2000, seed=1)
    x, y = make_credit_data(2000, seed=1)
    train_rows = sum(data.client_sizes)
    assert train_rows + len(data.test[1]) == 2000
    assert data.num_features == x.shape[1] and data.num_classes == 2
    assert abs(data.test[1].mean() - y.mean()) < 0.01  # stratified
    assert len(data.clients) == 4 and min(data.client_sizes) >= 10


def test_credit_refusals_are_typed() -> None:
    with pytest.raises(ConfigurationError):
        make_credit_data(50)
    with pytest.raises(ConfigurationError):
        load_credit_federated(3, test_fraction=1.0)


scores = st.lists(st.integers(-5, 5).map(float), min_size=2, max_size=60)  # many ties


@settings(max_examples=60)
@given(scores, st.data())
def test_auc_is_the_mann_whitney_statistic(values: list[float], data: st.DataObject) -> None:
    labels = data.draw(st.lists(st.integers(0, 1), min_size=len(values),
                                max_size=len(values)).filter(lambda ls: 0 < sum(ls) < len(ls)))
    auc = roc_auc(values, labels)
    assert auc == pytest.approx(roc_auc_score(labels, values), abs=1e-12)
    pairs = [(p, n) for p, lp in zip(values, labels, strict=True) if lp
             for n, ln in zip(values, labels, strict=True) if not ln]
    by_pairs = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs) / len(pairs)
    assert auc == pytest.approx(by_pairs, abs=1e-12)
    # a monotone transform keeps it; reversing the ranking mirrors it
    assert roc_auc([3 * v + 7 for v in values], labels) == pytest.approx(auc, abs=1e-12)
    assert roc_auc([-v for v in values], labels) == pytest.approx(1 - auc, abs=1e-12)


@pytest.mark.parametrize(("values", "labels"), [
    ([0.1, 0.2], [1, 1]),            # one class only
    ([0.1, 0.2], [0, 2]),            # not a binary label
    ([0.1, float("nan")], [0, 1]),   # not finite
    ([0.1, 0.2, 0.3], [0, 1]),       # lengths differ
])
def test_auc_refuses_what_it_cannot_rank(values: list[float], labels: list[int]) -> None:
    with pytest.raises(ConfigurationError):
        roc_auc(values, labels)


def test_default_scores_are_probabilities_and_leave_the_mode() -> None:
    x, _ = make_credit_data(200, seed=0)
    model = make_mlp(x.shape[1], 2, 8)
    model.train()
    p = default_scores(model, x)
    assert p.shape == (200,) and np.all((p >= 0) & (p <= 1)) and model.training


# -- NLP ------------------------------------------------------------------------------------


def test_vocabulary_is_public_fixed_and_covers_the_generator() -> None:
    vocab = vocabulary()
    assert vocab == vocabulary()
    assert sorted(vocab.values()) == list(range(2, len(vocab) + 2))  # 0 pad, 1 unknown
    texts, labels = make_topic_corpus(500, seed=2)
    assert all(word in vocab for text in texts for word in tokenize(text))
    assert set(np.unique(labels)) == set(range(len(TOPICS)))
    assert (texts, labels.tolist()) == (lambda t, y: (t, y.tolist()))(
        *make_topic_corpus(500, seed=2))
    assert make_topic_corpus(500, seed=3)[0] != texts


def test_encoding_keeps_each_known_word_once_and_pads() -> None:
    vocab = {"market": 2, "rain": 3}
    rows = encode_texts(["Rain, rain and MARKET!", "", "rain"], vocab, max_tokens=4)
    assert rows.dtype == np.float32
    assert rows.tolist() == [[3, UNKNOWN, 2, PAD], [PAD] * 4, [3, PAD, PAD, PAD]]
    assert encode_texts(["a b c d e"], {}, max_tokens=2).tolist() == [[UNKNOWN, PAD]]
    assert encode_texts(["rain market"], vocab, max_tokens=1).tolist() == [[3]]
    with pytest.raises(ConfigurationError):
        encode_texts(["x"], {"x": 1})  # would collide with UNKNOWN
    with pytest.raises(ConfigurationError):
        encode_texts(["x"], vocab, max_tokens=0)


def test_topic_split_and_refusals() -> None:
    data = load_topics_federated(3, num_texts=600, seed=0)
    assert sum(data.client_sizes) + len(data.test[1]) == 600
    assert data.num_classes == len(TOPICS) and data.test[0].shape[1] == data.num_features
    with pytest.raises(ConfigurationError):
        make_topic_corpus(5)
    with pytest.raises(ConfigurationError):
        make_topic_corpus(100, borrow=1.5)
    with pytest.raises(ConfigurationError):
        BagOfWordsClassifier(1, 4)


def test_bag_of_words_ignores_order_and_padding() -> None:
    model = BagOfWordsClassifier(20, 3, 4, seed=1)
    a = torch.tensor([[5.0, 7.0, 9.0, 0.0, 0.0]])
    b = torch.tensor([[9.0, 5.0, 7.0, 0.0, 0.0]])
    c = torch.tensor([[5.0, 7.0, 9.0]])
    assert torch.allclose(model(a), model(b)) and torch.allclose(model(a), model(c))
    empty = model(torch.zeros((2, 5)))
    assert torch.allclose(empty, model.classifier.bias.expand(2, 3))  # zero embedding
    assert model(torch.zeros((0, 5))).shape == (0, 3)  # an empty Poisson batch


@pytest.mark.filterwarnings("ignore:Full backward hook:UserWarning")
def test_opacus_per_sample_gradients_are_each_texts_own_gradient() -> None:
    """DP-SGD clips each example's gradient: for EmbeddingBag, Opacus's
    per-sample gradient must equal the gradient of that text alone."""
    from opacus import GradSampleModule

    vocab = vocabulary()
    rows = torch.as_tensor(encode_texts(make_topic_corpus(12, seed=5)[0], vocab))
    rows[3] = 0  # a text with no known word
    labels = torch.arange(12) % len(TOPICS)
    model = BagOfWordsClassifier(len(vocab) + 2, len(TOPICS), 6, seed=2)
    reference = BagOfWordsClassifier(len(vocab) + 2, len(TOPICS), 6, seed=2)
    sampled = GradSampleModule(model, loss_reduction="sum")
    loss = torch.nn.functional.cross_entropy(sampled(rows), labels, reduction="sum")
    loss.backward()
    for i in range(len(rows)):
        reference.zero_grad()
        torch.nn.functional.cross_entropy(reference(rows[i:i + 1]), labels[i:i + 1],
                                          reduction="sum").backward()
        for (name, p), q in zip(model.named_parameters(), reference.parameters(),
                                strict=True):
            assert torch.allclose(p.grad_sample[i], q.grad, atol=1e-6), (i, name)


@pytest.mark.filterwarnings("ignore:Full backward hook:UserWarning")
def test_a_repeated_word_would_break_the_per_sample_gradient() -> None:
    """Why :func:`encode_texts` keeps each word once: Opacus's EmbeddingBag
    sampler adds a repeated id's share once, so the clipped per-sample
    gradient would not be the example's gradient."""
    from opacus import GradSampleModule

    rows = torch.tensor([[5.0, 5.0, 7.0]])
    labels = torch.tensor([1])
    model = BagOfWordsClassifier(10, 2, 3, seed=0)
    reference = BagOfWordsClassifier(10, 2, 3, seed=0)
    torch.nn.functional.cross_entropy(GradSampleModule(model, loss_reduction="sum")(rows),
                                      labels, reduction="sum").backward()
    torch.nn.functional.cross_entropy(reference(rows), labels, reduction="sum").backward()
    assert not torch.allclose(model.embedding.weight.grad_sample[0],
                              reference.embedding.weight.grad, atol=1e-6)
    assert encode_texts(["rain rain market"], {"rain": 5, "market": 7},
                        max_tokens=3).tolist() == [[5, 7, PAD]]
