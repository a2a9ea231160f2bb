"""Tokenizers at run time: `tokenizers` JSON files from the bundle, padded id / mask arrays."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from .errors import BundleError, HarmonyError

log = logging.getLogger(__name__)


def pad_ids(seqs: list[list[int]], max_len: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Token id lists -> (ids int64 [N, L], mask float32 [N, L]), zero-padded to the longest (cut to max_len)."""
    length = max(len(s) for s in seqs)
    length = min(length, max_len) if max_len is not None else length
    ids = np.zeros((len(seqs), length), np.int64)
    mask = np.zeros((len(seqs), length), np.float32)
    for i, s in enumerate(seqs):
        n = min(length, len(s))
        ids[i, :n] = s[:n]
        mask[i, :n] = 1.0
    return ids, mask


def special_tokens(tok: Tokenizer) -> int:
    """Tokens the tokenizer adds to every text ([BOS]): they count against the model's sequence length."""
    post = tok.post_processor
    return post.num_special_tokens_to_add(False) if post is not None else 0


class TextTokenizer:
    """Encodes strings to ids int64 [B, L] and mask float32 [B, L] (L = longest, at most `max_len`, the model's
    sequence length: its special tokens ([BOS]) included, so a text has `room` = max_len - their count)."""

    def __init__(self, path: Path, max_len: int, what: str, unit: str = "tokens", vocab: int | None = None):
        try:
            self.tok = Tokenizer.from_file(str(path))
        except Exception as e:  # the tokenizers library raises plain Exceptions on bad JSON
            raise BundleError(f"{path}: cannot load tokenizer ({str(e).splitlines()[0]})") from None
        top = max(self.tok.get_vocab(with_added_tokens=True).values(), default=-1)
        if vocab is not None and top >= vocab:  # an id past the model's embedding table fails inside the graph
            raise BundleError(f"{path}: the tokenizer has id {top}, past the model's {what} vocabulary of {vocab}")
        self.max_len, self.what, self.unit = max_len, what, unit
        self.unk_id = self.tok.token_to_id("[UNK]")
        self.special = special_tokens(self.tok)
        self.room = max_len - self.special

    def encode(self, texts: list[str], notes: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """`texts` -> (ids, mask); words the vocabulary lacks (encoded as [UNK]) are named once per text in
        `notes`, or logged as a warning where there are none."""
        encs = self.tok.encode_batch(list(texts))
        warned = set()
        for text, enc in zip(texts, encs):
            if len(enc.ids) > self.max_len:
                raise HarmonyError(f"{self.what} is too long: {len(enc.ids) - self.special} {self.unit}, the bundle "
                                   f"allows {self.room}: {text[:40]!r}")
            # the words behind [UNK] ids, each once; a text given twice (video and audio caption) warns once
            unknown = list(dict.fromkeys(text[a:b] for (a, b), i in zip(enc.offsets, enc.ids) if i == self.unk_id))
            if unknown and text not in warned:
                warned.add(text)
                note = f"{self.what}: {len(unknown)} unknown token(s) the model has never seen: {_shown(unknown)}"
                if notes is None:
                    log.warning("%s", note)
                elif note not in notes:  # two captions lacking the same word: one note
                    notes.append(note)
        return pad_ids([e.ids for e in encs])


def _shown(words: list[str], most: int = 8, cut: int = 32) -> str:
    """Words for a one-line warning: a tab or newline as \\t, \\n, each cut at `cut` characters, at most
    `most` of them (a 10,000-character word is not logged whole)."""
    esc = [w if w.isprintable() else w.encode("unicode_escape").decode() for w in words[:most]]
    shown = " ".join(w if len(w) <= cut else w[:cut] + "..." for w in esc)
    return shown + (f" (and {len(words) - most} more)" if len(words) > most else "")
