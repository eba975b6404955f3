"""Run llama.cpp's own convert_hf_to_gguf.py (from the llama-cpp-python sdist) on a checkpoint.

    python tests/reference_convert.py LLAMA_CPP_DIR PRE_NAME -- CONVERTER ARGS...

The one change: a tokenizer trained for a test has no entry in llama.cpp's table of pre-tokenizer hashes,
so get_vocab_base_pre is made to return PRE_NAME (the name localr1 chose) instead of refusing.
"""

import sys
from pathlib import Path

root, pre = Path(sys.argv[1]), sys.argv[2]
args = sys.argv[sys.argv.index("--") + 1 :]
sys.path.insert(0, str(root))
sys.path.insert(1, str(root / "gguf-py"))

import conversion  # noqa: E402
import convert_hf_to_gguf  # noqa: E402

conversion.TextModel.get_vocab_base_pre = lambda self, tokenizer: pre
sys.argv = ["convert_hf_to_gguf.py", *args]
convert_hf_to_gguf.main()
