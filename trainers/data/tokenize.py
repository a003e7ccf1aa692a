"""Tokenizers that need no hub: open_clip's BPE (it ships its vocabulary) and a local WordPiece."""

from __future__ import annotations

import string
from collections.abc import Iterable
from pathlib import Path

from open_clip.tokenizer import SimpleTokenizer
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
from tokenizers import decoders as tokenizer_decoders
from transformers import PreTrainedTokenizerFast

from trainers.config import DataConfig

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
REAL_VOCAB_SIZE = 8192
REAL_VOCAB_MAX_CAPTIONS = 100_000


def clip_tokenizer(context_length: int = 77) -> SimpleTokenizer:
    """open_clip's SimpleTokenizer: tokenizer(list_of_str) -> LongTensor (B, context_length)."""
    return SimpleTokenizer(context_length=context_length)


def _bert_pipeline(model: models.Model) -> Tokenizer:
    tokenizer = Tokenizer(model)
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = tokenizer_decoders.WordPiece()
    return tokenizer


def _wrap(tokenizer: Tokenizer) -> PreTrainedTokenizerFast:
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]", model_max_length=512,
    )


def wordpiece_from_words(words: Iterable[str]) -> PreTrainedTokenizerFast:
    """Every listed word is one token; single characters (and ## continuations) cover anything else."""
    words = sorted(set(words))
    ascii_characters = set(string.ascii_lowercase + string.digits + string.punctuation)
    characters = sorted({c for w in words for c in w} | ascii_characters)
    vocab_list = [*SPECIAL_TOKENS, *characters, *(f"##{c}" for c in characters),
                  *(w for w in words if w not in characters)]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(vocab_list))}
    return _wrap(_bert_pipeline(models.WordPiece(vocab, unk_token="[UNK]")))


def wordpiece_from_vocab_file(path: str) -> PreTrainedTokenizerFast:
    if not Path(path).is_file():
        raise ValueError(f"data.vocab_file: {path} does not exist")
    vocab = {line.rstrip("\n"): i for i, line in enumerate(Path(path).read_text().splitlines())}
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
        raise ValueError(f"data.vocab_file: {path} lacks the special tokens {', '.join(missing)}")
    return _wrap(_bert_pipeline(models.WordPiece(vocab, unk_token="[UNK]")))


def wordpiece_from_texts(texts: Iterable[str], vocab_size: int = REAL_VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """Train a WordPiece vocabulary on captions (real data without a vocab_file)."""
    tokenizer = _bert_pipeline(models.WordPiece(unk_token="[UNK]"))
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS))
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return _wrap(tokenizer)


def build_wordpiece_tokenizer(data: DataConfig) -> PreTrainedTokenizerFast:
    """BERT-style tokenizer for ALBEF: the world's grammar, data.vocab_file, or trained on the captions."""
    if data.vocab_file is not None:
        return wordpiece_from_vocab_file(data.vocab_file)
    if data.dataset == "synthetic":
        from trainers.data.captions import grammar_words

        return wordpiece_from_words(grammar_words())
    from itertools import islice

    from trainers.data.pretrain import build_pretrain_dataset

    dataset = build_pretrain_dataset(data)
    rows = getattr(dataset, "rows", None)
    captions = (r[1] for r in rows) if rows is not None else (item["caption"] for item in dataset)
    return wordpiece_from_texts(islice(captions, REAL_VOCAB_MAX_CAPTIONS))
