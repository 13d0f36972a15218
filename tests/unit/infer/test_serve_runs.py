"""glmtune serve over run folders: two LoRA runs sharing one base (chosen by ``model``), a classification run
(``/v1/classify``), ChatGLM3 tools, and the real CLI process shutting down gracefully on SIGTERM."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest
import yaml

from glmtune.cli import main
from tests.helpers import WEATHER, chat_rows, client, running, sft_config, tiny_config, write_jsonl


def _train(tmp_path_factory, name: str, cfg: dict):
    from glmtune.train import reset_process_state

    folder = tmp_path_factory.mktemp(name + "-cfg")
    path = folder / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    out = folder.parent / name
    reset_process_state()
    try:
        main(["train", str(path), "--output", str(out)])
    finally:
        reset_process_state()
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir):
    """Two LoRA sft runs over the tiny Llama (different seeds and learning rates) and a classification run."""
    from tests.helpers import NEGATIVE, POSITIVE, review

    data = tmp_path_factory.mktemp("data")
    chat = write_jsonl(data / "chat.jsonl", chat_rows())
    rng = random.Random(0)
    rows = [{"text": review(rng, i % 2 == 0), "label": "pos" if i % 2 == 0 else "neg"} for i in range(96)]
    reviews = write_jsonl(data / "reviews.jsonl", rows)
    assert POSITIVE and NEGATIVE
    out = {}
    for name, seed, lr in (("run-a", 1, 5e-2), ("run-b", 2, 2e-2)):
        cfg = sft_config(tiny_model_dir, {"train_file": str(chat)}, train={"seed": seed, "lr": lr})
        out[name] = _train(tmp_path_factory, name, cfg)
    out["sentiment"] = _train(tmp_path_factory, "sentiment", tiny_config(tiny_model_dir, reviews))
    return out


@pytest.fixture(scope="module")
def served(runs):
    from glmtune.infer.serve.registry import load_models

    return load_models([str(runs["run-a"]), str(runs["run-b"]), str(runs["sentiment"])])


def alone(run, prompt: str, max_new_tokens: int) -> str:
    """The run's greedy reply when loaded on its own (replies.load_run + generate.generate)."""
    from glmtune.infer.generate import GenerationConfig, generate
    from glmtune.infer.lm import load_run

    loaded = load_run(run)
    ids = loaded.tokenizer(prompt)["input_ids"]
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, stop_ids=loaded.format.stop_ids())
    return generate(loaded.model, loaded.tokenizer, [ids], cfg)[0].text


def test_lora_runs_share_one_base_and_are_chosen_by_model(runs, served):
    a, b = served["run-a"], served["run-b"]
    assert a.lm.model is b.lm.model, "one copy of the base model"
    assert {a.adapter, b.adapter} == {"default", "adapter1"}
    prompts = ["这个好", "这个差", "质量"]
    expected = {(name, p): alone(runs[name], p, 6) for name in ("run-a", "run-b") for p in prompts}
    assert any(expected["run-a", p] != expected["run-b", p] for p in prompts), "the adapters differ"
    from glmtune.infer.serve.app import create_app

    with running(create_app(served)) as url:
        got: dict = {}

        def ask(name: str, prompt: str) -> None:  # interleaved: batches alternate between the adapters
            reply = client(url).completions.create(model=name, prompt=prompt, max_tokens=6, temperature=0)
            got[name, prompt] = reply.choices[0].text

        threads = [threading.Thread(target=ask, args=key) for key in expected]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert got == expected
        cards = {m.id: m.glmtune for m in client(url).models.list().data}
        assert cards["sentiment"] == {"task": "classification", "labels": ["neg", "pos"]}
        assert cards["run-a"]["task"] == "sft"


def test_classify_endpoint(runs, served):
    from glmtune.infer.classifier import load_run, predict_texts
    from glmtune.infer.serve.app import create_app

    texts = ["这个东西质量很好", "物流太慢，失望", "还行"]
    probs = predict_texts(load_run(runs["sentiment"]), texts)
    with running(create_app(served)) as url:
        answer = httpx.post(url + "/v1/classify", json={"model": "sentiment", "input": texts}).json()
        assert answer["model"] == "sentiment" and [row["index"] for row in answer["data"]] == [0, 1, 2]
        for row, expected in zip(answer["data"], probs):
            assert row["probs"]["neg"] == pytest.approx(float(expected[0]), abs=1e-5)
            assert row["probs"]["pos"] == pytest.approx(float(expected[1]), abs=1e-5)
            assert row["label"] == ["neg", "pos"][int(expected.argmax())]
        one = httpx.post(url + "/v1/classify", json={"input": texts[0]}).json()  # default: the classifier
        assert one["data"][0]["label"] == answer["data"][0]["label"]
        wrong = httpx.post(url + "/v1/chat/completions", json={"model": "sentiment", "messages": [
            {"role": "user", "content": "hi"}]})  # fmt: skip
        assert wrong.status_code == 400 and "/v1/classify" in wrong.json()["error"]["message"]
        for empty in ([], [""], " "):
            answer = httpx.post(url + "/v1/classify", json={"model": "sentiment", "input": empty})
            assert answer.status_code == 400 and answer.json()["error"]["param"] == "input"


# =========================================================================== ChatGLM3: tools


@pytest.fixture(scope="module")
def chatglm3(chatglm3_dir):  # the tiny random ChatGLM3; skips without ../shared/chatglm3
    from glmtune.infer.serve.registry import load_models

    return load_models([str(chatglm3_dir)])


def test_chatglm3_tools_render_into_the_prompt_and_calls_come_back_as_tool_calls(chatglm3):
    from glmtune.infer.generate import Generated
    from glmtune.infer.serve.app import _reply_message, create_app

    (model,) = chatglm3.values()
    assert model.supports_tools and model.lm.format.name == "chatglm3"
    call = "get_weather\n```python\ntool_call(city='北京')\n```"
    message, reason = _reply_message(model, Generated(call, [], "stop"), use_tools=True)
    assert reason == "tool_calls" and message.content is None
    assert message.tool_calls[0].function == {"name": "get_weather", "arguments": '{"city": "北京"}'}
    message, reason = _reply_message(model, Generated("\n今天晴。", [], "stop"), use_tools=True)
    assert (message.content, reason) == ("今天晴。", "stop")

    history = [
        {"role": "system", "content": "你是一个助手。"},
        {"role": "user", "content": "北京天气怎么样？"},
    ]
    earlier_call = {"id": "call_1", "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "北京"}'}}  # fmt: skip
    with running(create_app(chatglm3)) as url:
        api = client(url)
        plain = api.chat.completions.create(model=model.name, messages=history, max_tokens=4)
        streamed = api.chat.completions.create(model=model.name, messages=history, max_tokens=4, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in streamed) == plain.choices[0].message.content
        tooled = api.chat.completions.create(
            model=model.name, messages=history, tools=[WEATHER], max_tokens=4
        )
        assert tooled.usage.prompt_tokens > plain.usage.prompt_tokens + 10, "the tool schema is in the prompt"
        assert tooled.choices[0].finish_reason in ("stop", "length", "tool_calls")
        after_call = history + [
            {"role": "assistant", "content": None, "tool_calls": [earlier_call]},
            {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 20}'},
        ]
        reply = api.chat.completions.create(
            model=model.name, messages=after_call, tools=[WEATHER], max_tokens=3
        )
        assert reply.usage.completion_tokens >= 1
        chunks = list(api.chat.completions.create(
            model=model.name, messages=history, tools=[WEATHER], max_tokens=4, stream=True))  # fmt: skip
        assert chunks[-1].choices[0].finish_reason in ("stop", "length", "tool_calls")
        undeclared = [*history[:1], {"role": "assistant", "content": None, "tool_calls": [earlier_call]},
                      {"role": "user", "content": "?"}]  # fmt: skip
        answer = httpx.post(url + "/v1/chat/completions", json={"model": model.name, "messages": undeclared})
        assert answer.status_code == 400 and "get_weather" in answer.json()["error"]["message"]


# =========================================================================== the real process: SIGTERM


def test_sigterm_finishes_the_request_in_flight(tiny_model_dir, tmp_path):
    """The real CLI process: the API key from the environment, and SIGTERM in the middle of a streamed reply."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "GLMTUNE_API_KEY": "k3y"}
    command = [
        sys.executable,
        "-m",
        "glmtune.cli",
        "serve",
        str(tiny_model_dir),
        "--template",
        "plain",
        "--port",
        "0",
    ]
    log = (tmp_path / "server.log").open("w")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
    try:
        line = process.stdout.readline()
        assert line.startswith("glmtune: serving"), line + (tmp_path / "server.log").read_text()
        assert "(API key required)" in line
        url = line.split(" on ")[1].split()[0]
        assert httpx.get(url + "/v1/models").status_code == 401
        body = {"model": tiny_model_dir.name, "prompt": "a", "max_tokens": 200, "temperature": 0, "stream": True,
                "stream_options": {"include_usage": True}}  # fmt: skip
        events = []
        key = {"Authorization": "Bearer k3y"}
        with httpx.stream("POST", url + "/v1/completions", json=body, headers=key, timeout=60) as answer:
            for line in answer.iter_lines():
                if not line.startswith("data: "):
                    continue
                if not events:
                    process.send_signal(signal.SIGTERM)  # mid-reply
                    time.sleep(0.2)
                events.append(line.removeprefix("data: "))
        assert events[-1] == "[DONE]"
        usage = json.loads(events[-2])["usage"]
        assert usage["completion_tokens"] == 200, "the reply in flight was finished, not cut"
        assert process.wait(timeout=30) == 0
        with pytest.raises(httpx.ConnectError):
            httpx.get(url + "/health")
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        log.close()
