"""Config: presets, files, key=value overrides, validation messages that name the key."""
import json

import pytest

from grpo.config import PRESETS, ConfigError, dump_yaml, parse_override, resolve_config
from grpo.ops import LossConfig


def test_presets_resolve_and_validate():
    for name in PRESETS.names():
        cfg = resolve_config(name)
        assert cfg.preset == name
        assert isinstance(cfg.loss, LossConfig)
    assert {"default", "tiny", "qwen2.5-0.5b", "qwen2.5-1.5b"} <= set(PRESETS.names())


def test_overrides_nested_and_typed():
    cfg = resolve_config("tiny", overrides=["train.steps=7", "loss.beta=0.04", "loss.is_mode=token_truncate",
                                            "sampling.stop=['</answer>']", "model.gradient_checkpointing=true",
                                            "train.chunk_tokens=none"])
    assert cfg.train.steps == 7 and cfg.loss.beta == 0.04 and cfg.loss.is_mode == "token_truncate"
    assert cfg.sampling.stop == ["</answer>"] and cfg.model.gradient_checkpointing is True
    assert cfg.train.chunk_tokens is None
    assert parse_override("a.b.c=1") == {"a": {"b": {"c": 1}}}


def test_files_then_overrides(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("preset: tiny\ntrain:\n  steps: 5\n  prompts_per_step: 2\n")
    j = tmp_path / "c.json"
    j.write_text(json.dumps({"train": {"steps": 6}}))
    cfg = resolve_config(files=[y, j], overrides=["train.prompts_per_step=3"])
    assert cfg.preset == "tiny" and cfg.train.steps == 6 and cfg.train.prompts_per_step == 3
    # the dumped config resolves back to the same config
    z = tmp_path / "dump.yaml"
    z.write_text(dump_yaml(cfg))
    assert resolve_config(files=[z]) == cfg


@pytest.mark.parametrize("override,needle", [
    ("train.stepz=3", "train.stepz: unknown key"),
    ("train.steps=abc", "train.steps: expected int"),
    ("train.steps=0", "train.steps"),
    ("loss.eps_low=-1", "eps_low"),
    ("loss.kl=k9", "kl"),
    ("optim.schedule=wavy", "optim.schedule"),
    ("sampling.temperature=0", "sampling.temperature"),
    ("sampler.max_model_len=64", "sampler.max_model_len"),
    ("rewards.functions=[]", "rewards.functions"),
    ("rewards.on_error=ignore", "rewards.on_error"),
    ("train.advantage_scale=wide", "advantage_scale"),
    ("loss.temperature=0.5", "loss.temperature"),
    ("sampler.block_size=20", "sampler.block_size"),
    ("train.fused_schedule=rows", "train.fused_schedule"),
    ("nonsense", "key=value"),
    ("train=3", "train: expected a mapping"),
])
def test_bad_values_name_the_key(override, needle):
    with pytest.raises(ConfigError, match=None) as e:
        resolve_config("tiny", overrides=[override])
    assert needle in str(e.value), str(e.value)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        resolve_config(files=[tmp_path / "missing.yaml"])
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        resolve_config(files=[bad])
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        resolve_config(files=[lst])
    with pytest.raises(ValueError, match="unknown preset"):
        resolve_config("nope")


def test_help_lists_every_option_with_its_default(capsys):
    from grpo.cli import main
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for line in ("loss.beta = 0.0", "train.steps = 20", "sampling.group_size = 8", "rewards.on_error = 'raise'",
                 "--resume", "--profile"):
        assert line in out, line
