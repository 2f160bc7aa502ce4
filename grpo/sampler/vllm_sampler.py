"""VLLMSampler: a colocated vLLM engine (`vllm.LLM`, in this process) behind the Sampler contract.

- Logprobs: the engine runs with `logprobs_mode="processed_logprobs"`, so the logprob of each chosen token
  is log_softmax of the logits after temperature (and top-k/top-p masking, renormalized over what is kept):
  the distribution the token was drawn from. At temperature 0 (greedy) vLLM applies no temperature: the
  logprobs are log_softmax(logits).
- Weights: `update_weights` validates every (hf_name, tensor) against the checkpoint's names and shapes
  before touching the engine, then hands buckets of `bucket_bytes` to vLLM's own checkpoint-format loader
  (layerwise reload: fused qkv / gate_up layers and the CPU weight repacking stay vLLM's job), then resets
  the prefix cache. Three load paths, all vLLM's code: "reload" (`model_runner.reload_weights`),
  "native" (vLLM's weight-transfer session API: start_weight_update / update_weights per bucket /
  finish_weight_update, with an in-process, zero-copy backend registered here: the trainer's tensors are
  already in this process, so CUDA IPC handles would only add an export/import round trip), and, on CPU
  with `cpu_gemm="plain"`, "copy" (`model.load_weights`: each parameter's own weight_loader copies its
  shard in place; the layers compute over those tensors, so there is nothing to re-pack).
- CPU GEMMs: `cpu_gemm="onednn"` keeps vLLM's dispatch (linear weights re-packed for oneDNN at load and at
  every reload); "plain" keeps them as loaded and computes with grpo's row-streaming kernel
  (grpo/sampler/cpu_gemm.py).
- Sleep: on GPU `sleep(level)` frees the KV cache (level 1 also offloads weights, level 2 discards them);
  `update_weights` while asleep wakes in the order weights -> load -> empty_cache -> KV cache -> reset
  prefix cache. On CPU vLLM has no sleep mode: sleep/wake only record the state.

vLLM is imported when a VLLMSampler is built, after the environment it reads at import is set. Imports
nothing from the engine.
"""
from __future__ import annotations

import json
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch

from .base import (NamedTensors, Prompt, Rollout, SamplingConfig, check_weights, encode_checked, make_rollout,
                   hf_token_logprobs, named_tensors_of, probe_ids, weight_buckets)
from .cpu_gemm import plain_cpu_gemm

INPROC_BACKEND = "grpo_inproc"


def configure_vllm_env(*, cpu_kv_cache_gib: float, cache_root: Path, threads: Optional[int]) -> None:
    """Sets what vLLM reads from the environment (before it is imported; values already set are kept):
    the in-process engine (no engine-core subprocess, so the sampler can reach the model runner), the CPU
    KV cache size (unset, vLLM takes ~9.5 GiB and starts slowly), cache folders of this run, and the CPU
    thread count (unset, vLLM drops torch to 1 thread "for serving")."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", f"{cpu_kv_cache_gib:g}")
    os.environ.setdefault("VLLM_CACHE_ROOT", str(cache_root / "vllm"))
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_root / "inductor"))
    if not torch.cuda.is_available():
        os.environ.setdefault("OMP_NUM_THREADS", str(threads or torch.get_num_threads()))


def checkpoint_shapes(folder) -> dict[str, tuple[int, ...]]:
    """hf_name -> shape of every tensor in the model folder's safetensors files (headers only: 8-byte
    length + JSON); without safetensors files, from the config on the meta device."""
    folder = Path(folder)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        from transformers import AutoConfig, AutoModelForCausalLM
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))
        return {k: tuple(v.shape) for k, v in model.state_dict().items()}
    shapes = {}
    for f in files:
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        shapes.update({k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"})
    return shapes


def _register_inproc_backend() -> None:
    """Registers INPROC_BACKEND with vLLM's WeightTransferEngineFactory (once per process): chunks carry
    the (hf_name, tensor) pairs themselves and go to the model's checkpoint-format loader, between vLLM's
    own layerwise-reload start and finish."""
    from vllm.distributed.weight_transfer import WeightTransferEngine, WeightTransferEngineFactory
    from vllm.distributed.weight_transfer.base import WeightTransferInitInfo, WeightTransferUpdateInfo

    if INPROC_BACKEND in WeightTransferEngineFactory._registry:
        return

    @dataclass
    class InProcInitInfo(WeightTransferInitInfo):
        pass

    @dataclass
    class InProcUpdateInfo(WeightTransferUpdateInfo):
        weights: list  # [(hf_name, tensor)], tensors on the engine's device

    class InProcessWeightTransferEngine(WeightTransferEngine):
        init_info_cls = InProcInitInfo
        update_info_cls = InProcUpdateInfo

        def init_transfer_engine(self, init_info) -> None:
            pass  # nothing to rendezvous with: the sender is this process

        def start_weight_update(self) -> None:
            from vllm.model_executor.model_loader.reload import initialize_layerwise_reload
            initialize_layerwise_reload(self.model)

        def finish_weight_update(self) -> None:
            from vllm.model_executor.model_loader.reload import finalize_layerwise_reload
            finalize_layerwise_reload(self.model, self.model_config)

        def update_weights(self, update_info) -> None:
            # the base class ends with torch.accelerator.synchronize(), which has no CPU meaning
            self.receive_weights(self.parse_update_info(update_info))
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)

        def receive_weights(self, update_info) -> None:
            self.model.load_weights(update_info.weights)

        def shutdown(self) -> None:
            pass

    WeightTransferEngineFactory.register_engine(INPROC_BACKEND, InProcessWeightTransferEngine)


def _chosen_logprobs(lp, toks: list[int], i: int) -> list[float]:
    """The logprob of each chosen token from vLLM's per-position logprobs (FlatLogprobs: the sampled
    token comes first at each position; or a list of {token_id: Logprob})."""
    starts = getattr(lp, "start_indices", None)
    if starts is None:
        return [d[t].logprob for d, t in zip(lp, toks)]
    if len(starts) != len(toks) or any(lp.token_ids[s] != t for s, t in zip(starts, toks)):
        raise RuntimeError(f"prompts[{i}]: vLLM's logprobs do not line up with the sampled tokens")
    return [lp.logprobs[s] for s in starts]


# vLLM's CPU default (128 tokens) shares no prompt shorter than 128 tokens; 32 is the smallest block its CPU
# attention takes. Prefix caching shares full blocks, also among the n completions of a prompt scheduled
# in the same step, so a group's prompt is prefilled about once instead of n times (100M model, 8 prompts
# of 103 tokens x 4 completions x 32 tokens: 411 tok/s instead of 234 with 128, bench/README.md "Sampler").
CPU_BLOCK_SIZE = 32


class VLLMSampler:
    """Colocated vLLM sampler. `generate(prompts, sampling) -> Rollout`; `update_weights(pairs or module)`
    loads new weights in place; `check_in_sync(model)` compares with the trainer's model.

    model_path: a Hugging Face model folder. dtype: the engine's weight dtype ("float32", "bfloat16", ...).
    max_model_len: prompt + completion cap (None: the model's own). weight_transfer: "auto" (GPU: "native",
    CPU: "copy" with cpu_gemm="plain", else "reload"), "native", "reload" or "copy". cpu_gemm: "onednn"
    (vLLM's packed GEMMs) or "plain" (weights kept as loaded; ignored on GPU). plain_torch_rows: in plain
    mode, GEMMs of this many rows or more (prefills) call F.linear instead of the row-streaming kernel (0:
    never; grpo/sampler/cpu_gemm.py has the measured crossover). block_size: KV block size in
    tokens (None: CPU_BLOCK_SIZE on CPU, vLLM's default on GPU). Other keyword arguments go to `vllm.LLM`.
    """

    def __init__(self, model_path, *, tokenizer=None, dtype: str = "float32", max_model_len: Optional[int] = None,
                 gpu_memory_utilization: float = 0.4, cpu_kv_cache_gib: float = 1, enforce_eager: bool = True,
                 seed: int = 0, enable_prefix_caching: bool = True, block_size: Optional[int] = None,
                 bucket_bytes: int = 256 << 20, weight_transfer: str = "auto", threads: Optional[int] = None,
                 cache_root=None, chat_template: bool = True, cpu_gemm: str = "onednn", plain_torch_rows: int = 80,
                 **llm_kwargs):
        if weight_transfer not in ("auto", "native", "reload", "copy"):
            raise ValueError(f"weight_transfer: expected 'auto', 'native', 'reload' or 'copy', got {weight_transfer!r}")
        if cpu_gemm not in ("onednn", "plain"):
            raise ValueError(f"cpu_gemm: expected 'onednn' or 'plain', got {cpu_gemm!r}")
        if not isinstance(bucket_bytes, int) or bucket_bytes < 1:
            raise ValueError(f"bucket_bytes: expected an int >= 1, got {bucket_bytes!r}")
        self.model_path = Path(model_path)
        if not (self.model_path / "config.json").exists():
            raise FileNotFoundError(f"model_path: no config.json in {self.model_path}")
        self.on_gpu = torch.cuda.is_available()
        self.device = torch.device("cuda", torch.cuda.current_device()) if self.on_gpu else torch.device("cpu")
        if cache_root is None:
            from grpo.models import cache_dir
            cache_root = cache_dir()
        configure_vllm_env(cpu_kv_cache_gib=cpu_kv_cache_gib, cache_root=Path(cache_root), threads=threads)
        self.plain_gemm = cpu_gemm == "plain" and not self.on_gpu
        if not isinstance(plain_torch_rows, int) or plain_torch_rows < 0:
            raise ValueError(f"plain_torch_rows: expected an int >= 0, got {plain_torch_rows!r}")
        self.plain_torch_rows = plain_torch_rows
        self.compiled = not enforce_eager
        if weight_transfer == "auto":
            weight_transfer = "native" if self.on_gpu else "copy" if self.plain_gemm else "reload"
        if weight_transfer == "copy" and not self.plain_gemm:
            raise ValueError("weight_transfer='copy' needs cpu_gemm='plain' on CPU (vLLM's packed GEMMs must be "
                             "re-processed after a load: use 'reload' or 'native')")
        self.weight_transfer = weight_transfer
        self.bucket_bytes = bucket_bytes
        self.chat_template = chat_template
        self.expected = checkpoint_shapes(self.model_path)
        from transformers import AutoConfig, AutoTokenizer
        self.hf_config = AutoConfig.from_pretrained(self.model_path)
        self.tied = bool(getattr(self.hf_config, "tie_word_embeddings", False))
        self.tokenizer = tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(self.model_path)
        self.vocab_size = int(getattr(self.hf_config, "vocab_size", 0) or len(self.tokenizer))
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

        t0 = time.perf_counter()
        self._set_num_threads = torch.set_num_threads  # the CPU worker replaces it with a no-op
        from vllm import LLM
        with self._cpu_gemm():
            self.llm = LLM(**self._engine_kwargs(dtype=dtype, enforce_eager=enforce_eager, seed=seed,
                                                 enable_prefix_caching=enable_prefix_caching,
                                                 gpu_memory_utilization=gpu_memory_utilization,
                                                 max_model_len=max_model_len, block_size=block_size,
                                                 **llm_kwargs))
        self.max_model_len = int(self.llm.llm_engine.model_config.max_model_len)
        if weight_transfer == "native":
            self._worker().init_weight_transfer_engine({})
        self.startup_seconds = time.perf_counter() - t0
        self.sleep_level = 0

    def _cpu_gemm(self):
        """The context every construction and load of vLLM's linear layers runs in (grpo/sampler/cpu_gemm.py)."""
        return plain_cpu_gemm(self.plain_gemm, self.plain_torch_rows, as_op=self.compiled)

    def _engine_kwargs(self, *, max_model_len, block_size, **kw) -> dict:
        """vllm.LLM arguments: processed logprobs, sleep mode on GPU, the in-process weight-transfer
        backend for the "native" path; None-valued max_model_len / block_size are left to vLLM."""
        kw.update(model=str(self.model_path), logprobs_mode="processed_logprobs")
        if max_model_len is not None:
            kw["max_model_len"] = max_model_len
        if block_size is None and not self.on_gpu:
            block_size = CPU_BLOCK_SIZE
        if block_size is not None:
            kw["block_size"] = block_size
        if self.on_gpu:
            kw.setdefault("enable_sleep_mode", True)
        if self.weight_transfer == "native":
            _register_inproc_backend()
            from vllm.config import WeightTransferConfig
            kw["weight_transfer_config"] = WeightTransferConfig(backend=INPROC_BACKEND)
        return kw

    def close(self) -> None:
        """Shuts the engine down and frees it (another VLLMSampler may then start in this process);
        gives torch.set_num_threads back."""
        if getattr(self, "llm", None) is None:
            return
        import gc
        from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel
        self.llm.llm_engine.engine_core.shutdown()
        self.llm = None
        destroy_model_parallel()
        destroy_distributed_environment()
        gc.collect()
        if self.on_gpu:
            torch.cuda.empty_cache()
        torch.set_num_threads = self._set_num_threads

    # --- generation -----------------------------------------------------------------------------------
    def encode(self, prompts: Sequence[Prompt]) -> list[list[int]]:
        """Prompt token ids (chat template applied), each checked to fit: a prompt needs at most
        max_model_len - 1 tokens (vLLM must generate at least one)."""
        return encode_checked(self.tokenizer, prompts, chat_template=self.chat_template,
                              max_model_len=self.max_model_len, vocab_size=self.vocab_size)

    def sampling_params(self, sampling: SamplingConfig, n: Optional[int] = None):
        """vLLM SamplingParams for `sampling` (n overridden by `n`; never a per-request seed: vLLM on CPU
        crashes on one, and the engine is seeded)."""
        from vllm import SamplingParams
        return SamplingParams(n=n or sampling.n, max_tokens=sampling.max_tokens, temperature=float(sampling.temperature),
                              top_p=float(sampling.top_p), top_k=0 if sampling.top_k == -1 else sampling.top_k,
                              stop=list(sampling.stop) or None, logprobs=0 if sampling.logprobs else None,
                              skip_special_tokens=True, flat_logprobs=True,
                              # vLLM's per-step detokenization (of the text and of every logprob's token)
                              # is its largest CPU cost on small models; only stop strings need it, and
                              # the texts are decoded once at the end otherwise
                              detokenize=bool(sampling.stop))

    def generate(self, prompts: Sequence[Prompt], sampling: SamplingConfig) -> Rollout:
        """B = len(prompts) * sampling.n completions, prompt-major. Token ids are everything the engine
        sampled (EOS included; with a stop string, up to the token that completed it; the text stops
        before the stop string)."""
        if not isinstance(sampling, SamplingConfig):
            raise TypeError(f"sampling: expected a SamplingConfig, got {type(sampling).__name__}")
        self._ensure_awake()
        ids = self.encode(prompts)
        # vLLM refuses n > 1 with greedy sampling: then each prompt goes n times with n = 1 (same layout)
        reps, n_req = (sampling.n, 1) if sampling.temperature == 0 else (1, sampling.n)
        t0 = time.perf_counter()
        outs = self.llm.generate([{"prompt_token_ids": p} for p in ids for _ in range(reps)],
                                 self.sampling_params(sampling, n=n_req), use_tqdm=False)
        seconds = time.perf_counter() - t0
        prompt_ids, seqs, logps, reasons, texts = [], [], [], [], []
        for r, out in enumerate(outs):
            i = r // reps
            comps = sorted(out.outputs, key=lambda c: c.index)
            if len(comps) != n_req:
                raise RuntimeError(f"vLLM returned {len(comps)} completions for prompts[{i}], expected {n_req}")
            for c in comps:
                if c.finish_reason not in ("stop", "length"):
                    raise RuntimeError(f"prompts[{i}]: completion finished with {c.finish_reason!r}")
                toks = list(c.token_ids)
                prompt_ids.append(ids[i])
                seqs.append(toks)
                reasons.append(c.finish_reason)
                texts.append(c.text if sampling.stop else None)
                if sampling.logprobs:
                    logps.append(_chosen_logprobs(c.logprobs, toks, i))
        if not sampling.stop:
            texts = self.tokenizer.batch_decode(seqs, skip_special_tokens=True)
        return make_rollout("vllm", ids, prompt_ids, seqs, logps if sampling.logprobs else None, reasons, texts,
                            sampling.n, self.pad_id, seconds)

    def score(self, ids: Sequence[int]) -> torch.Tensor:
        """(len(ids) - 1,) float32 log p(ids[t] | ids[:t]) under the engine (vLLM prompt logprobs, which no
        sampling processor touches: log_softmax of the raw logits)."""
        from vllm import SamplingParams
        self._ensure_awake()
        ids = self.encode([list(ids)])[0]
        out = self.llm.generate([{"prompt_token_ids": ids}], SamplingParams(max_tokens=1, temperature=0.0,
                                prompt_logprobs=0), use_tqdm=False)[0]
        return torch.tensor([d[t].logprob for d, t in zip(out.prompt_logprobs[1:], ids[1:])], dtype=torch.float32)

    def check_in_sync(self, model: torch.nn.Module, ids: Optional[Sequence[int]] = None) -> float:
        """max |logprob(engine) - logprob(model)| over a fixed probe sequence (`probe_ids` unless `ids`);
        ~1e-5 when in sync in fp32, large (~0.1-1) when the weights differ."""
        ids = list(ids) if ids is not None else probe_ids(self.tokenizer, min(48, self.max_model_len - 1))
        return float((self.score(ids) - hf_token_logprobs(model, ids)).abs().max())

    # --- weights --------------------------------------------------------------------------------------
    def update_weights(self, named_tensors: NamedTensors, *, path: Optional[str] = None) -> dict:
        """Loads (hf_name, tensor) pairs (or an nn.Module's state_dict) into the engine in place; any
        subset of the model's weights. Everything is validated before the engine is touched, so a bad
        name or shape raises ValueError and the engine keeps its weights. When asleep, wakes in the right
        order. Returns {bytes, seconds, gbps, tensors, buckets, path, skipped, woke}.
        path: "reload", "native" or "copy" (default: the sampler's weight_transfer)."""
        path = path or self.weight_transfer
        if path not in ("reload", "native", "copy"):
            raise ValueError(f"path: expected 'reload', 'native' or 'copy', got {path!r}")
        if path == "native" and self.weight_transfer != "native":
            raise ValueError("path='native' needs VLLMSampler(weight_transfer='native') at construction")
        if path == "copy" and not self.plain_gemm:
            raise ValueError("path='copy' needs VLLMSampler(cpu_gemm='plain') on CPU")
        pairs, skipped = named_tensors_of(named_tensors, tied=self.tied)
        check_weights(pairs, self.expected, "update_weights")
        if not pairs:
            raise ValueError("update_weights: no weights given")
        full = {n for n, _ in pairs} >= set(self.expected) - ({"lm_head.weight"} if self.tied else set())
        if self.sleep_level == 2 and not full:
            raise ValueError("update_weights: the engine slept at level 2 (weights discarded): a full set of "
                             f"weights is needed, got {len(pairs)} of {len(self.expected)}")
        woke = self.sleep_level > 0
        t0 = time.perf_counter()
        if woke:
            self._wake_up(["weights"])
        buckets = list(weight_buckets(pairs, self.bucket_bytes))
        stale = {} if self.plain_gemm else self._cpu_gemm_snapshot()  # plain GEMMs read the weights: never stale
        if path == "copy":
            with torch.no_grad():
                self._worker().model_runner.get_model().load_weights(p for b in buckets for p in b)
        elif path == "reload":
            with self._cpu_gemm():
                self._worker().reload_weights(weights_iterator=(p for b in buckets for p in self._to_device(b)))
        else:
            with self._cpu_gemm():
                self._load_native(buckets)
        self._refresh_stale_cpu_gemms(stale)
        if self.on_gpu:
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()  # before the KV cache comes back: the loader's temporaries are gone
        if woke:
            self._wake_up(["kv_cache"])
            self.sleep_level = 0
        self.llm.reset_prefix_cache()  # cached KV blocks were computed with the old weights
        seconds = time.perf_counter() - t0
        nbytes = sum(t.numel() * t.element_size() for _, t in pairs)
        return dict(bytes=nbytes, seconds=seconds, gbps=nbytes / max(seconds, 1e-12) / 1e9, tensors=len(pairs),
                    buckets=len(buckets), path=path, skipped=skipped, woke=woke)

    def _to_device(self, bucket):
        """The bucket's tensors on the engine's device (no copy when already there)."""
        return [(n, t.to(self.device, non_blocking=True)) for n, t in bucket]

    def _load_native(self, buckets) -> None:
        """vLLM's weight-transfer session: one update_weights call per bucket between start and finish."""
        worker = self._worker()
        worker.start_weight_update()
        try:
            for b in buckets:
                worker.update_weights({"weights": self._to_device(b)})
        finally:
            if worker._weight_update_active:
                worker.finish_weight_update()

    def _worker(self):
        """The in-process vLLM worker (needs VLLM_ENABLE_V1_MULTIPROCESSING=0)."""
        executor = getattr(self.llm.llm_engine, "model_executor", None)
        driver = getattr(executor, "driver_worker", None)
        if driver is None:
            raise RuntimeError("VLLMSampler needs the in-process vLLM engine: set VLLM_ENABLE_V1_MULTIPROCESSING=0 "
                               "before vllm is imported")
        return driver.worker

    def _cpu_gemm_snapshot(self) -> dict:
        """On CPU, module -> its GEMM closure (`cpu_linear`, which holds a packed copy of the weight)."""
        if self.on_gpu:
            return {}
        model = self._worker().model_runner.get_model()
        return {m: m.cpu_linear for m in model.modules() if hasattr(m, "cpu_linear")}

    def _refresh_stale_cpu_gemms(self, before: dict) -> None:
        """vLLM 0.32 on CPU: a layer that keeps its weight and packs a copy for its GEMM (the lm_head) is
        not re-processed by a reload when its weight is another layer's (tied embeddings: only the
        embedding is loaded), so its packed copy stays the old one and the logits come from the old
        weights. Re-packs such layers when the layer owning the weight was re-processed."""
        if not before:
            return
        from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

        def weight_ptr(m):
            w = getattr(m, "weight", None)
            return w.data_ptr() if isinstance(w, torch.Tensor) and w.dim() == 2 and w.numel() else None

        changed = {weight_ptr(m) for m, f in before.items() if m.cpu_linear is not f} - {None}
        for m, f in before.items():
            if m.cpu_linear is f and weight_ptr(m) in changed:
                dispatch_cpu_unquantized_gemm(m, remove_weight=False)

    # --- sleep ----------------------------------------------------------------------------------------
    def sleep(self, level: int = 1) -> None:
        """GPU: frees the KV cache; level 1 offloads the weights to CPU memory, level 2 discards them (the
        next update_weights must then be a full one). CPU: vLLM has no sleep mode; only the state is kept."""
        if level not in (1, 2):
            raise ValueError(f"level: expected 1 or 2, got {level!r}")
        if self.sleep_level:
            return
        if self.on_gpu:
            self.llm.sleep(level=level)
        self.sleep_level = level

    def wake(self, *, reload_from_disk: bool = False) -> None:
        """Undoes sleep. After a level-2 sleep the weights are gone: pass reload_from_disk=True to reload
        the checkpoint folder, or call update_weights with the full state instead (it wakes in order)."""
        if not self.sleep_level:
            return
        if self.sleep_level == 2:
            if not reload_from_disk:
                raise RuntimeError("wake: the engine slept at level 2 and discarded its weights; call "
                                   "update_weights(model) with the full weights, or wake(reload_from_disk=True)")
            self._wake_up(["weights"])
            with self._cpu_gemm():
                self._worker().reload_weights()  # from model_path, through the same layerwise loader
            if self.on_gpu:
                torch.cuda.empty_cache()
            self._wake_up(["kv_cache"])
        else:
            self._wake_up(None)
        self.sleep_level = 0
        self.llm.reset_prefix_cache()

    def _wake_up(self, tags) -> None:
        if self.on_gpu:
            self.llm.wake_up(tags=tags)

    def _ensure_awake(self) -> None:
        if self.sleep_level == 1:
            self.wake()
        elif self.sleep_level == 2:
            raise RuntimeError("the engine slept at level 2 (weights discarded): call update_weights(model) "
                               "with the full weights before generating")
