"""Engines turn a prompt into a stream of events. Only ``llama_cpp`` touches native code."""

from localr1.engine.base import Engine, EventAssembler, ModelInfo

__all__ = ["Engine", "EventAssembler", "ModelInfo"]
