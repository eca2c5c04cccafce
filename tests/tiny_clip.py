"""A tiny CLIP model with random weights, saved as a sentence-transformers model folder.

No CLIP weights can be downloaded where the tests run, so the image tests build their own: a
transformers ``CLIPModel`` (2 layers, width 32, 16-dim projection, 32x32 images in 8x8 patches),
a ``CLIPProcessor`` of a byte-level ``CLIPTokenizer`` whose vocabulary (the 256 byte symbols, each
also as word end, and the two special tokens; no merges) is written here by hand, and a
``CLIPImageProcessor``. The folder has the layout of the Hub's
``sentence-transformers/clip-ViT-B-32``: the transformers files at its root and a
``modules.json`` naming one
``sentence_transformers.models.CLIPModel`` module -- so lsmvec loads it with exactly the code that
loads a real CLIP model (``embedding.load_model``: ``SentenceTransformer(folder)``).

The weights are random (seeded), so similarities mean nothing; what the tests check is plumbing:
each input reaches the model and its embedding reaches the index unchanged.
"""
from __future__ import annotations

import json
from pathlib import Path

DIMENSION = 16
"""The projection width: what the model's encode returns per text or image."""
IMAGE_SIZE = 32
SEED = 1234


def _byte_symbols() -> list[str]:
    """GPT-2 / CLIP's printable stand-in for each of the 256 bytes (byte-level BPE alphabet)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    symbols, extra = dict(zip(printable, printable)), 0
    for b in range(256):
        if b not in symbols:
            symbols[b] = 256 + extra
            extra += 1
    return [chr(symbols[b]) for b in range(256)]


def build_tiny_clip(folder: Path) -> str:
    """Write the tiny model into `folder` (created) and return its path as a str."""
    import torch
    from transformers import (CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor,
                              CLIPTokenizer)

    folder.mkdir(parents=True, exist_ok=True)
    symbols = _byte_symbols()
    vocab = {s: i for i, s in enumerate([*symbols, *(s + "</w>" for s in symbols),
                                         "<|startoftext|>", "<|endoftext|>"])}
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    tokenizer = CLIPTokenizer.from_pretrained(str(folder), model_max_length=32)
    start, end = vocab["<|startoftext|>"], vocab["<|endoftext|>"]
    config = CLIPConfig(
        text_config={"vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 37,
                     "num_hidden_layers": 2, "num_attention_heads": 2,
                     "max_position_embeddings": 32, "bos_token_id": start, "eos_token_id": end,
                     "pad_token_id": end},
        vision_config={"image_size": IMAGE_SIZE, "patch_size": 8, "hidden_size": 32,
                       "intermediate_size": 37, "num_hidden_layers": 2,
                       "num_attention_heads": 2},
        projection_dim=DIMENSION)
    with torch.random.fork_rng(devices=[]):  # seeded weights, the caller's RNG left as it was
        torch.manual_seed(SEED)
        model = CLIPModel(config).eval()
    images = CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE},
                                crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    model.save_pretrained(str(folder))
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(str(folder))
    (folder / "modules.json").write_text(json.dumps(
        [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.CLIPModel"}]),
        encoding="utf-8")
    return str(folder)
