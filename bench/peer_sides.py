"""The two sides of the peer comparison (bench/bench_peer.py), each run as its own process:

    python -m bench.peer_sides trl|grpo SPEC.json

`grpo`: our engine, one `GRPOEngine.train_step()` per step; `trl`: TRL's `GRPOTrainer.train()` with a
callback that holds each step until the parent says go. Both report every step (wall time, completion
tokens, generation time, peak memory, other processes' CPU load) as JSON lines on a private copy of
stdout; the settings each side gets from the spec are described in bench/bench_peer.py.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time

from bench import common  # sets THP_MEM_ALLOC_ENABLE before torch allocates

import torch  # noqa: E402

from bench.bench_peer import LOSS_TYPE, PROTO  # noqa: E402


class Gate:
    """The child's side of the protocol: JSON lines prefixed PROTO on a private copy of stdout (everything
    else printed goes to stderr, the log), "go" / "quit" lines on stdin."""

    def __init__(self):
        self.out = os.fdopen(os.dup(1), "w", buffering=1)
        os.dup2(2, 1)  # libraries print to stdout: keep the protocol channel clean
        sys.stdout = sys.stderr

    def emit(self, **kw):
        """Sends one event to the parent."""
        self.out.write(PROTO + json.dumps(kw) + "\n")

    def wait(self) -> None:
        """Says it is ready for a step and blocks until the parent says go (exits on quit / EOF)."""
        self.emit(event="waiting")
        if sys.stdin.readline().strip() != "go":
            os._exit(0)


def begin_step():
    """Resets the RSS high-water mark and starts the step's clocks: (t0, load meter)."""
    from bench.bench_step import reset_peak_rss
    reset_peak_rss()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    return time.perf_counter(), common.LoadMeter()


def step_peak_gb() -> float:
    """Peak memory of the step just run: CUDA allocated on GPU, resident high-water mark on CPU."""
    from grpo.metrics import peak_memory_bytes
    return peak_memory_bytes(torch.device("cuda" if torch.cuda.is_available() else "cpu")) / 1e9


class FixedStream:
    """The prompts of the comparison, in order (stands in for the engine's shuffled PromptStream)."""

    def __init__(self, examples):
        self.examples, self.cursor = examples, 0

    def next_batch(self, P: int):
        """The next P examples."""
        out = self.examples[self.cursor:self.cursor + P]
        self.cursor += P
        return out


def child_grpo(spec: dict, gate: Gate) -> None:
    """Our engine: load, then one train_step per "go"."""
    from grpo.config import resolve_config
    from grpo.data import Example
    from grpo.engine import GRPOEngine

    cfg = resolve_config(spec["preset"], overrides=spec["overrides"])
    engine = GRPOEngine(cfg, run_dir=None)
    engine.stream = FixedStream([Example(**ex) for ex in spec["examples"]])
    versions = ""
    if cfg.sampler.backend == "vllm":
        import vllm
        versions = f"vllm {vllm.__version__}"
    gate.emit(event="loaded", versions=versions)
    for _ in range(spec["warmup"] + spec["steps"]):
        gate.wait()
        t0, meter = begin_step()
        m = engine.train_step()
        gate.emit(event="step", seconds=time.perf_counter() - t0, completion_tokens=int(m["tokens/completion"]),
                  generation_seconds=m.get("time/generation", float("nan")), peak_gb=step_peak_gb(),
                  sequences=spec["P"] * spec["G"], background=meter.others())
    gate.emit(event="done")


def trl_config(spec: dict, out_dir: str):
    """GRPOConfig with the shared settings (see the module docstring for each mapping)."""
    from trl import GRPOConfig

    c, P, G = spec["config"], spec["P"], spec["G"]
    gpu = torch.cuda.is_available()
    kw = {}
    if gpu and importable("vllm"):
        kw = dict(use_vllm=True, vllm_mode="colocate",
                  vllm_gpu_memory_utilization=c["sampler"]["gpu_memory_utilization"])
    top_k = c["sampling"]["top_k"]
    return GRPOConfig(
        output_dir=out_dir, per_device_train_batch_size=P * G, gradient_accumulation_steps=1, num_generations=G,
        max_completion_length=spec["T"], num_iterations=1, max_steps=spec["warmup"] + spec["steps"],
        learning_rate=c["optim"]["lr"], lr_scheduler_type="constant", warmup_steps=0,
        adam_beta1=c["optim"]["beta1"], adam_beta2=c["optim"]["beta2"], adam_epsilon=c["optim"]["eps"],
        weight_decay=c["optim"]["weight_decay"], max_grad_norm=c["optim"]["max_grad_norm"],
        optim="adamw_torch_fused" if c["optim"].get("fused", True) else "adamw_torch",  # fused: TRL's own default
        beta=c["loss"]["beta"], epsilon=c["loss"]["eps_low"], epsilon_high=c["loss"]["eps_high"],
        loss_type=LOSS_TYPE[c["loss"]["loss_agg"]], scale_rewards=c["train"]["advantage_scale"],
        temperature=c["sampling"]["temperature"], top_p=c["sampling"]["top_p"], top_k=0 if top_k < 0 else top_k,
        use_cpu=not gpu, bf16=gpu, fp16=False, gradient_checkpointing=False, shuffle_dataset=False,
        seed=c["train"]["seed"], logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True,
        log_completions=False, dataloader_num_workers=0, remove_unused_columns=False, **kw)


def importable(name: str) -> bool:
    """Whether `import name` works."""
    try:
        __import__(name)
        return True
    except Exception:  # noqa: BLE001
        return False


def trl_reward(spec: dict, counters: dict):
    """One TRL reward function computing our weighted reward sum (grpo.rewards.score, the engine's call);
    it also counts the step's completion tokens from the completion_ids TRL passes."""
    from grpo import rewards as R

    c = spec["config"]
    specs = [R.RewardSpec(s["name"], float(s.get("weight", 1.0)), dict(s.get("kwargs", {})))
             for s in c["rewards"]["functions"]]
    keys = sorted({k for ex in spec["examples"] for k in ex["fields"]})

    def grpo_reward(prompts, completions, completion_ids, answer, **kw):
        """TRL's reward-function signature (dataset columns arrive as per-sample lists)."""
        counters["tokens"] += sum(len(ids) for ids in completion_ids)
        fields = {"answer": list(answer), "completion_lengths": [len(ids) for ids in completion_ids],
                  "max_completion_length": spec["T"], **{k: list(kw[k]) for k in keys}}
        texts = [R.completion_text(x) for x in completions]
        return list(R.score(specs, prompts, texts, fields, on_error=c["rewards"]["on_error"]).total)
    return grpo_reward


def child_trl(spec: dict, gate: Gate) -> None:
    """TRL's GRPOTrainer: load, then train() with a callback that waits for "go" before each step."""
    import transformers
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOTrainer

    counters = {"tokens": 0, "generation": 0.0}
    keys = sorted({k for ex in spec["examples"] for k in ex["fields"]})
    ds = Dataset.from_list([{"prompt": ex["prompt"], "answer": ex["answer"], **{k: ex["fields"].get(k) for k in keys}}
                            for ex in spec["examples"]])
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(spec["model"])

    class StepGate(TrainerCallback):
        """Blocks each step until the parent says go; reports the step when it ends."""

        def on_step_begin(self, args, state, control, **kw):
            gate.wait()
            counters.update(tokens=0, generation=0.0)
            self.t0, self.meter = begin_step()

        def on_step_end(self, args, state, control, **kw):
            gate.emit(event="step", seconds=time.perf_counter() - self.t0, completion_tokens=counters["tokens"],
                      generation_seconds=counters["generation"], peak_gb=step_peak_gb(),
                      sequences=spec["P"] * spec["G"], background=self.meter.others())

    with tempfile.TemporaryDirectory(prefix="bench-peer-trl-") as out_dir:
        trainer = GRPOTrainer(model=model, reward_funcs=[trl_reward(spec, counters)], args=trl_config(spec, out_dir),
                              train_dataset=ds, processing_class=tok, callbacks=[StepGate()])
        generate = trainer._generate

        def timed_generate(prompts):  # TRL's generation phase: tokenize, generate, decode
            t0 = time.perf_counter()
            try:
                return generate(prompts)
            finally:
                counters["generation"] += time.perf_counter() - t0
        trainer._generate = timed_generate
        gate.emit(event="loaded", versions=f"trl {trl.__version__}; transformers {transformers.__version__}; "
                                           f"use_vllm={trainer.args.use_vllm}")
        trainer.train()
    gate.emit(event="done")


def child_main(side: str, spec_path: str) -> None:
    """Entry of a child process."""
    gate = Gate()
    with open(spec_path) as f:
        spec = json.load(f)
    common.set_threads(spec["threads"])
    (child_trl if side == "trl" else child_grpo)(spec, gate)


if __name__ == "__main__":
    child_main(sys.argv[1], sys.argv[2])
