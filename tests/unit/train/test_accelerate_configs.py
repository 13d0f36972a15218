"""examples/accelerate/*.yaml load through accelerate's own config classes; the FSDP ones name a layer class the
model has; the DeepSpeed ones give DeepSpeed a config of known keys (deepspeed itself is not installed here:
benchmarks/gpu_check.sh runs them on GPUs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import REPO

CONFIGS = sorted((REPO / "examples" / "accelerate").glob("*.yaml"))
# DeepSpeed's documented config keys (deepspeed.ai/docs/config-json) that accelerate's plugin may write.
DS_TOP = {"train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
          "zero_optimization", "gradient_clipping", "steps_per_print", "bf16", "fp16"}  # fmt: skip
DS_ZERO = {"stage", "offload_optimizer", "offload_param", "stage3_gather_16bit_weights_on_model_save"}


def is_launch_option(key: str) -> bool:
    """Whether ``accelerate launch`` takes ``--key`` (a config file's key is one of its options)."""
    from accelerate.commands.launch import launch_command_parser

    _, unknown = launch_command_parser().parse_known_args([f"--{key}", "1", "train.py"])
    return f"--{key}" not in unknown


def test_every_config_loads_and_every_key_is_accelerates():
    from accelerate.commands.config.config_args import load_config_from_file

    assert len(CONFIGS) == 7
    for path in CONFIGS:
        cfg = load_config_from_file(str(path))  # unknown top-level keys raise here
        assert cfg.compute_environment.value == "LOCAL_MACHINE", path.name
        for key in {**(cfg.fsdp_config or {}), **(cfg.deepspeed_config or {})}:
            assert is_launch_option(key), (path.name, key)


@pytest.mark.parametrize("name", ["fsdp.yaml", "two-node-fsdp.yaml"])
def test_fsdp_configs_wrap_the_chatglm3_blocks(name):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import FullyShardedDataParallelPlugin

    from tests.tiny import tiny_chatglm3

    fsdp = load_config_from_file(str(REPO / "examples" / "accelerate" / name)).fsdp_config
    assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_state_dict_type"] == "SHARDED_STATE_DICT"
    plugin = FullyShardedDataParallelPlugin(
        fsdp_version=2,
        auto_wrap_policy=fsdp["fsdp_auto_wrap_policy"].lower(),
        transformer_cls_names_to_wrap=fsdp["fsdp_transformer_layer_cls_to_wrap"].split(","),
        reshard_after_forward=fsdp["fsdp_reshard_after_forward"],
        state_dict_type=fsdp["fsdp_state_dict_type"],
        cpu_ram_efficient_loading=fsdp["fsdp_cpu_ram_efficient_loading"],
    )
    model = tiny_chatglm3()
    plugin.set_auto_wrap_policy(model)  # raises when the model has no such layer class
    blocks = [m for m in model.modules() if type(m).__name__ == "ChatGLM3Block"]
    assert blocks and all(plugin.auto_wrap_policy(m, False, 0) for m in blocks)
    assert not plugin.auto_wrap_policy(model.transformer.embedding, False, 0)


@pytest.mark.parametrize("stage,offload", [(2, False), (2, True), (3, False), (3, True)])
def test_deepspeed_configs_give_deepspeed_known_keys(stage, offload):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DeepSpeedPlugin

    path = REPO / "examples" / "accelerate" / f"deepspeed-zero{stage}{'-offload' if offload else ''}.yaml"
    ds = load_config_from_file(str(path)).deepspeed_config
    plugin = DeepSpeedPlugin(**ds)  # the JSON accelerate hands DeepSpeed, built as `accelerate launch` does
    config = plugin.deepspeed_config
    assert set(config) <= DS_TOP and set(config["zero_optimization"]) <= DS_ZERO
    zero = config["zero_optimization"]
    assert zero["stage"] == stage
    assert zero["offload_optimizer"]["device"] == ("cpu" if offload else "none")
    if stage == 3:
        assert zero["offload_param"]["device"] == ("cpu" if offload else "none")


def test_configs_are_listed_in_the_scale_out_doc():
    doc = (REPO / "docs" / "scale-out.md").read_text(encoding="utf-8")
    for path in CONFIGS:
        assert f"examples/accelerate/{path.name}" in doc, path.name
    assert Path(REPO / "benchmarks" / "gpu_check.sh").is_file()
