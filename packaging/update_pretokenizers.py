"""Regenerate localr1/models/convert/pretokenizers.json from llama.cpp's converter.

llama.cpp names a BPE pre-tokenizer (``tokenizer.ggml.pre``) by hashing the token ids its tokenizer gives for
one fixed text; the table of known hashes lives in ``get_vocab_base_pre`` of its converter. localr1 reads the
same table from this JSON, so converted files carry the name llama.cpp's own converter would write.

    python packaging/update_pretokenizers.py PATH/TO/llama.cpp/conversion/base.py
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ENTRY = re.compile(r'if chkhsh == "([0-9a-f]{64})":\s*\n\s*# ref: (\S+)\s*\n\s*res = "([^"]+)"')
CHKTXT = re.compile(r"chktxt = ('.*')\n")


def extract(source: str) -> dict:
    import ast

    chktxt = ast.literal_eval(CHKTXT.search(source).group(1))
    table = {h: {"name": name, "ref": ref} for h, ref, name in ENTRY.findall(source)}
    return {"chktxt": chktxt, "hashes": table}


if __name__ == "__main__":
    data = extract(Path(sys.argv[1]).read_text(encoding="utf-8"))
    out = Path(__file__).resolve().parent.parent / "localr1" / "models" / "convert" / "pretokenizers.json"
    out.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"{len(data['hashes'])} pre-tokenizers -> {out}")
