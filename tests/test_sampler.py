"""Samplers on real vLLM (CPU) and transformers, with tiny random Qwen2 models built here.

One VLLMSampler per CPU GEMM mode for the whole module (start-up takes seconds): every test runs with
vLLM's packed oneDNN GEMMs, with cpu_gemm="plain" (weights kept as loaded, grpo's rowwise_linear) and with
"plain" compiled by vLLM (enforce_eager=False: rowwise_linear as the operator grpo::plain_linear in the
graph; an in-place weight update must reach the compiled model, which inductor's weight freezing would break);
tests that change its weights put the first model's back afterwards (`engine` fixture). The tiny models use init_std=0.1 so that greedy
decoding does not just repeat the last token (with std 0.02 and tied embeddings it does), which would
make "follows the new model" checks weak.

Tolerance 1e-4 on logprobs: both sides are fp32 (vLLM's GEMMs and CPU attention vs ATen's), so
they differ only in reduction order, measured <= 1e-6 on these models; every real mistake this guards
against (raw instead of processed logprobs, an off-by-one position, stale weights or prefix cache) moves
logprobs by >= 1e-2.
"""
import pytest
import torch

vllm = pytest.importorskip("vllm")

from grpo.models import build_tiny_model  # noqa: E402
from grpo.sampler import (SamplingConfig, TorchSampler, VLLMSampler, hf_token_logprobs,  # noqa: E402
                          mask_top_k_top_p)

TOL = 1e-4
BLOCK = 32  # vLLM's CPU attention needs a multiple of 32
PROMPTS = ["1 + 2 =", [{"role": "system", "content": "solve"}, {"role": "user", "content": "7 + 5"}],
           [5, 6, 7, 8, 9]]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("sampler_models")
    return [build_tiny_model(root / f"m{s}", seed=s, init_std=0.1) for s in (0, 1)]


@pytest.fixture(scope="module")
def hf(folders):
    from transformers import AutoModelForCausalLM
    return [AutoModelForCausalLM.from_pretrained(f, dtype=torch.float32).eval() for f in folders]


@pytest.fixture(scope="module", params=["onednn", "plain", "plain-compiled"])
def sampler(folders, request):
    mode, _, compiled = request.param.partition("-")
    s = VLLMSampler(folders[0], max_model_len=256, block_size=BLOCK, weight_transfer="native", seed=0,
                    cpu_gemm=mode, enforce_eager=not compiled)
    assert s.plain_gemm == (mode == "plain") and s.compiled == bool(compiled)
    yield s
    s.close()


@pytest.fixture
def engine(sampler, hf):
    """The module's VLLMSampler, given back awake with model 0's weights."""
    yield sampler
    sampler.update_weights(hf[0])  # a full update: also wakes it from either sleep level


@pytest.fixture(scope="module")
def long_prompt(sampler):
    """A prompt of more than two KV blocks, so a stale prefix cache would be reused after an update."""
    ids = sampler.encode(["12 + 30 = 42 so the answer is 42 " * 8])[0]
    assert len(ids) > 2 * BLOCK + 4
    return ids[: 2 * BLOCK + 8]


def hf_logp(model, prompt, completion, temperature):
    """(T,) fp32 log_softmax(logits / temperature) of `completion` after `prompt` under `model`."""
    x = torch.tensor([list(prompt) + list(completion)])
    with torch.no_grad():
        logits = model(x).logits[0, len(prompt) - 1:-1].float()
    return torch.log_softmax(logits / temperature, -1).gather(1, torch.tensor(completion)[:, None])[:, 0]


def rows(r):
    """[(prompt ids, completion ids, logprobs)] per sequence of a Rollout."""
    out = []
    for i in range(r.num_sequences):
        m = r.completion_mask[i]
        out.append((r.prompt_ids[i], r.completion_ids[i][m].tolist(),
                    None if r.sampling_logp is None else r.sampling_logp[i][m]))
    return out


# --- generation ---------------------------------------------------------------------------------------
def test_rollout_layout_prompt_major(engine):
    n, T = 4, 8
    r = engine.generate(PROMPTS, SamplingConfig(n=n, max_tokens=T, temperature=1.0))
    B = len(PROMPTS) * n
    ids = engine.encode(PROMPTS)
    assert r.num_sequences == B and r.n == n
    assert r.completion_ids.shape[0] == B and r.completion_ids.dtype == torch.int64
    assert r.completion_mask.shape == r.completion_ids.shape and r.completion_mask.dtype == torch.bool
    assert r.sampling_logp.shape == r.completion_ids.shape and r.sampling_logp.dtype == torch.float32
    assert r.group_index.tolist() == [i for i in range(len(PROMPTS)) for _ in range(n)]
    assert r.prompt_ids == [p for p in ids for _ in range(n)]
    assert ids[2] == PROMPTS[2]  # token ids pass through unchanged
    lengths = r.lengths()
    for b in range(B):  # masks are a prefix of ones; padding is pad_id with logprob 0
        L = int(lengths[b])
        assert r.completion_mask[b, :L].all() and not r.completion_mask[b, L:].any()
        assert (r.completion_ids[b, L:] == r.pad_id).all() and (r.sampling_logp[b, L:] == 0).all()
        assert (r.sampling_logp[b, :L] <= 0).all()
        assert r.finish_reasons[b] in ("stop", "length")
        assert (r.finish_reasons[b] == "length") == (L == T)  # the random model never emits EOS in 8
    assert len(r.texts) == B and all(isinstance(t, str) for t in r.texts)
    group0 = {tuple(r.completion_ids[b].tolist()) for b in range(n)}
    assert len(group0) > 1, "sampled completions of one prompt should differ"
    assert r.meta["engine"] == "vllm" and r.meta["completion_tokens"] == r.num_completion_tokens
    assert r.meta["seconds"] > 0 and r.meta["tokens_per_s"] > 0


def test_sampling_logprobs_are_after_temperature(engine, hf):
    T = 0.7
    r = engine.generate(PROMPTS[:2], SamplingConfig(n=3, max_tokens=12, temperature=T))
    worst, raw_gap = 0.0, 0.0
    for prompt, comp, lp in rows(r):
        worst = max(worst, float((lp - hf_logp(hf[0], prompt, comp, T)).abs().max()))
        raw_gap = max(raw_gap, float((lp - hf_logp(hf[0], prompt, comp, 1.0)).abs().max()))
    assert worst < TOL, f"vLLM logprobs vs HF fp32 log_softmax(logits / {T}): max |diff| {worst:.2e}"
    assert raw_gap > 1e-2, "logprobs look like raw (temperature 1) logprobs, not processed ones"


def test_group_shares_prompt_blocks_with_exact_logprobs(engine, hf, long_prompt):
    """The n completions of a prompt of two full blocks + 8 tokens, scheduled in one step, share its
    full KV blocks (prefix cache); their logprobs still equal HF's, and the CPU default block is 32."""
    from grpo.sampler.vllm_sampler import CPU_BLOCK_SIZE
    assert CPU_BLOCK_SIZE == BLOCK
    assert engine._engine_kwargs(max_model_len=None, block_size=None)["block_size"] == CPU_BLOCK_SIZE
    engine.llm.reset_prefix_cache()
    r = engine.generate([long_prompt], SamplingConfig(n=4, max_tokens=6, temperature=1.0))
    worst = max(float((lp - hf_logp(hf[0], p, c, 1.0)).abs().max()) for p, c, lp in rows(r))
    assert worst < TOL, f"shared-prefix completions vs HF fp32: max |diff| {worst:.2e}"
    assert len({tuple(c) for _, c, _ in rows(r)}) > 1


def test_top_k_top_p_logprobs_renormalized(engine, hf):
    """With top-k / top-p the sampler's logprobs are over the kept nucleus (vLLM's processed_logprobs),
    which TorchSampler's mask_top_k_top_p reproduces."""
    T, k, p = 0.8, 20, 0.9
    r = engine.generate(PROMPTS[:1], SamplingConfig(n=4, max_tokens=8, temperature=T, top_k=k, top_p=p))
    for prompt, comp, lp in rows(r):
        x = torch.tensor([prompt + comp])
        with torch.no_grad():
            z = hf[0](x).logits[0, len(prompt) - 1:-1].float() / T
        ref = torch.log_softmax(mask_top_k_top_p(z, k, p), -1).gather(1, torch.tensor(comp)[:, None])[:, 0]
        assert torch.isfinite(ref).all(), "a sampled token lies outside the reproduced nucleus"
        assert float((lp - ref).abs().max()) < TOL


def test_max_tokens_is_length_and_stop_strings(engine):
    greedy = SamplingConfig(n=1, max_tokens=16, temperature=0)
    base = engine.generate(PROMPTS, greedy)
    assert all(f == "length" for f in base.finish_reasons) and base.completion_ids.shape[1] == 16
    # a stop string that first shows up inside each greedy text: an ASCII letter/digit not seen before it
    checked = 0
    for i, text in enumerate(base.texts):
        k = next((k for k in range(1, len(text)) if text[k].isascii() and text[k].isalnum()
                  and text[k] not in text[:k]), None)
        if k is None:
            continue
        r = engine.generate([PROMPTS[i]], SamplingConfig(n=1, max_tokens=16, temperature=0, stop=(text[k],)))
        toks = r.completion_ids[0][r.completion_mask[0]].tolist()
        assert r.finish_reasons[0] == "stop" and r.texts[0] == text[:k]
        assert toks == base.completion_ids[i, :len(toks)].tolist() and len(toks) < 16
        checked += 1
    assert checked >= 2


def test_prompt_too_long_raises_and_engine_survives(engine):
    too_long = list(range(3, 3 + engine.max_model_len))  # max_model_len tokens: one too many
    with pytest.raises(ValueError, match=r"prompts\[1\]: 256 tokens.*at most 255"):
        engine.generate([PROMPTS[0], too_long], SamplingConfig(n=1, max_tokens=4))
    with pytest.raises(TypeError, match="prompts"):
        engine.generate("just a string", SamplingConfig(n=1, max_tokens=4))
    r = engine.generate([too_long[:255]], SamplingConfig(n=1, max_tokens=8, temperature=0))
    assert r.finish_reasons == ["length"] and r.lengths().tolist() == [1]  # capped by max_model_len


def test_torch_sampler_agrees_with_vllm_greedy(engine, hf):
    torch_sampler = TorchSampler(hf[0], engine.tokenizer, max_model_len=engine.max_model_len)
    cfg = SamplingConfig(n=2, max_tokens=12, temperature=0)
    a, b = engine.generate(PROMPTS, cfg), torch_sampler.generate(PROMPTS, cfg)
    assert a.prompt_ids == b.prompt_ids and a.finish_reasons == b.finish_reasons
    assert torch.equal(a.completion_ids, b.completion_ids) and torch.equal(a.completion_mask, b.completion_mask)
    assert a.texts == b.texts
    diff = float((a.sampling_logp - b.sampling_logp).abs().max())
    assert diff < TOL, f"greedy logprobs (log_softmax of raw logits) differ by {diff:.2e}"


def test_torch_sampler_logprobs_and_stops(hf, folders):
    """TorchSampler alone (no vLLM needed): logprobs after temperature, prompt-major layout, stop strings."""
    s = TorchSampler(folders[0], max_model_len=256, seed=1)
    T = 0.7
    r = s.generate(PROMPTS, SamplingConfig(n=2, max_tokens=8, temperature=T))
    assert r.group_index.tolist() == [0, 0, 1, 1, 2, 2] and r.completion_ids.shape == (6, 8)
    for prompt, comp, lp in rows(r):
        assert float((lp - hf_logp(hf[0], prompt, comp, T)).abs().max()) < TOL
    base = s.generate(PROMPTS[:1], SamplingConfig(n=1, max_tokens=16, temperature=0))
    stop = next(c for c in base.texts[0][1:] if c.isascii() and c.isalnum())
    cut = s.generate(PROMPTS[:1], SamplingConfig(n=1, max_tokens=16, temperature=0, stop=(stop,)))
    assert cut.finish_reasons == ["stop"] and cut.texts[0] == base.texts[0][:base.texts[0].index(stop)]
    assert s.check_in_sync(hf[0]) < 1e-6 and s.check_in_sync(hf[1]) > 1e-2
    stats = s.update_weights(hf[1])
    assert stats["tensors"] > 0 and s.check_in_sync(hf[1]) < 1e-6


def test_mask_top_k_top_p():
    z = torch.tensor([[0.0, 3.0, 1.0, 2.0, -1.0]])
    assert torch.isfinite(mask_top_k_top_p(z, 2, 1.0)).tolist() == [[False, True, False, True, False]]
    assert torch.isfinite(mask_top_k_top_p(z, 1, 1.0)).tolist() == [[False, True, False, False, False]]
    p = z.softmax(-1)[0]  # top-p 0.5 keeps the largest tokens until their mass reaches 0.5
    kept = torch.isfinite(mask_top_k_top_p(z, -1, 0.5))[0]
    assert kept[1] and p[kept].sum() >= 0.5 and p[kept].sum() - p[kept].min() < 0.5
    assert torch.equal(mask_top_k_top_p(z, -1, 1.0), z)


# --- weights ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["reload", "native", "copy"])
def test_update_weights_follows_new_model(engine, hf, long_prompt, path):
    if path == "copy" and not engine.plain_gemm:  # packed GEMMs must be re-processed after a load
        with pytest.raises(ValueError, match="cpu_gemm='plain'"):
            engine.update_weights(hf[1], path=path)
        assert engine.check_in_sync(hf[0]) < TOL
        return
    greedy = SamplingConfig(n=1, max_tokens=12, temperature=0)
    before = engine.generate([long_prompt, PROMPTS[0]], greedy)  # fills the prefix cache with model-0 KV
    oracle = TorchSampler(hf[1], engine.tokenizer, max_model_len=engine.max_model_len)
    want = oracle.generate([long_prompt, PROMPTS[0]], greedy)
    assert not torch.equal(before.completion_ids, want.completion_ids), "models 0 and 1 should differ"
    assert engine.check_in_sync(hf[0]) < TOL and engine.check_in_sync(hf[1]) > 1e-2

    stats = engine.update_weights(hf[1], path=path)
    assert stats["path"] == path and stats["skipped"] == ["lm_head.weight"]  # tied to the embedding
    assert stats["tensors"] == len(engine.expected) and stats["bytes"] > 0 and stats["gbps"] > 0
    after = engine.generate([long_prompt, PROMPTS[0]], greedy)
    assert torch.equal(after.completion_ids, want.completion_ids)
    assert float((after.sampling_logp - want.sampling_logp).abs().max()) < TOL
    assert engine.check_in_sync(hf[1]) < TOL and engine.check_in_sync(hf[0]) > 1e-2
    T = 0.7  # sampled logprobs follow the new model too
    for prompt, comp, lp in rows(engine.generate([long_prompt], SamplingConfig(n=2, max_tokens=6, temperature=T))):
        assert float((lp - hf_logp(hf[1], prompt, comp, T)).abs().max()) < TOL


def test_partial_update_in_small_buckets(engine, hf, folders):
    path = "copy" if engine.plain_gemm else None  # plain GEMMs: the in-place copy; else the engine's default
    from transformers import AutoModelForCausalLM
    mixed = AutoModelForCausalLM.from_pretrained(folders[0], dtype=torch.float32).eval()
    part = [(k, v) for k, v in hf[1].state_dict().items() if k.startswith("model.layers.1.")]
    mixed.load_state_dict(dict(part), strict=False)
    old = engine.bucket_bytes
    engine.bucket_bytes = 64 << 10
    try:
        stats = engine.update_weights(iter(part), path=path)  # an iterator of pairs
    finally:
        engine.bucket_bytes = old
    assert stats["tensors"] == len(part) == 12 and stats["buckets"] > 1
    assert engine.check_in_sync(mixed) < TOL
    assert engine.check_in_sync(hf[0]) > 1e-2 and engine.check_in_sync(hf[1]) > 1e-2
    # the embedding alone (tied: the lm_head's packed CPU weight must follow it)
    stats = engine.update_weights([("model.embed_tokens.weight", hf[1].model.embed_tokens.weight)], path=path)
    mixed.model.embed_tokens.weight.data.copy_(hf[1].model.embed_tokens.weight)
    assert stats["tensors"] == 1 and engine.check_in_sync(mixed) < TOL


def test_bad_weights_raise_before_loading(engine, hf):
    greedy = SamplingConfig(n=1, max_tokens=8, temperature=0)
    before = engine.generate(PROMPTS, greedy)
    good = hf[1].state_dict()
    cases = [
        ([("model.layers.0.mlp.upproj.weight", good["model.layers.0.mlp.up_proj.weight"])],
         r"unknown weight name 'model\.layers\.0\.mlp\.upproj\.weight'.*did you mean 'model\.layers\.0\.mlp\.up_proj\.weight'"),
        ([("model.norm.weight", good["model.norm.weight"]),  # a good one first: nothing may be loaded
          ("model.layers.1.self_attn.q_proj.weight", torch.zeros(3, 128))],
         r"'model\.layers\.1\.self_attn\.q_proj\.weight' has shape \(3, 128\), the model expects \(128, 128\)"),
        ([("model.norm.weight", good["model.norm.weight"])] * 2, "given twice"),
        ([("model.norm.weight", torch.ones(128, dtype=torch.int64))], "floating"),
    ]
    for pairs, msg in cases:
        with pytest.raises(ValueError, match=msg):
            engine.update_weights(pairs)
    with pytest.raises(TypeError, match="pass dict.items"):
        engine.update_weights(good)
    with pytest.raises(TypeError, match="torch.Tensor"):
        engine.update_weights([("model.norm.weight", [1.0] * 128)])
    after = engine.generate(PROMPTS, greedy)
    assert torch.equal(before.completion_ids, after.completion_ids)
    assert engine.check_in_sync(hf[0]) < TOL


def test_sleep_then_update_wakes_in_order(engine, hf):
    """On CPU vLLM has no sleep mode: the state machine still runs (and the GPU order is the same code)."""
    engine.sleep()
    assert engine.sleep_level == 1
    stats = engine.update_weights(hf[1])
    assert stats["woke"] and engine.sleep_level == 0 and engine.check_in_sync(hf[1]) < TOL
    engine.sleep()
    assert engine.generate(PROMPTS[:1], SamplingConfig(n=1, max_tokens=2)).num_sequences == 1  # wakes itself
    engine.sleep(level=2)
    with pytest.raises(ValueError, match="full set of weights"):
        engine.update_weights([("model.norm.weight", hf[0].model.norm.weight)])
    with pytest.raises(RuntimeError, match="level 2"):
        engine.generate(PROMPTS[:1], SamplingConfig(n=1, max_tokens=2))
    with pytest.raises(RuntimeError, match="reload_from_disk"):
        engine.wake()
    assert engine.update_weights(hf[0])["woke"] and engine.check_in_sync(hf[0]) < TOL
    with pytest.raises(ValueError, match="level"):
        engine.sleep(level=3)


def test_score_matches_hf(engine, hf, long_prompt):
    lp = engine.score(long_prompt)
    assert lp.shape == (len(long_prompt) - 1,)
    assert float((lp - hf_token_logprobs(hf[0], long_prompt)).abs().max()) < TOL
