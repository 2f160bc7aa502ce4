"""GRPOEngine: R1-Zero-style GRPO with a colocated sampler, as separate callable steps

    rollout() -> Rollout        G completions for the next P prompts (sampler wakes, generates, sleeps)
    score(rollout) -> Scores    the reward functions on every completion
    advantages(scores) -> (adv, zero_std)   group-normalised, one launch (grpo.ops)
    make_batch(...) -> Batch    old / reference logprobs from no-grad fused passes when needed
    train_on(batch) -> metrics  mu optimizer updates, micro-batches by a token budget, fused linear loss
    sync_weights() -> stats     the trainer's weights copied into the sampler in place

and `train(steps)` built from them (dynamic sampling, metrics, evaluation, checkpoints), so a larger
trainer can drive any part.
"""
from __future__ import annotations

import dataclasses
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from . import checkpoint, data as data_mod, ops, rewards as rewards_mod
from .builders import build_data, build_optimizer, build_sampler, correctness_reward, resolve_model_path
from .config import Config
from .metrics import MetricsLogger, PhaseTimer, peak_memory_bytes
from .policy import Batch, choose_layout, load_policy, logprob_pass, loss_on_micro_batch, micro_batches
from .sampler.base import Rollout, SamplingConfig, make_rollout


@dataclass
class Scores:
    total: torch.Tensor                 # (B,) float32 weighted sum of the reward functions
    per_function: dict                  # name -> (B,) float32
    errors: dict                        # name -> samples scored 0 after an error (on_error="zero")


class GRPOEngine:
    def __init__(self, cfg: Config, *, run_dir: Optional[Path] = None, sampler=None):
        self.cfg = cfg
        self.run_dir = Path(run_dir) if run_dir else None
        self.device = torch.device("cuda" if cfg.train.device == "auto" and torch.cuda.is_available()
                                   else ("cpu" if cfg.train.device == "auto" else cfg.train.device))
        _seed_everything(cfg.train.seed)
        self.model_path = resolve_model_path(cfg.model)
        self.policy = load_policy(self.model_path, dtype=cfg.model.dtype, device=str(self.device),
                                  gradient_checkpointing=cfg.model.gradient_checkpointing)
        self.ref = None
        if cfg.loss.beta > 0:  # beta == 0 loads no reference model
            self.ref = load_policy(self.model_path, dtype=cfg.model.dtype, device=str(self.device)).eval()
            self.ref.requires_grad_(False)
        self.layout = choose_layout(cfg.train.layout, self.policy)
        self.autocast = "cuda" if self.device.type == "cuda" and cfg.model.autocast_bf16 else None
        self.sampler = sampler if sampler is not None else build_sampler(cfg, self.model_path)
        self.optimizer, self.scheduler = build_optimizer(cfg, self.policy)
        self.train_data, self.eval_data, self.data_report = build_data(cfg, self.sampler.tokenizer)
        self.stream = data_mod.PromptStream(self.train_data, seed=cfg.data.seed)
        self.reward_specs = [rewards_mod.RewardSpec(s["name"], float(s.get("weight", 1.0)), dict(s.get("kwargs", {})))
                             for s in cfg.rewards.functions]
        self.loss_config = dataclasses.replace(
            cfg.loss, temperature=cfg.sampling.temperature,
            max_completion_length=cfg.loss.max_completion_length or cfg.sampling.max_tokens)
        self.step = 0
        self.timer = PhaseTimer(sync_cuda=self.device.type == "cuda")
        # A sampler we started holds the policy's initial weights; one handed in may hold anything.
        self.sampler_is_current = sampler is None
        self._rollouts_in_step = 0

    # --- the callable steps -------------------------------------------------------------------------
    def sampling_config(self, *, eval_mode: bool = False, n: Optional[int] = None) -> SamplingConfig:
        s = self.cfg.sampling
        return SamplingConfig(n=n or (s.eval_samples if eval_mode else s.group_size), max_tokens=s.max_tokens,
                              temperature=s.eval_temperature if eval_mode else s.temperature,
                              top_p=1.0 if eval_mode else s.top_p, top_k=-1 if eval_mode else s.top_k,
                              stop=tuple(s.stop))

    def rollout(self, examples=None) -> tuple[Rollout, list]:
        """G completions for each of the next P examples (or the given ones). Returns (rollout, examples)."""
        if examples is None:
            examples = self.stream.next_batch(self.cfg.train.prompts_per_step)
        if not self.sampler_is_current:
            self.sync_weights()
        # Sampling draws from the global RNG in the in-process engine: seed it per rollout so a resumed
        # run samples exactly what the uninterrupted run would have.
        torch.manual_seed(_mix(self.cfg.train.seed, self.step, self._rollouts_in_step))
        self._rollouts_in_step += 1
        with self.timer("generation"):
            self.sampler.wake()
            out = self.sampler.generate([ex.prompt for ex in examples], self.sampling_config())
            if self.cfg.sampler.sleep_between_rollouts:
                self.sampler.sleep()
        return out, examples

    def score(self, rollout: Rollout, examples, specs=None) -> Scores:
        """Every reward function (the configured ones, or `specs`) on every completion; fields of each
        example go to the functions as per-sample keyword lists (TRL's convention), with completion lengths
        and the length cap."""
        n = rollout.n
        with self.timer("reward"):
            prompts = [ex.prompt for ex in examples for _ in range(n)]
            fields = {"answer": [ex.answer for ex in examples for _ in range(n)],
                      "completion_lengths": rollout.lengths().tolist(),
                      "max_completion_length": self.cfg.sampling.max_tokens}
            for key in sorted({k for ex in examples for k in ex.fields}):
                fields[key] = [ex.fields.get(key) for ex in examples for _ in range(n)]
            res = rewards_mod.score(self.reward_specs if specs is None else specs, prompts, rollout.texts, fields, on_error=self.cfg.rewards.on_error)
        per = {k: torch.tensor(v, dtype=torch.float32) for k, v in res.per_function.items()}
        return Scores(torch.tensor(res.total, dtype=torch.float32), per, dict(res.errors))

    def advantages(self, scores: Scores, group_size: Optional[int] = None):
        """(advantages (B,) float32, zero_std (B // G,) bool) in one launch."""
        t = self.cfg.train
        return ops.group_advantages(scores.total, group_size or self.cfg.sampling.group_size, scale=t.advantage_scale,
                                    estimator=t.advantage_estimator, return_zero_std=True)

    def make_batch(self, rollout: Rollout, adv: torch.Tensor) -> Batch:
        """The training batch on the device; old logprobs (mu > 1) and reference logprobs (beta > 0) come
        from no-grad fused passes."""
        dev = self.device
        samp = rollout.sampling_logp if self.loss_config.is_mode is not None else None  # only IS reads them
        batch = Batch(prompt_ids=rollout.prompt_ids, completion_ids=rollout.completion_ids.to(dev),
                      mask=rollout.completion_mask.to(dev), advantages=adv.to(dev),
                      sampling_logp=samp.to(dev) if samp is not None else None)
        kw = dict(temperature=self.loss_config.temperature, budget=self.cfg.train.token_budget, layout=self.layout,
                  backend=self.cfg.train.backend, chunk_tokens=self.cfg.train.chunk_tokens, autocast=self.autocast)
        if self.cfg.train.updates_per_rollout > 1:  # mu == 1 is on-policy: old = logp.detach() in the loss
            with self.timer("logprobs"):
                batch.old_logp = logprob_pass(self.policy, batch, **kw)
        if self.ref is not None:
            with self.timer("logprobs"):
                batch.ref_logp = logprob_pass(self.ref, batch, **kw)
        return batch

    def train_on(self, batch: Batch) -> dict:
        """mu optimizer updates on the batch; gradients accumulate over micro-batches with the global
        token and sequence counts passed to the loss. Returns token-weighted loss metrics."""
        t, o = self.cfg.train, self.cfg.optim
        num_tokens = max(1, int(batch.mask.sum()))
        mbs = micro_batches(batch.lengths(), t.token_budget, self.layout, batch.prompt_ids)
        sums: dict = {}
        with self.timer("train"):
            for _ in range(t.updates_per_rollout):
                self.optimizer.zero_grad(set_to_none=True)
                for idx in mbs:
                    out, ntok = loss_on_micro_batch(self.policy, batch, idx, config=self.loss_config,
                                                    num_tokens=num_tokens, num_sequences=batch.size, layout=self.layout,
                                                    backend=t.backend, chunk_tokens=t.chunk_tokens,
                                                    schedule=t.fused_schedule,
                                                    autocast=self.autocast)
                    out.loss.backward()
                    _accumulate(sums, out, ntok, num_tokens)
                grad_norm = _clip(self.policy, o.max_grad_norm)
                if not math.isfinite(grad_norm):
                    raise FloatingPointError(f"step {self.step}: gradient norm is {grad_norm}; no update applied")
                self.optimizer.step()
                self.scheduler.step()
                sums["grad_norm"] = grad_norm
        self.sampler_is_current = False
        # sums over the mu updates become means; grad_norm (the last update's) and the ratio extremes stay
        keep = ("grad_norm", "ratio_min", "ratio_max")
        metrics = {k: (v if k in keep else v / t.updates_per_rollout) for k, v in sums.items()}
        metrics["lr"] = self.scheduler.get_last_lr()[0]
        metrics["micro_batches"] = len(mbs)
        return metrics

    def sync_weights(self) -> dict:
        """The trainer's weights into the sampler, in place (bucketed, through vLLM's own loader)."""
        with self.timer("weight_sync"):
            stats = self.sampler.update_weights(self.policy)
        self.sampler_is_current = True
        return stats

    # --- a whole step and the loop ------------------------------------------------------------------
    def collect(self):
        """A rollout with dynamic sampling when enabled: groups whose rewards are all equal are dropped and
        new prompts are sampled to refill (at most max_oversample_rounds extra rollouts)."""
        rollout, examples = self.rollout()
        scores = self.score(rollout, examples)
        adv, zero = self.advantages(scores)
        info = {"groups_zero_std": int(zero.sum()), "groups_dropped": 0, "oversample_rounds": 0}
        if not self.cfg.train.dynamic_sampling:
            return rollout, examples, scores, adv, info
        G, P = rollout.n, self.cfg.train.prompts_per_step
        parts = [(rollout, examples, scores, adv, zero)]
        for _ in range(self.cfg.train.max_oversample_rounds):
            if sum(int((~z).sum()) for *_, z in parts) >= P:
                break
            r, ex = self.rollout()
            s = self.score(r, ex)
            a, z = self.advantages(s)
            parts.append((r, ex, s, a, z))
            info["oversample_rounds"] += 1
            info["groups_zero_std"] += int(z.sum())
        rollout, examples, scores, adv, kept = _keep_groups(parts, G, P)
        info["groups_dropped"] = sum(int(z.numel()) for *_, z in parts) - kept
        return rollout, examples, scores, adv, info

    def train_step(self) -> dict:
        """One GRPO step: collect, batch, train, sync. Returns this step's metrics."""
        self.timer.reset()
        self._rollouts_in_step = 0
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        t0 = time.perf_counter()
        rollout, examples, scores, adv, info = self.collect()
        if rollout.num_sequences == 0:  # every group had equal rewards even after oversampling
            metrics = {"skipped": 1}
        else:
            batch = self.make_batch(rollout, adv)
            metrics = self.train_on(batch)
            self.sync_weights()
        self.step += 1
        if self.cfg.sampler.sync_check_every and self.step % self.cfg.sampler.sync_check_every == 0:
            metrics["sync_max_abs_dlogp"] = self.check_sync()
        metrics.update(info)
        metrics.update(step_metrics(rollout, scores, self.timer.seconds, time.perf_counter() - t0, self.device))
        metrics["sampler_tokens"] = int(rollout.meta.get("completion_tokens", rollout.num_completion_tokens))
        return metrics

    def check_sync(self) -> float:
        delta = float(self.sampler.check_in_sync(self.policy))
        if delta > self.cfg.sampler.sync_tolerance:
            raise RuntimeError(f"step {self.step}: sampler and trainer disagree by {delta:.3g} in logprob "
                               f"(> sampler.sync_tolerance = {self.cfg.sampler.sync_tolerance})")
        return delta

    @torch.no_grad()
    def evaluate(self, examples=None, limit: Optional[int] = None) -> dict:
        """Held-out split, sampling.eval_samples completions each at eval_temperature: mean of every reward
        function, accuracy (the task's correctness reward: pass@1 averaged over the samples), format
        rates, completion length. The completions go to run_dir/eval_samples.jsonl."""
        examples = list(self.eval_data if examples is None else examples)[:limit]
        if not self.sampler_is_current:
            self.sync_weights()
        self.sampler.wake()
        rollout = self.sampler.generate([ex.prompt for ex in examples], self.sampling_config(eval_mode=True))
        acc_name = correctness_reward(self.cfg.data.task)
        specs = list(self.reward_specs)
        names = {s.name for s in specs}
        for extra in (acc_name, "format_strict", "format_soft"):
            if extra not in names:
                specs.append(rewards_mod.RewardSpec(extra, 0.0, {}))
        scores = self.score(rollout, examples, specs)
        self._write_eval_samples(rollout, examples, scores)
        out = {f"reward/{k}": float(v.mean()) for k, v in scores.per_function.items()}
        out.update({"accuracy": float(scores.per_function[acc_name].mean()),
                    "format_rate": float((scores.per_function["format_strict"] > 0).float().mean()),
                    "format_soft_rate": float((scores.per_function["format_soft"] > 0).float().mean()),
                    "completion_len/mean": float(rollout.lengths().float().mean()), "examples": len(examples)})
        return out

    def _write_eval_samples(self, rollout, examples, scores) -> None:
        if self.run_dir is None:
            return
        import json
        n = rollout.n
        with open(self.run_dir / "eval_samples.jsonl", "a") as f:
            for i, text in enumerate(rollout.texts):
                ex = examples[i // n]
                row = {"step": self.step, "id": ex.id, "question": ex.question, "answer": ex.answer,
                       "completion": text, **{k: float(v[i]) for k, v in scores.per_function.items()}}
                f.write(json.dumps(row) + "\n")

    # --- checkpoints --------------------------------------------------------------------------------
    def save(self, keep_last: Optional[int] = None) -> Path:
        extra = {"step": self.step, "stream": self.stream.state_dict()}
        return checkpoint.save_checkpoint(self.run_dir, self.step, model=self.policy, optimizer=self.optimizer,
                                          scheduler=self.scheduler, extra=extra,
                                          keep_last=self.cfg.log.keep_last if keep_last is None else keep_last)

    def load(self, path) -> None:
        extra = checkpoint.load_checkpoint(path, model=self.policy, optimizer=self.optimizer, scheduler=self.scheduler)
        self.step = int(extra["step"])
        self.stream.load_state_dict(extra["stream"])
        self.sampler_is_current = False  # the sampler still holds the initial weights

    def train(self, steps: Optional[int] = None, logger: Optional[MetricsLogger] = None) -> list[dict]:
        """Runs until `steps` (default cfg.train.steps) steps are done in total, logging, evaluating and
        checkpointing on the way. Returns the train metrics of the steps run now."""
        total = steps if steps is not None else self.cfg.train.steps
        history = []
        while self.step < total:
            m = self.train_step()
            history.append(m)
            if logger is not None:
                logger.log(self.step, m)
            if self.cfg.train.eval_every and self.step % self.cfg.train.eval_every == 0 and self.step < total:
                ev = self.evaluate()
                if logger is not None:
                    logger.log(self.step, ev, kind="eval")
            if self.run_dir and self.cfg.log.checkpoint_every and self.step % self.cfg.log.checkpoint_every == 0:
                self.save()
        return history


# --- helpers ------------------------------------------------------------------------------------------
def _mix(*xs) -> int:
    h = 1469598103934665603
    for x in xs:
        h = ((h ^ (int(x) & 0xFFFFFFFFFFFF)) * 1099511628211) & 0x7FFFFFFFFFFFFFFF
    return h


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _clip(model, max_norm: float) -> float:
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return 0.0
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
    return float(norm)


def _accumulate(sums: dict, out, ntok: int, num_tokens: int) -> None:
    """Loss summed over micro-batches (each is already normalised globally); metrics token-weighted."""
    sums["loss"] = sums.get("loss", 0.0) + float(out.loss.detach())
    w = ntok / num_tokens
    for k, v in out.metrics.items():
        if k == "num_tokens":
            continue
        v = float(v)
        if k == "ratio_min":
            sums[k] = min(sums.get(k, math.inf), v)
        elif k == "ratio_max":
            sums[k] = max(sums.get(k, -math.inf), v)
        else:
            sums[k] = sums.get(k, 0.0) + w * v


def _keep_groups(parts, G: int, P: int):
    """Concatenates the groups with signal from several rollouts (at most P groups)."""
    keep_r, keep_ex, keep_s, keep_a = [], [], [], []
    for r, ex, s, a, z in parts:
        for g in range(len(ex)):
            if bool(z[g]) or len(keep_ex) >= P:
                continue
            rows = list(range(g * G, (g + 1) * G))
            keep_r.append((r, rows))
            keep_ex.append(ex[g])
            keep_s.append((s, rows))
            keep_a.append(a[rows])
    rollout = _concat_rollouts(keep_r, G)
    per = {}
    if keep_s:
        for name in keep_s[0][0].per_function:
            per[name] = torch.cat([s.per_function[name][rows] for s, rows in keep_s])
    total = torch.cat([s.total[rows] for s, rows in keep_s]) if keep_s else torch.zeros(0)
    adv = torch.cat(keep_a) if keep_a else torch.zeros(0)
    errors = {}
    for s, _ in keep_s:
        for k, v in s.errors.items():
            errors[k] = errors.get(k, 0) + v
    return rollout, keep_ex, Scores(total, per, errors), adv, len(keep_ex)


def _concat_rollouts(pieces, G: int) -> Rollout:
    """Rows of several rollouts as one prompt-major Rollout (completions re-padded to the longest).
    meta["completion_tokens"] counts every token the sampler generated, the dropped groups' included."""
    prompt_ids, seqs, logps, reasons, texts = [], [], [], [], []
    has_lp = all(r.sampling_logp is not None for r, _ in pieces) if pieces else False
    for r, rows in pieces:
        for i in rows:
            n = int(r.completion_mask[i].sum())
            prompt_ids.append(r.prompt_ids[i])
            seqs.append(r.completion_ids[i, :n].tolist())
            logps.append(r.sampling_logp[i, :n].tolist() if has_lp else None)
            reasons.append(r.finish_reasons[i])
            texts.append(r.texts[i])
    sources = list({id(r): r for r, _ in pieces}.values())
    pad_id = sources[0].pad_id if sources else 0
    out = make_rollout("concat", prompt_ids[::G], prompt_ids, seqs, logps if has_lp else None, reasons, texts, G,
                       pad_id, sum(float(r.meta.get("seconds", 0.0)) for r in sources))
    out.meta["completion_tokens"] = sum(int(r.meta.get("completion_tokens", r.num_completion_tokens)) for r in sources)
    return out


def step_metrics(rollout: Rollout, scores: Scores, phases: dict, step_seconds: float, device) -> dict:
    """Rewards per function, accuracy/format where present, the length curve, tokens/s per phase."""
    m: dict = {}
    for name, v in scores.per_function.items():
        if v.numel():
            m[f"reward/{name}_mean"] = float(v.mean())
            m[f"reward/{name}_std"] = float(v.std()) if v.numel() > 1 else 0.0
    if scores.total.numel():
        m["reward/total_mean"] = float(scores.total.mean())
        m["reward/total_std"] = float(scores.total.std()) if scores.total.numel() > 1 else 0.0
    for k, v in scores.errors.items():
        m[f"reward_errors/{k}"] = v
    for name, key in (("accuracy", "accuracy"), ("countdown", "accuracy"), ("format_strict", "format_rate")):
        if name in scores.per_function and scores.per_function[name].numel():
            m[key] = float((scores.per_function[name] > 0).float().mean())
    lengths = rollout.lengths().float()
    comp_tokens = int(lengths.sum())
    prompt_tokens = sum(len(p) for p in rollout.prompt_ids)
    if lengths.numel():
        m["completion_len/mean"] = float(lengths.mean())
        m["completion_len/max"] = float(lengths.max())
        m["truncated_frac"] = sum(r == "length" for r in rollout.finish_reasons) / len(rollout.finish_reasons)
    m["tokens/completion"], m["tokens/prompt"] = comp_tokens, prompt_tokens
    for phase, sec in phases.items():
        m[f"time/{phase}"] = sec
        tokens = comp_tokens if phase in ("generation", "reward") else comp_tokens + prompt_tokens
        if sec > 0:
            m[f"tokens_per_s/{phase}"] = tokens / sec
    m["time/step"] = step_seconds
    m["tokens_per_s/overall"] = comp_tokens / step_seconds if step_seconds > 0 else 0.0
    m["peak_memory_gb"] = peak_memory_bytes(device) / 1e9
    return m
