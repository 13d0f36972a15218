"""glmtune serve: the real server (uvicorn on a loopback port) over the tiny random Llama, talked to with the
official ``openai`` client and raw httpx. Replies are checked against ``generate.generate`` on the same ids."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import openai
import pytest

from glmtune.cli import main
from tests.helpers import client, running

USER = [{"role": "user", "content": "这个好"}]


@pytest.fixture(scope="module")
def served(tiny_model_dir):
    from glmtune.infer.serve.registry import load_models

    return load_models([str(tiny_model_dir)], template="plain")


@pytest.fixture(scope="module")
def url(served):
    from glmtune.infer.serve.app import create_app

    with running(create_app(served)) as base:
        yield base


@pytest.fixture(scope="module")
def name(tiny_model_dir) -> str:
    return tiny_model_dir.name


def reference(served, name: str, ids: list[int], max_new_tokens: int, stop: list[str] | None = None):
    """What glmtune.infer.generate gives alone, greedy, for the same prompt ids."""
    from glmtune.infer.generate import GenerationConfig, generate

    model = served[name]
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, stop=stop or [], stop_ids=model.stop_ids)
    return generate(model.lm.model, model.lm.tokenizer, [ids], cfg)[0]


def chat_ids(served, name: str, messages=USER) -> list[int]:
    from glmtune.data.conversation import Message

    return served[name].chat_prompt([Message(m["role"], m["content"]) for m in messages], None)


# =========================================================================== the happy paths


def test_models_and_health(url, name):
    assert [m.id for m in client(url).models.list().data] == [name]
    assert client(url).models.retrieve(name).id == name
    with pytest.raises(openai.NotFoundError):
        client(url).models.retrieve("nope")
    health = httpx.get(url + "/health").json()
    assert health["status"] == "ok" and health["models"] == [name]


def test_chat_matches_generate_with_usage(url, served, name):
    reply = client(url).chat.completions.create(model=name, messages=USER, max_tokens=7, temperature=0)
    ids = chat_ids(served, name)
    expected = reference(served, name, ids, 7)
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == expected.text
    assert choice.finish_reason == expected.finish_reason == "length"
    assert reply.usage.prompt_tokens == len(ids)
    assert reply.usage.completion_tokens == len(expected.token_ids) == 7
    assert reply.usage.total_tokens == len(ids) + 7


def test_completions_match_generate(url, served, name):
    tokenizer = served[name].lm.tokenizer
    prompts = ["这个", "质量很差非常"]
    reply = client(url).completions.create(model=name, prompt=prompts, max_tokens=6, temperature=0)
    assert [c.index for c in reply.choices] == [0, 1]
    for prompt, choice in zip(prompts, reply.choices):
        expected = reference(served, name, tokenizer(prompt)["input_ids"], 6)
        assert choice.text == expected.text and choice.finish_reason == "length"
    assert reply.usage.completion_tokens == 12


def test_streaming_joins_to_the_same_reply(url, name):
    api = client(url)
    whole = api.completions.create(model=name, prompt="质量很", max_tokens=9, temperature=0)
    chunks = list(
        api.completions.create(
            model=name,
            prompt="质量很",
            max_tokens=9,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == whole.choices[0].text
    assert len([c for c in chunks if c.choices and c.choices[0].text]) > 1, (
        "pieces arrive as they are generated"
    )
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 9

    stream = api.chat.completions.create(model=name, messages=USER, max_tokens=5, stream=True)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "length"
    joined = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert (
        joined
        == api.chat.completions.create(model=name, messages=USER, max_tokens=5).choices[0].message.content
    )


def test_stop_string_ends_the_reply(url, served, name):
    tokenizer = served[name].lm.tokenizer
    full = reference(served, name, tokenizer("这个")["input_ids"], 10).text
    stop = full[3:5]  # a stop string from the middle of the greedy reply
    api = client(url)
    reply = api.completions.create(model=name, prompt="这个", max_tokens=10, temperature=0, stop=[stop])
    assert reply.choices[0].text == full[: full.index(stop)]
    assert reply.choices[0].finish_reason == "stop"
    streamed = api.completions.create(
        model=name, prompt="这个", max_tokens=10, temperature=0, stop=stop, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == full[: full.index(stop)]


def test_seed_makes_sampling_repeatable(url, name):
    api = client(url)

    def sample(seed: int) -> str:
        reply = api.completions.create(model=name, prompt="这个", max_tokens=16, temperature=1.0, seed=seed)
        return reply.choices[0].text

    assert sample(3) == sample(3)
    assert len({sample(3), sample(4), sample(5)}) > 1
    greedy = api.completions.create(model=name, prompt="这个", max_tokens=16, temperature=0).choices[0].text
    assert sample(3) != greedy


class Reader:
    """A ``serve.rows.Row`` that keeps what it is sent; ``cancel_after`` tokens' worth of text, it leaves."""

    def __init__(self, request, cancel_after: int | None = None):
        self.request, self.wants_text, self.cancel_after = request, True, cancel_after
        self.pieces, self.result, self.error = [], None, None

    def emit_text(self, text):
        self.pieces.append(text)

    def emit_done(self, result):
        self.result = result

    def emit_error(self, error):
        self.error = error

    def is_cancelled(self):
        return self.cancel_after is not None and len(self.pieces) >= self.cancel_after


def test_rows_of_one_batch_each_get_what_they_would_alone(served, name):
    """serve.rows against generate.generate: per-row max_tokens, stop ids, seeds and cancellation in one batch."""
    from glmtune.infer.generate import GenerationConfig, generate
    from glmtune.infer.serve.batch import RowRequest, generate_rows

    model = served[name]
    tok, stop_ids = model.lm.tokenizer, model.stop_ids
    ids = [tok(text)["input_ids"] for text in ("这个", "质量很差非常", "a", "物流")]
    sampled = Reader(RowRequest(ids[3], 12, temperature=1.0, seed=7))
    generate_rows(model.lm.model, tok, [sampled], stop_ids, model.pad_id)  # alone
    stop_id = sampled.result.token_ids[4]  # a token the seeded row draws: as a stop id it ends the row there
    stop_ids = [*stop_ids, stop_id]
    readers = [
        Reader(RowRequest(ids[0], 3)),
        Reader(RowRequest(ids[1], 9)),
        Reader(RowRequest(ids[2], 12), cancel_after=2),
        Reader(RowRequest(ids[3], 12, temperature=1.0, seed=7)),
    ]
    generate_rows(model.lm.model, tok, readers, stop_ids, model.pad_id)
    for reader, prompt, length in zip(readers[:2], ids, (3, 9)):
        alone = generate(
            model.lm.model, tok, [prompt], GenerationConfig(max_new_tokens=length, stop_ids=stop_ids)
        )
        assert reader.result.token_ids == alone[0].token_ids and reader.result.text == alone[0].text
        assert "".join(reader.pieces) == reader.result.text
    assert readers[2].result is None and readers[2].error is None, "a cancelled row gets nothing more"
    first_stop = sampled.result.token_ids.index(stop_id)
    assert readers[3].result.token_ids == sampled.result.token_ids[: first_stop + 1]
    assert readers[3].result.finish_reason == "stop"


# =========================================================================== errors through the openai client


@pytest.mark.parametrize(
    "change, error, param",
    [
        ({"model": "nope"}, openai.NotFoundError, "model"),
        ({"max_tokens": 5000}, openai.BadRequestError, "max_tokens"),
        ({"max_tokens": 255}, openai.BadRequestError, "messages"),  # 5 prompt tokens + 255 > 256
        ({"n": 2}, openai.BadRequestError, "n"),
        ({"temperature": 3}, openai.BadRequestError, "temperature"),
        ({"presence_penalty": 0.5}, openai.BadRequestError, None),
        ({"messages": [{"role": "assistant", "content": "hi"}]}, openai.BadRequestError, "messages"),
        ({"messages": USER * 200}, openai.BadRequestError, "messages"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, openai.BadRequestError, "tools"),
    ],
)
def test_bad_requests_are_openai_errors(url, name, change, error, param):
    request = {"model": name, "messages": USER, "max_tokens": 4, **change}
    with pytest.raises(error) as caught:
        client(url).chat.completions.create(**request)
    body = caught.value.body
    assert set(body) == {"message", "type", "param", "code"} and body["message"]
    assert body["param"] == param


def test_classify_on_a_generation_model_is_refused(url, name):
    answer = httpx.post(url + "/v1/classify", json={"model": name, "input": "好"})
    assert answer.status_code == 400 and "/v1/chat/completions" in answer.json()["error"]["message"]


# =========================================================================== raw HTTP


@pytest.mark.parametrize(
    "content, status, param",
    [
        (b"{not json", 400, None),
        (json.dumps({"messages": USER, "max_tokens": "5"}).encode(), 400, "max_tokens"),
        (json.dumps({"messages": "hello"}).encode(), 400, "messages"),
        (json.dumps({"messages": [{"role": "robot", "content": "x"}]}).encode(), 400, "messages.0.role"),
        (json.dumps({"max_tokens": 3}).encode(), 400, "messages"),
        (json.dumps({"messages": USER, "tempreature": 0.5}).encode(), 400, "tempreature"),
        (json.dumps([1, 2]).encode(), 400, None),
        (b"x" * (1 << 21), 413, None),
    ],
)
def test_malformed_requests(url, content, status, param):
    answer = httpx.post(
        url + "/v1/chat/completions", content=content, headers={"content-type": "application/json"}
    )
    assert answer.status_code == status
    error = answer.json()["error"]
    assert error["message"] and error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param


def test_chunked_oversized_body_is_413(url):
    def pieces():
        for _ in range(40):
            yield b"x" * 65536

    answer = httpx.post(
        url + "/v1/completions", content=pieces(), headers={"content-type": "application/json"}
    )
    assert answer.status_code == 413 and answer.json()["error"]["code"] == "request_too_large"


def test_unknown_routes_and_methods(url):
    assert httpx.get(url + "/v1/nothing").json()["error"]["code"] == "not_found"
    answer = httpx.get(url + "/v1/chat/completions")
    assert answer.status_code == 405 and "error" in answer.json()


# =========================================================================== API key, queue, timeout, disconnects


def test_api_key(served, name):
    from glmtune.infer.serve.app import create_app

    with running(create_app(served, api_key="s3cret")) as base:
        with pytest.raises(openai.AuthenticationError) as caught:
            client(base, "wrong").models.list()
        assert caught.value.status_code == 401 and caught.value.body["code"] == "invalid_api_key"
        missing = httpx.post(base + "/v1/chat/completions", content=b"{broken")  # the key is checked first
        assert missing.status_code == 401 and "Missing API key" in missing.json()["error"]["message"]
        assert httpx.get(base + "/health").status_code == 200  # probes need no key
        reply = client(base, "s3cret").completions.create(model=name, prompt="a", max_tokens=2)
        assert reply.usage.completion_tokens == 2


class Gate:
    """Holds the worker at the start of every batch until opened (the model work itself is real)."""

    def __init__(self, model):
        self.model, self.real = model, model.run_generation
        self.open, self.entered = threading.Event(), threading.Event()

    def __call__(self, jobs):
        self.entered.set()
        self.open.wait(30)
        self.real(jobs)


@pytest.fixture
def gated(served, name):
    from glmtune.infer.serve.app import Limits

    gate = Gate(served[name])
    served[name].run_generation = gate
    limits = Limits(max_queue=1, max_batch_size=1, batch_wait_s=0, timeout_s=1.5)
    yield gate, limits
    gate.open.set()
    del served[name].run_generation


def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def test_waiting_requests_share_one_batch_and_get_their_own_replies(served, name):
    from glmtune.infer.serve.app import Limits, create_app

    tokenizer = served[name].lm.tokenizer
    prompts = ["这个", "质量很差非常", "a", "物流真快", "12345", "服务"]
    lengths = [3, 8, 5, 12, 4, 6]
    gate = Gate(served[name])
    served[name].run_generation = gate
    try:
        with running(create_app(served, Limits(batch_wait_s=0))) as base:
            results: dict[int, openai.types.Completion] = {}

            def ask(i: int) -> None:
                results[i] = client(base).completions.create(
                    model=name, prompt=prompts[i], max_tokens=lengths[i], temperature=0
                )

            threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
            threads[0].start()
            gate.entered.wait(10)  # the worker holds the first request; the other five queue up meanwhile
            for thread in threads[1:]:
                thread.start()
            wait_for(lambda: httpx.get(base + "/health").json()["queue"]["waiting"] == 5)
            gate.open.set()
            for thread in threads:
                thread.join()
            stats = httpx.get(base + "/health").json()["stats"]
            assert (stats["batches"], stats["largest_batch"]) == (2, 5), (
                "the five waiting ones went as one batch"
            )
    finally:
        gate.open.set()
        del served[name].run_generation
    for i, prompt in enumerate(prompts):
        expected = reference(served, name, tokenizer(prompt)["input_ids"], lengths[i])
        assert results[i].choices[0].text == expected.text, prompt
        assert results[i].usage.completion_tokens == lengths[i]


def test_full_queue_is_429_and_both_queued_requests_finish(gated, served, name):
    from glmtune.infer.serve.app import create_app

    gate, limits = gated
    with running(create_app(served, limits)) as base:
        answers: dict[str, httpx.Response] = {}

        def ask(key: str) -> None:
            body = {"model": name, "prompt": "a", "max_tokens": 3}
            answers[key] = httpx.post(base + "/v1/completions", json=body, timeout=30)

        first = threading.Thread(target=ask, args=("first",))
        first.start()
        gate.entered.wait(10)  # the worker holds the first request
        second = threading.Thread(target=ask, args=("second",))
        second.start()
        wait_for(lambda: httpx.get(base + "/health").json()["queue"]["waiting"] == 1)
        ask("third")
        assert answers["third"].status_code == 429
        assert answers["third"].json()["error"]["type"] == "rate_limit_error"
        gate.open.set()
        first.join()
        second.join()
        assert answers["first"].status_code == answers["second"].status_code == 200


@pytest.fixture
def held(gated, served, name):
    """A server (queue 1, timeout 1.5 s) whose worker holds one request until ``release()``."""
    from glmtune.infer.serve.app import create_app

    gate, limits = gated
    with running(create_app(served, limits)) as base:
        body = {"model": name, "prompt": "a", "max_tokens": 3}
        holder = threading.Thread(target=httpx.post, args=(base + "/v1/completions",), kwargs={"json": body})
        holder.start()
        gate.entered.wait(10)

        def release() -> None:
            gate.open.set()
            holder.join()

        yield base, body, release
        release()


def test_timeout_is_408_and_a_gone_client_is_cancelled(held):
    base, body, release = held
    started = time.monotonic()
    answer = httpx.post(base + "/v1/completions", json=body, timeout=30)  # waits in the queue past 1.5 s
    assert answer.status_code == 408 and answer.json()["error"]["code"] == "timeout"
    assert time.monotonic() - started < 5
    with pytest.raises(httpx.ReadTimeout):  # a client that gives up
        httpx.post(base + "/v1/completions", json=body, timeout=0.3)
    release()
    wait_for(lambda: httpx.get(base + "/health").json()["stats"]["cancelled"] >= 2)


def test_a_queued_stream_whose_client_leaves_is_dropped(held, name):
    base, _, release = held
    chat = {"model": name, "messages": USER, "max_tokens": 3, "stream": True}
    with httpx.stream("POST", base + "/v1/chat/completions", json=chat) as answer:
        assert next(answer.iter_lines()).startswith("data: ")  # the role chunk comes while it waits
    wait_for(lambda: httpx.get(base + "/health").json()["queue"]["waiting"] == 1)
    release()

    def counts() -> tuple[int, int]:
        stats = httpx.get(base + "/health").json()["stats"]
        return stats["completed"], stats["cancelled"]

    wait_for(lambda: counts() == (1, 1))  # the held request done; the left stream dropped, never run
    time.sleep(0.2)
    assert counts() == (1, 1)


def test_stream_disconnect_cancels_generation(served, name):
    from glmtune.infer.serve.app import create_app

    with running(create_app(served)) as base:
        body = {"model": name, "prompt": "a", "max_tokens": 240, "stream": True, "temperature": 0}
        with httpx.stream("POST", base + "/v1/completions", json=body) as answer:
            lines = answer.iter_lines()
            assert next(line for line in lines if line.startswith("data: "))  # a first piece arrived
        # The reader left after one piece: the row ends at the next step instead of 240 tokens later.
        wait_for(lambda: httpx.get(base + "/health").json()["stats"]["cancelled"] == 1)


# =========================================================================== the command line


def test_port_in_use_is_one_line_exit_2(tiny_model_dir, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit) as caught:
            main(["serve", str(tiny_model_dir), "--template", "plain", "--port", str(port)])
    assert caught.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"127.0.0.1:{port}" in err and "--port" in err


def test_bad_limits_are_one_line_exit_2(tiny_model_dir, capsys):
    with pytest.raises(SystemExit) as caught:
        main(["serve", str(tiny_model_dir), "--max-queue", "0"])
    assert caught.value.code == 2
    assert "--max-queue" in capsys.readouterr().err


def test_incompatible_run_folder_is_one_line_exit_2(tmp_path, capsys):
    run = tmp_path / "old-run"
    run.mkdir()
    (run / "glmtune.json").write_text(json.dumps({"format": 0, "glmtune": "0.0.1"}))
    (run / "config.yaml").write_text("task: sft\n")
    with pytest.raises(SystemExit) as caught:
        main(["serve", str(run), "--port", "0"])
    assert caught.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "format 0" in err and "old-run" in err
