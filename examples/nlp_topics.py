"""NLP: a text classifier trained across newsrooms that keep their text.

Each newsroom holds its own short news items (generated sentences over a
public vocabulary, :mod:`securefl.federation.text`: sports, markets, weather,
technology, with words shared between topics).  They train a bag-of-words
model (``nn.EmbeddingBag``, mean of word embeddings, then a linear layer)
with Opacus DP-SGD through :func:`securefl.federate`, and the server learns
only the sum of their masked updates through secure aggregation.  Nothing is
downloaded.

The vocabulary is the generator's public word list, never words counted in
a newsroom's text: a vocabulary built from private text would itself reveal
what the text contains.

    python examples/nlp_topics.py [--newsrooms 5] [--rounds 10] [--output DIR]
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from torch import nn

import securefl
from securefl.federation import RoundReport
from securefl.federation.text import (
    TOPICS,
    BagOfWordsClassifier,
    encode_texts,
    load_topics_federated,
    vocabulary,
)

HEADLINES = (
    "the striker scored a decisive goal as fans celebrated",
    "investors hedged as bonds slumped on inflation",
    "a chilly fog drifted in and frost froze the roads",
    "the startup shipped a faster processor for developers",
)


def classify(model: nn.Module, texts: list[str]) -> list[str]:
    """The topic the model gives each text."""
    model.eval()
    with torch.no_grad():
        logits = model(torch.as_tensor(encode_texts(texts)))
    names = list(TOPICS)
    return [names[int(i)] for i in logits.argmax(dim=1)]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the federation; print and return its figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--newsrooms", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--texts", type=int, default=4000)
    parser.add_argument("--target-epsilon", type=float, default=7.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="write the ledger, metrics and"
                        " checkpoint here (default: write nothing)")
    args = parser.parse_args(argv)

    data = load_topics_federated(args.newsrooms, num_texts=args.texts, seed=args.seed)
    print(f"{args.newsrooms} newsrooms hold {data.client_sizes} texts;"
          f" {len(data.test[1])} held out; {len(vocabulary())} words in the public vocabulary")
    model = BagOfWordsClassifier(len(vocabulary()) + 2, len(TOPICS), embedding_dim=16,
                                 seed=args.seed)

    def show(report: RoundReport, metrics: dict[str, float]) -> None:
        status = "ABORTED" if report.aborted else f"{len(report.survivors)} newsrooms summed"
        print(f"round {report.round:2d}: test accuracy {metrics['accuracy']:.3f}, {status},"
              f" max epsilon {report.epsilon_max:.2f}")

    result = securefl.federate(
        model, data.clients, nn.CrossEntropyLoss(),
        rounds=args.rounds, target_epsilon=args.target_epsilon, delta=1e-5,
        sample_rate=0.5, batch_size=36, local_epochs=2,
        test_data=data.test,             # without evaluate: test loss and accuracy per round
        secure=True, dropout=0.1, output_dir=args.output, seed=args.seed, on_round=show,
    )
    predicted = classify(result.model, list(HEADLINES))
    for text, topic in zip(HEADLINES, predicted, strict=True):
        print(f"  {topic:>10}: {text}")
    print(f"test accuracy {result.final['accuracy']:.3f} over {len(TOPICS)} topics (chance"
          f" {1 / len(TOPICS):.2f}); max epsilon {result.epsilon:.2f} at delta {result.delta:g}")
    if result.output_dir is not None:
        print(f"ledger: {result.output_dir}/ledger.jsonl (securefl audit {result.output_dir})")
    return {"accuracy": result.final["accuracy"], "epsilon": result.epsilon,
            "delta": result.delta, "predicted": predicted, "output_dir": result.output_dir}


if __name__ == "__main__":
    main()
