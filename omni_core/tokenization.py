"""Tokenizers a model folder carries, and reading a model folder with its tokenizer.

The ``tiny`` preset has a 128-token text vocabulary; ``character_tokenizer`` is a real Hugging Face
fast tokenizer (saved as ``tokenizer.json``, read back with ``AutoTokenizer``) that fits it: one
token per printable ASCII character, ChatML's two markers, padding and unknown. Larger presets use
their backbone's own tokenizer (SmolLM2's, Qwen2.5's).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

PAD, CHAT_START, CHAT_END = "<pad>", "<|im_start|>", "<|im_end|>"


def character_tokenizer() -> Any:
    """Ids 0-2: pad, ``<|im_start|>``, ``<|im_end|>`` (also end of sequence); 3-97: the printable ASCII
    characters; 98, 99: newline and tab. Accents are stripped and any other character reads as
    ``?``, so every text has ids and none of them is a control token."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocabulary = {PAD: 0, CHAT_START: 1, CHAT_END: 2}
    vocabulary |= {chr(code): 3 + code - 32 for code in range(32, 127)}
    vocabulary |= {"\n": 98, "\t": 99}
    backend = Tokenizer(models.WordLevel(vocab=vocabulary, unk_token="?"))
    backend.normalizer = normalizers.Sequence(
        [normalizers.NFKD(), normalizers.StripAccents(), normalizers.Replace(Regex("[^\\x20-\\x7e\\n\\t]"), "?")]
    )
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=CHAT_START,
        eos_token=CHAT_END,
        pad_token=PAD,
        clean_up_tokenization_spaces=False,
    )


def load_tokenizer(folder: str | os.PathLike[str]) -> Any:
    """The tokenizer saved in a model folder (``tokenizer.json`` and its config), offline."""
    from transformers import AutoTokenizer

    folder = Path(folder)
    if not (folder / "tokenizer.json").is_file() and not (folder / "tokenizer_config.json").is_file():
        raise FileNotFoundError(f"{folder} holds no tokenizer (tokenizer.json)")
    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
