"""Model files: the catalog, resolving a name to a file, downloads into the Hugging Face cache, the bounded GGUF header reader and its cache, quantizing, and converting checkpoints to GGUF."""
