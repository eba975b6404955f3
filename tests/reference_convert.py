"""Run llama.cpp's own convert_hf_to_gguf.py (from the llama-cpp-python sdist) on checkpoints.

    python tests/reference_convert.py LLAMA_CPP_DIR JOBS.json

JOBS.json is a list of {"pre": NAME, "args": [converter arguments]}; all run in this one process (importing
torch and transformers once). The one change to the converter: a tokenizer trained for a test has no entry
in llama.cpp's table of pre-tokenizer hashes, so get_vocab_base_pre returns the job's "pre" (the name
localr1 chose) instead of refusing.
"""

import json
import sys
from pathlib import Path

root, jobs = Path(sys.argv[1]), json.loads(Path(sys.argv[2]).read_text())
sys.path.insert(0, str(root))
sys.path.insert(1, str(root / "gguf-py"))

import conversion  # noqa: E402
import convert_hf_to_gguf  # noqa: E402

for job in jobs:
    conversion.TextModel.get_vocab_base_pre = lambda self, tokenizer, pre=job["pre"]: pre
    sys.argv = ["convert_hf_to_gguf.py", *job["args"]]
    convert_hf_to_gguf.main()
