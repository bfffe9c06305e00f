"""The omni model: vision encoder, audio tokenizer, LLM backbone and speech head, with its processor.

Depends on torch, transformers and the speech engines; never on ``app`` or ``training``.
"""
