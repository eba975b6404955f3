"""localr1: run DeepSeek-R1 reasoning models locally, with the thinking kept apart from the answer."""

__version__ = "0.1.0"
