"""Derive the CLIP tokenizer files (vocab.json, merges.txt) that SD1.5's tokenizer reads,
from OpenAI's original BPE table, and write them into farm/data/sd15/tokenizer/.

The table, `bpe_simple_vocab_16e6.txt.gz`, is OpenAI's (released with CLIP under the MIT
license) and ships inside the PyPI wheel of open_clip_torch (and OpenAI's `clip` package). With no model hub, fetch it with pip:

    pip download open_clip_torch --no-deps -d /tmp/oc
    python scripts/derive_clip_tokenizer.py /tmp/oc/open_clip_torch-*.whl

or give the .txt.gz itself. `--check` derives into memory and compares with the committed
files instead of writing (exit 1 on any difference).

The derivation is CLIP's own (its SimpleTokenizer builds the same table): the merges are
the file's lines 1 … 49152 − 256 − 2 (line 0 is a version header); the vocabulary is the
256 byte characters (GPT-2's byte → unicode table), then each of them + "</w>", then each
merge joined, then "<|startoftext|>" and "<|endoftext|>": ids 0 … 49407. Hugging Face's
merges.txt starts with a "#version: 0.2" line.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from farm.models.tiny import bytes_to_unicode  # noqa: E402
from farm.util import write_text_atomic  # noqa: E402

TABLE = "bpe_simple_vocab_16e6.txt.gz"
OUT = ROOT / "farm" / "data" / "sd15" / "tokenizer"
VOCAB_SIZE = 49408
#: Merges CLIP keeps: the vocabulary less the 2 × 256 byte symbols and the 2 special tokens.
MERGES = VOCAB_SIZE - 2 * 256 - 2


def read_table(source: Path) -> str:
    """The BPE table's text, from the .txt.gz or from a wheel that holds it."""
    if source.suffix == ".whl":
        with zipfile.ZipFile(source) as wheel:
            names = [n for n in wheel.namelist() if n.endswith("/" + TABLE)]
            if not names:
                raise SystemExit(f"{source} holds no {TABLE}")
            data = wheel.read(names[0])
    else:
        data = source.read_bytes()
    return gzip.decompress(data).decode("utf-8")


def derive(table: str) -> tuple[str, str]:
    """(vocab.json text, merges.txt text)."""
    lines = table.split("\n")
    merges = lines[1:MERGES + 1]
    if len(merges) != MERGES or any(len(m.split()) != 2 for m in merges):
        raise SystemExit(f"not CLIP's BPE table: expected {MERGES} merges of two symbols after the header")
    symbols = list(bytes_to_unicode().values())
    words = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    words += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {word: i for i, word in enumerate(words)}
    if len(vocab) != VOCAB_SIZE:
        raise SystemExit(f"derived {len(vocab)} distinct tokens, expected {VOCAB_SIZE}")
    return json.dumps(vocab, ensure_ascii=False), "#version: 0.2\n" + "\n".join(merges) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help=f"{TABLE}, or a wheel holding it (open_clip_torch)")
    parser.add_argument("--check", action="store_true", help="compare with the committed files; write nothing")
    args = parser.parse_args()
    vocab, merges = derive(read_table(args.source))
    if args.check:
        same = all((OUT / name).read_text(encoding="utf-8") == text
                   for name, text in (("vocab.json", vocab), ("merges.txt", merges)))
        print("the committed tokenizer files match" if same else "the committed tokenizer files DIFFER")
        return 0 if same else 1
    write_text_atomic(OUT / "vocab.json", vocab)
    write_text_atomic(OUT / "merges.txt", merges)
    print(f"wrote {OUT / 'vocab.json'} and {OUT / 'merges.txt'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
