"""NLP: a text classifier trained across newsrooms that keep their text.

Each newsroom holds its own short news items (generated sentences over a
public vocabulary, :mod:`securefl.federation.text`: sports, markets, weather,
technology, with words shared between topics).  They train a bag-of-words
model (``nn.EmbeddingBag``, mean of word embeddings, then a linear layer)
with Opacus DP-SGD, and the server learns only the sum of their masked
updates through secure aggregation.  Nothing is downloaded.

The vocabulary is the generator's public word list, never words counted in
a newsroom's text: a vocabulary built from private text would itself reveal
what the text contains.

    python examples/nlp_topics.py [--newsrooms 5] [--rounds 10] [--out DIR]
"""

from __future__ import annotations

import argparse
import tempfile
from typing import Any

import torch

from securefl.federation import RoundReport, SimulationConfig, run_simulation
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


def classify(model: torch.nn.Module, texts: list[str]) -> list[str]:
    """The topic the model gives each text."""
    model.eval()
    with torch.no_grad():
        logits = model(torch.as_tensor(encode_texts(texts)))
    names = list(TOPICS)
    return [names[int(i)] for i in logits.argmax(dim=1)]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the federation; print and return its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--newsrooms", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--texts", type=int, default=4000)
    parser.add_argument("--target-epsilon", type=float, default=7.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="run directory (default: a fresh temp dir)")
    args = parser.parse_args(argv)

    data = load_topics_federated(args.newsrooms, num_texts=args.texts, seed=args.seed)
    print(f"{args.newsrooms} newsrooms hold {data.client_sizes} texts;"
          f" {len(data.test[1])} held out; {len(vocabulary())} words in the public vocabulary")
    config = SimulationConfig(
        num_clients=args.newsrooms, rounds=args.rounds, dropout=0.1,
        target_epsilon=args.target_epsilon, delta=1e-5, secure=True, seed=args.seed,
    )
    model = BagOfWordsClassifier(len(vocabulary()) + 2, len(TOPICS), embedding_dim=16,
                                 seed=args.seed)

    def show(report: RoundReport) -> None:
        status = "ABORTED" if report.aborted else f"{len(report.survivors)} newsrooms summed"
        print(f"round {report.round:2d}: accuracy {report.accuracy:.3f}, {status},"
              f" max epsilon {report.epsilon_max:.2f}")

    out = args.out or tempfile.mkdtemp(prefix="securefl-topics-")
    result = run_simulation(config, out, data=data, model=model, on_round=show)
    final = result.metrics["final"]
    predicted = classify(result.model, list(HEADLINES))
    for text, topic in zip(HEADLINES, predicted, strict=True):
        print(f"  {topic:>10}: {text}")
    print(f"test accuracy {final['accuracy']:.3f} over {len(TOPICS)} topics (chance"
          f" {1 / len(TOPICS):.2f}); max epsilon {final['epsilon_max']:.2f} at delta"
          f" {final['delta']:g}")
    print(f"ledger: {result.output_dir}/ledger.jsonl (securefl audit {result.output_dir})")
    return {"accuracy": final["accuracy"], "epsilon": final["epsilon_max"],
            "delta": final["delta"], "predicted": predicted,
            "output_dir": str(result.output_dir)}


if __name__ == "__main__":
    main()
