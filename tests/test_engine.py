"""The GRPO engine end to end with real vLLM on CPU and the tiny random Qwen2: a 3-step `grpo train`
(run folder contents), resume equality, convergence on a simple verifiable reward, and bad inputs.
One vLLM engine is shared by the in-process tests (engines handed a sampler sync their weights into it
before their first rollout)."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from grpo import rewards
from grpo.config import ConfigError, resolve_config
from grpo.engine import GRPOEngine

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    d = tmp_path_factory.mktemp("grpo_cache")
    old = os.environ.get("GRPO_CACHE")
    os.environ["GRPO_CACHE"] = str(d)
    yield d
    if old is None:
        os.environ.pop("GRPO_CACHE", None)
    else:
        os.environ["GRPO_CACHE"] = old


@pytest.fixture(scope="module")
def sampler(cache):
    from grpo.builders import build_sampler, resolve_model_path
    cfg = resolve_config("tiny")
    return build_sampler(cfg, resolve_model_path(cfg.model))


def _engine(sampler, *overrides, run_dir=None):
    cfg = resolve_config("tiny", overrides=list(overrides))
    return GRPOEngine(cfg, run_dir=run_dir, sampler=sampler)


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_cli_train_three_steps(cache, tmp_path):
    """`grpo train --preset tiny` as a user runs it: config printed and written, metrics per step,
    eval before/after, a loadable checkpoint, plots."""
    run = tmp_path / "run"
    env = dict(os.environ, GRPO_CACHE=str(cache))
    p = subprocess.run([sys.executable, "-m", "grpo.cli", "train", "--preset", "tiny", "--run-dir", str(run),
                        "train.steps=3", "log.plot=true"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "== grpo train: preset tiny" in p.stdout and "steps: 3" in p.stdout
    assert "== eval after 3 steps" in p.stdout
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3]
    for r in train:
        for key in ("reward/total_mean", "completion_len/mean", "completion_len/max", "tokens_per_s/overall",
                    "tokens_per_s/generation", "time/train", "time/weight_sync", "clip_frac_low", "peak_memory_gb"):
            assert key in r, key
        assert r["tokens/completion"] > 0 and math.isfinite(r["loss"])
    assert [r["step"] for r in rows if r["kind"] == "eval"] == [0, 3]
    assert resolve_config(files=[run / "config.yaml"]).train.steps == 3
    ckpt = run / "checkpoints" / "step-000003"
    assert (ckpt / "model.safetensors").exists() and (ckpt / "state.pt").exists()
    assert (run / "plots" / "curves.png").stat().st_size > 10_000
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 3 and "accuracy" in summary["after"]


def test_resume_continues_exactly(sampler, tmp_path):
    """2 steps + checkpoint + a fresh engine resuming + 2 steps == 4 uninterrupted steps."""
    over = ("optim.lr=3e-3", "rewards.functions=[{name: contains, kwargs: {target_text: '7'}}]",
            "data.template=plain", "train.updates_per_rollout=2")
    a = _engine(sampler, *over)
    for m in a.train(4):  # mu = 2: the ratio extremes are over both updates, the mean is their mean
        assert m["ratio_min"] <= m["ratio_mean"] <= m["ratio_max"], m
    want = _weights(a.policy)
    b = _engine(sampler, *over, run_dir=tmp_path)
    b.train(2)
    path = b.save()
    c = _engine(sampler, *over, run_dir=tmp_path)
    c.load(path)
    assert c.step == 2
    c.train(4)
    got = _weights(c.policy)
    moved = max(float((want[k] - _weights(b.policy)[k]).abs().max()) for k in want)
    assert moved > 1e-4, "training did not move the weights: the comparison would prove nothing"
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6, msg=lambda m: f"{k}: {m}")


def test_convergence_on_a_verifiable_reward(sampler):
    """GRPO raises the mean reward of 'the completion contains 7' from its initial level (~5% for a
    random model) to above 0.5 within 30 steps, fixed seeds."""
    eng = _engine(sampler, "optim.lr=3e-3", "rewards.functions=[{name: contains, kwargs: {target_text: '7'}}]",
                  "data.template=plain", "sampling.group_size=8", "train.prompts_per_step=8", "train.seed=1")
    start = eng.train_step()["reward/total_mean"]
    hist = [start] + [m["reward/total_mean"] for m in eng.train(30)]
    assert start < 0.3, f"initial reward {start} already high: the test would prove nothing"
    assert sum(hist[-3:]) / 3 > 0.5, f"mean reward did not rise above 0.5 in 30 steps: {hist}"
    assert eng.check_sync() < 1e-3  # the sampler holds the trained weights


def test_dynamic_sampling_drops_equal_groups(sampler):
    eng = _engine(sampler, "train.dynamic_sampling=true", "train.max_oversample_rounds=1",
                  "rewards.functions=[{name: contains, kwargs: {target_text: '7'}}]", "data.template=plain")
    m = eng.train_step()
    assert m["groups_zero_std"] >= m["groups_dropped"] >= 0
    rollout, examples, scores, adv, info = eng.collect()
    G = eng.cfg.sampling.group_size
    grouped = scores.total.view(-1, G)
    assert bool((grouped.amax(1) > grouped.amin(1)).all()), "a kept group has equal rewards"
    assert rollout.num_sequences == len(examples) * G


def raising_reward(prompts, completions, **fields):
    if len(completions) > 3:
        raise KeyError("boom")
    return [0.0] * len(completions)


def nan_reward(prompts, completions, **fields):
    return [float("nan")] + [0.0] * (len(completions) - 1)


def test_bad_rewards_stop_the_step_with_the_sample_named(sampler):
    sys.modules.setdefault("tests_engine_rewards", sys.modules[__name__])
    eng = _engine(sampler, "rewards.functions=[{name: 'tests_engine_rewards:raising_reward'}]")
    rollout, examples = eng.rollout()
    with pytest.raises(rewards.RewardError, match="raising_reward"):
        eng.score(rollout, examples)
    eng = _engine(sampler, "rewards.functions=[{name: 'tests_engine_rewards:nan_reward'}]")
    with pytest.raises(rewards.RewardError, match="nan_reward"):
        eng.score(rollout, examples)
    eng = _engine(sampler, "rewards.functions=[{name: 'tests_engine_rewards:nan_reward'}]", "rewards.on_error=zero")
    s = eng.score(rollout, examples)
    assert s.errors and bool(torch.isfinite(s.total).all())


def test_long_prompts_are_reported_and_skipped(sampler):
    # level 3 word problems take 104-132 tokens of the tiny tokenizer, one-digit sums 28
    eng = _engine(sampler, "data.max_prompt_tokens=118", "data.template=plain", "data.level=[0, 3]")
    skipped = eng.data_report["skipped_long_train"]
    assert skipped and all(s.length > 118 for s in skipped), skipped[:3]
    lens = [len(eng.sampler.encode([ex.prompt])[0]) for ex in eng.train_data]
    assert max(lens) <= 118 and len(eng.train_data) + len(skipped) + len(eng.eval_data) + len(
        eng.data_report["skipped_long_eval"]) == eng.cfg.data.size
    with pytest.raises(ConfigError, match="longer than"):
        _engine(sampler, "data.max_prompt_tokens=5")


def test_missing_model_folder_is_a_clear_error(sampler, tmp_path):
    with pytest.raises(ConfigError, match="not a model folder"):
        _engine(sampler, f"model.path={tmp_path / 'nope'}")
