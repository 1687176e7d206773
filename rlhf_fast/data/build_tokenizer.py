"""Regenerate rlhf_fast/data/assets/tokenizer.json: `python -m rlhf_fast.data.build_tokenizer`.

Trains a byte-level BPE with the `tokenizers` library on text written by the synthetic task itself:
every template of every kind with the full range of its parameters, demonstrations and ranked
candidates of sampled examples (all kinds, both splits), each as "prompt\\nresponse", plus digits
and punctuation. Deterministic for a given `tokenizers` version.
"""

from __future__ import annotations

import argparse
import random

from rlhf_fast.data.synthetic import (CATEGORIES, COUNT_RANGE, LIMIT_N, LIST_N, PLURALS, REPEAT_K,
                                      TEMPLATES, WORD_POOL, SyntheticTask)
from rlhf_fast.data.tokenizer import SPECIAL_TOKENS, TOKENIZER_FILE


def corpus(seed: int = 0, n_samples: int = 6000) -> list[str]:
    """Lines of task text; every template and parameter value appears."""
    lines: list[str] = []
    for t in TEMPLATES["list"]:
        for plural in PLURALS.values():
            for n in range(LIST_N[0], LIST_N[1] + 1):
                lines.append(t.format(n=n, plural=plural))
    for t in TEMPLATES["count"]:
        for a in range(COUNT_RANGE[0], COUNT_RANGE[1] + 1):
            lines.append(t.format(a=a, b=min(a + 4, COUNT_RANGE[1] + 1)))
    for t in TEMPLATES["repeat"]:
        for w in WORD_POOL:
            lines.append(t.format(word=w, k=REPEAT_K[0]))
    for t in TEMPLATES["limit"]:
        for cat in CATEGORIES:
            for n in range(LIMIT_N[0], LIMIT_N[1] + 1):
                lines.append(t.format(n=n, singular=cat, wordw="word" if n == 1 else "words",
                                      art="an" if cat[0] in "aeiou" else "a"))
    lines.append(" ".join(str(i) for i in range(0, 100)))
    lines.append(" ".join(WORD_POOL))
    lines.append(", ".join(WORD_POOL))
    lines.append("0 1 2 3 4 5 6 7 8 9 . , : ; ! ? ' \" - ( )")
    task = SyntheticTask(seed)
    rng = random.Random(seed)
    for split in ("train", "eval"):
        for ex in task.sample(n_samples // 2, split):
            lines.append(ex["prompt"] + "\n" + task.demonstration(ex))
            for c in task.candidates(ex, 2, rng):
                lines.append(ex["prompt"] + "\n" + c)
    return lines


def build(vocab_size: int = 768, seed: int = 0):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2,
                                  special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(corpus(seed), trainer=trainer)
    return tok


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab-size", type=int, default=768)
    ap.add_argument("--out", default=TOKENIZER_FILE)
    args = ap.parse_args(argv)
    tok = build(args.vocab_size)
    tok.save(args.out)
    print(f"wrote {args.out}: vocab size {tok.get_vocab_size()}")


if __name__ == "__main__":
    main()
