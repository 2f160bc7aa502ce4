"""Samplers: G completions per prompt with the sampler's logprobs (see base.py for the contract).

`VLLMSampler` (colocated vLLM, in this process) and `TorchSampler` (plain transformers, for machines
without vLLM and as the test oracle). Importing this package does not import vllm.
"""
from .base import (Prompt, Rollout, Sampler, SamplingConfig, check_weights, encode_prompts, hf_token_logprobs,
                   named_tensors_of, pad_completions, probe_ids, weight_buckets)
from .torch_sampler import TorchSampler, mask_top_k_top_p
from .vllm_sampler import VLLMSampler, checkpoint_shapes, configure_vllm_env

__all__ = ["Prompt", "Rollout", "Sampler", "SamplingConfig", "encode_prompts", "pad_completions", "VLLMSampler",
           "TorchSampler", "check_weights", "named_tensors_of", "weight_buckets", "probe_ids", "hf_token_logprobs",
           "mask_top_k_top_p", "checkpoint_shapes", "configure_vllm_env"]
