"""The tokenizer shipped with the synthetic task: a small byte-level BPE (assets/tokenizer.json).

Byte-level, so every string encodes (no <unk> in practice) and decodes back exactly; trained on the
task's own text, so a prompt plus its response is ~10-30 tokens. Special tokens: <pad> = 0,
<bos> = 1, <eos> = 2, <unk> = 3. There is no post-processor and no chat template: encoding adds no
special tokens, and the trainers lay out "prompt\\nresponse" and add <bos>/<eos> themselves.
Regenerate the file with `python -m rlhf_fast.data.build_tokenizer`.
"""

from __future__ import annotations

import os

TOKENIZER_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "tokenizer.json")
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")


def load_tokenizer(path: str | None = None):
    """A `transformers.PreTrainedTokenizerFast` over the shipped file, pad/bos/eos/unk set."""
    from transformers import PreTrainedTokenizerFast  # imported here: the task itself needs no torch

    return PreTrainedTokenizerFast(
        tokenizer_file=path or TOKENIZER_FILE,
        bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
        model_max_length=512, padding_side="right", clean_up_tokenization_spaces=False,
    )
