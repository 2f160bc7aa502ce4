"""grpo: a throughput-first GRPO engine.

`grpo.ops` holds the public kernels API (group advantages, token logprobs, the GRPO loss); it imports
nothing from the engine, so it can be embedded in any trainer.
"""
__version__ = "0.1.0"
