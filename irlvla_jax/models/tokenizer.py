"""A byte-level tokenizer (no vocabulary file, nothing downloaded) and the driving prompt.

Ids: 0 = PAD, 1 = BOS, 2 = EOS, 3 + b for UTF-8 byte b (vocabulary 259). The prompt depends only
on the driving command, so :func:`command_prompt_table` tokenizes its four variants once on the
host; the model picks a row by the command inside jit (no strings on device).
"""

from __future__ import annotations

import numpy as np

from irlvla_jax import types

PAD, BOS, EOS = 0, 1, 2
OFFSET = 3
VOCAB_SIZE = 256 + OFFSET

INSTRUCTION = "what is your driving decision for the next four seconds?"
COMMAND_TEXT = {"left": "turn left", "straight": "go straight", "right": "turn right",
                "unknown": "follow the road"}


def encode(text: str, add_bos: bool = True, add_eos: bool = True) -> list[int]:
    """UTF-8 text -> token ids."""
    ids = [b + OFFSET for b in text.encode("utf-8")]
    return ([BOS] if add_bos else []) + ids + ([EOS] if add_eos else [])


def decode(ids) -> str:
    """Token ids -> text (special and padding tokens dropped)."""
    return bytes(int(i) - OFFSET for i in ids if int(i) >= OFFSET).decode("utf-8", "replace")


def encode_batch(texts: list[str], length: int) -> tuple[np.ndarray, np.ndarray]:
    """texts -> (ids [N, length] int32, mask [N, length] bool), right-padded with PAD.

    A text longer than ``length`` is an error (silently cutting the prompt would change it).
    """
    ids = np.full((len(texts), length), PAD, np.int32)
    for n, t in enumerate(texts):
        tok = encode(t)
        if len(tok) > length:
            raise ValueError(f"prompt {t!r} needs {len(tok)} tokens > config.model.semantic."
                             f"prompt_len={length}")
        ids[n, :len(tok)] = tok
    return ids, ids != PAD


def prompt_text(command: str) -> str:
    """The instruction plus the navigation command, e.g. '... Command: turn left.'"""
    return f"{INSTRUCTION} Command: {COMMAND_TEXT[command]}."


def command_prompt_table(length: int) -> tuple[np.ndarray, np.ndarray]:
    """-> (ids [4, length], mask [4, length]): one prompt per ``types.COMMANDS`` entry."""
    return encode_batch([prompt_text(c) for c in types.COMMANDS], length)
