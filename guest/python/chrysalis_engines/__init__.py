"""Engine adapters for the chrysalis guest runtime.

The Rust runtime (chrysalis-guest) owns HTTP, validation, limits, metering and receipts; an
adapter owns token generation. Every adapter implements :class:`contract.Adapter` and is loaded
by module name through its module-level ``create(options)`` factory.

Adapters: :mod:`.llama_cpp` (llama-cpp-python, CPUs and CI), :mod:`.vllm` (vLLM, GPUs).
:mod:`.conformance` is the suite every adapter must pass.
"""

from .contract import Adapter, Chunk, GenerateRequest, Message

__all__ = ["Adapter", "Chunk", "GenerateRequest", "Message"]
