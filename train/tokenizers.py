"""Build the caption (word-level) and transcript (character-level) tokenizers as `tokenizers` JSON files,
which the runtime loads without torch."""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors

SPECIALS = ["[PAD]", "[UNK]", "[BOS]"]  # ids 0, 1, 2 in both tokenizers


def _finish(model_vocab: dict[str, int], pre) -> Tokenizer:
    tok = Tokenizer(models.WordLevel(vocab=model_vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre
    tok.post_processor = processors.TemplateProcessing(single="[BOS] $A", special_tokens=[("[BOS]", 2)])
    return tok


def _vocab(items) -> dict[str, int]:
    vocab = {s: i for i, s in enumerate(SPECIALS)}
    for it in sorted(set(items)):
        if it not in vocab:
            vocab[it] = len(vocab)
    return vocab


def caption_tokenizer(words) -> Tokenizer:
    """Lower-cased words and punctuation; anything else maps to [UNK]."""
    tok = _finish(_vocab(w.lower() for w in words), pre_tokenizers.Whitespace())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    return tok


def speech_tokenizer(chars: str) -> Tokenizer:
    """One token per character (English letters, punctuation, CJK alike); space is a token too."""
    tok = _finish(_vocab(c.lower() for c in chars), pre_tokenizers.Split(Regex("."), behavior="isolated"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    return tok
