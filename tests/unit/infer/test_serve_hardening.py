"""glmtune serve against hostile or unlucky requests (issue 20, findings 1, 3 and 8): a poisoned request is a 400
naming its field and never fails the requests batched with it; anything that still fails inside a batch fails its
own row only; any ``Authorization`` value is a 401 or a pass, never a 500; ``Host`` names are checked (DNS
rebinding); ``/openapi.json`` needs the key; access logs carry no query strings."""

from __future__ import annotations

import json
import logging
import math
import threading
import time

import httpx
import pytest

from glmtune.cli import main
from tests.helpers import running

USER = [{"role": "user", "content": "这个好"}]


@pytest.fixture(scope="module")
def served(tiny_model_dir):
    from glmtune.infer.serve.registry import load_models

    return load_models([str(tiny_model_dir)], template="plain")


@pytest.fixture(scope="module")
def name(tiny_model_dir) -> str:
    return tiny_model_dir.name


@pytest.fixture(scope="module")
def keyed(served):
    """A server that wants the key ``s3cret``."""
    from glmtune.infer.serve.app import create_app

    with running(create_app(served, api_key="s3cret")) as base:
        yield base


def post(url: str, body: dict, **headers: str) -> httpx.Response:
    """``body`` as JSON with ASCII escapes (a lone surrogate travels as ``\\ud800``, as a client would send it)."""
    headers = {"content-type": "application/json", **headers}
    return httpx.post(url, content=json.dumps(body), headers=headers, timeout=60)


# =========================================================================== finding 1: poison in a batch

POISONS = [  # (endpoint, change to a good request, the field the 400 names)
    ("completions", {"temperature": 1e-300}, "temperature"),  # NaN probabilities in the sampler
    ("completions", {"temperature": 1e-40}, "temperature"),
    (
        "completions",
        {"temperature": math.nan},
        "temperature",
    ),  # json.dumps writes NaN; Python's json reads it
    ("completions", {"top_p": math.inf}, "top_p"),
    ("completions", {"seed": 2**70, "temperature": 1.0}, "seed"),  # overflowed building the row's generator
    ("completions", {"seed": -(2**63) - 1, "temperature": 1.0}, "seed"),
    ("completions", {"prompt": "a\ud800b"}, "prompt"),  # a lone surrogate: the tokenizer raised
    ("completions", {"prompt": ["好", "a\udc00"]}, "prompt"),
    ("completions", {"stop": ["\ud800"]}, "stop"),
    ("completions", {"model": "\ud800"}, "model"),
    ("chat/completions", {"messages": [{"role": "user", "content": "a\ud800b"}]}, "messages.0.content"),
    (
        "chat/completions",
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "\udfff"}]}]},
        "messages.0.content.0.text",
    ),  # fmt: skip
    ("chat/completions", {"user": "\ud800"}, "user"),
    ("chat/completions", {"\ud800": 1}, None),  # a field name pydantic cannot read
]


def test_poisoned_requests_are_400_and_the_requests_batched_with_them_finish(served, name):
    """Good requests and every poison at once, with a batch window wide enough to share one batch: before the edge
    checks, the poisons reached the batch and every request in it got a 500."""
    from glmtune.infer.serve.app import Limits, create_app

    good = {
        "greedy": ("completions", {"prompt": "这个", "max_tokens": 5, "temperature": 0}),
        "seeded": ("completions", {"prompt": "物流", "max_tokens": 5, "temperature": 1.0, "seed": 7}),
        "chat": ("chat/completions", {"messages": USER, "max_tokens": 4, "temperature": 0}),
    }
    alone: dict[str, str] = {}
    with running(create_app(served, Limits(batch_wait_s=0))) as base:
        for key, (endpoint, body) in good.items():
            answer = post(f"{base}/v1/{endpoint}", {"model": name, **body}).json()
            alone[key] = answer["choices"][0].get("text") or answer["choices"][0]["message"]["content"]

    answers: dict[object, httpx.Response] = {}
    limits = Limits(batch_wait_s=1.0, max_batch_size=len(good) + len(POISONS))
    with running(create_app(served, limits)) as base:

        def ask(key: object, endpoint: str, body: dict) -> None:
            answers[key] = post(f"{base}/v1/{endpoint}", body)

        threads = [
            threading.Thread(target=ask, args=(key, endpoint, {"model": name, **body}))
            for key, (endpoint, body) in good.items()
        ]
        for number, (endpoint, change, _) in enumerate(POISONS):
            base_body = good["seeded" if endpoint == "completions" else "chat"][1]
            threads.append(
                threading.Thread(target=ask, args=(number, endpoint, {"model": name, **base_body, **change}))
            )
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        stats = httpx.get(base + "/health").json()["stats"]
    for number, (_, change, param) in enumerate(POISONS):
        answer = answers[number]
        assert answer.status_code == 400, (change, answer.text)
        error = answer.json()["error"]
        assert error["type"] == "invalid_request_error" and error["param"] == param, (change, error)
    for key in good:
        answer = answers[key]
        assert answer.status_code == 200, (key, answer.text)
        choice = answer.json()["choices"][0]
        assert (choice.get("text") or choice["message"]["content"]) == alone[key], key
    assert stats["completed"] == len(good)


def test_the_temperature_message_says_what_is_usable(served, name):
    from glmtune.infer.serve.app import create_app

    with running(create_app(served)) as base:
        error = post(base + "/v1/completions", {"model": name, "prompt": "a", "temperature": 1e-9}).json()[
            "error"
        ]
        assert (
            error["message"] == "temperature: 0 (greedy) or from 0.001 to 2 (smaller overflows the sampler)"
        )
        for usable in (0, 0.001, 2):
            answer = post(
                base + "/v1/completions",
                {"model": name, "prompt": "a", "max_tokens": 2, "temperature": usable},
            )
            assert answer.status_code == 200, usable


class Reader:
    """A ``serve.batch.Row`` that keeps what it is sent."""

    def __init__(self, request, wants_text: bool = True):
        self.request, self.wants_text = request, wants_text
        self.pieces, self.result, self.error = [], None, None

    def emit_text(self, text):
        self.pieces.append(text)

    def emit_done(self, result):
        assert self.result is None and self.error is None, "one ending per row"
        self.result = result

    def emit_error(self, error):
        assert self.result is None and self.error is None, "one ending per row"
        self.error = error

    def is_cancelled(self):
        return False


def _good_rows(served, name):
    from glmtune.infer.serve.batch import RowRequest

    tok = served[name].lm.tokenizer
    return [
        Reader(RowRequest(tok("这个")["input_ids"], 6)),
        Reader(RowRequest(tok("质量很差非常")["input_ids"], 4), wants_text=False),
        Reader(RowRequest(tok("物流")["input_ids"], 8, temperature=1.0, seed=11)),
    ]


def _alone(served, name, readers):
    """Each reader's request run alone."""
    from glmtune.infer.serve.batch import generate_rows

    model = served[name]
    results = []
    for reader in readers:
        again = Reader(reader.request)
        generate_rows(model.lm.model, model.lm.tokenizer, [again], model.stop_ids, model.pad_id)
        results.append(again.result)
    return results


@pytest.mark.parametrize(
    "poison",
    [
        {"temperature": 1e-300},  # the sampler's probabilities turn NaN at the first step
        {"temperature": 1.0, "seed": 2**70},  # the row's generator cannot be seeded
        {"temperature": 1.0, "top_k": 2.5},  # transformers' warper refuses it
        {"temperature": 1.0, "top_k": 3, "top_p": -0.5},
    ],
)
def test_a_row_that_cannot_sample_fails_alone(served, name, poison):
    """Past the edge (a run's own generate: settings, or a bug): the row gets the error, its batch goes on."""
    from glmtune.infer.serve.batch import RowRequest, generate_rows

    model = served[name]
    readers = _good_rows(served, name)
    bad = Reader(RowRequest(model.lm.tokenizer("a")["input_ids"], 6, **poison))
    batch = [readers[0], bad, *readers[1:]]
    generate_rows(model.lm.model, model.lm.tokenizer, batch, model.stop_ids, model.pad_id)
    assert bad.result is None and bad.error is not None
    for reader, expected in zip(readers, _alone(served, name, readers)):
        assert reader.error is None and reader.result.token_ids == expected.token_ids
        if reader.wants_text:
            assert "".join(reader.pieces) == reader.result.text


def test_a_row_that_breaks_the_whole_generate_fails_alone(served, name, caplog):
    """A failure no per-row check catches (a token id past the vocabulary breaks the embedding for the whole
    batch): the rows that have shown nothing run again alone, so only the culprit gets the error."""
    from glmtune.infer.serve.batch import RowRequest, generate_rows

    model = served[name]
    readers = _good_rows(served, name)
    bad = Reader(RowRequest([10**6], 6))
    with caplog.at_level(logging.WARNING, logger="glmtune.serve"):
        generate_rows(model.lm.model, model.lm.tokenizer, [*readers, bad], model.stop_ids, model.pad_id)
    assert bad.result is None and isinstance(bad.error, IndexError)
    for reader, expected in zip(readers, _alone(served, name, readers)):
        assert reader.error is None and reader.result.token_ids == expected.token_ids
    assert "running its rows one by one" in caplog.text


class Job:
    """A classify job as the scheduler hands it over."""

    def __init__(self, texts):
        self.payload, self.result, self.error = texts, None, None

    def emit_done(self, result):
        self.result = result

    def emit_error(self, error):
        self.error = error

    def is_cancelled(self):
        return False


def test_a_classify_job_that_fails_fails_alone(monkeypatch):
    from glmtune.infer import classifier
    from glmtune.infer.serve.registry import ServedModel

    def predict_texts(loaded, texts):
        if "poison" in texts:
            raise ValueError("the tokenizer refused a text")
        return [[0.25, 0.75] for _ in texts]

    monkeypatch.setattr(classifier, "predict_texts", predict_texts)
    jobs = [Job(["好", "差"]), Job(["poison"]), Job(["棒"])]
    ServedModel("c", "classification", classifier=object()).run_classify(jobs)
    assert jobs[1].result is None and isinstance(jobs[1].error, ValueError)
    assert [len(job.result) for job in (jobs[0], jobs[2])] == [2, 1]
    assert jobs[0].error is None and jobs[2].error is None


def test_a_failed_row_is_a_500_for_its_request_only(served, name):
    """What reaches a request when its own row fails: OpenAI's error object, 500 ``generation_failed``."""
    from glmtune.infer.serve.app import create_app

    model = served[name]
    real = model.run_generation

    def poisoned(jobs):
        for job in jobs:  # the run's own settings, as if its config held an unusable seed
            if job.request.prompt_ids == model.text_prompt("坏"):
                job.request.temperature, job.request.seed = 1.0, 2**70
        real(jobs)

    model.run_generation = poisoned
    try:
        from glmtune.infer.serve.app import Limits

        answers: dict[str, httpx.Response] = {}
        with running(create_app(served, Limits(batch_wait_s=0.5))) as base:

            def ask(prompt: str) -> None:
                answers[prompt] = post(
                    base + "/v1/completions", {"model": name, "prompt": prompt, "max_tokens": 3}
                )

            threads = [threading.Thread(target=ask, args=(prompt,)) for prompt in ("好", "坏", "棒")]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
    finally:
        del model.run_generation
    assert answers["好"].status_code == answers["棒"].status_code == 200
    assert answers["坏"].status_code == 500
    assert answers["坏"].json()["error"]["code"] == "generation_failed"


# =========================================================================== finding 3: API keys as bytes


@pytest.mark.parametrize(
    "value",
    [
        "Bearer é".encode("latin-1"),
        "Bearer é".encode(),
        "Bearer s3cret\u00ff".encode("latin-1"),
        b"Bearer \xff\xfe\x80",
        b"\xff s3cret",
        b"Bearer",
        b"Bearer s3cre",
        b"Basic s3cret",
        b"",
    ],
)
def test_any_authorization_value_is_401_never_500(keyed, value):
    answer = httpx.get(keyed + "/v1/models", headers=[(b"Authorization", value)])
    assert answer.status_code == 401, answer.text
    assert answer.json()["error"]["code"] == "invalid_api_key"


def test_the_right_key_passes(keyed):
    for value in (b"Bearer s3cret", b"bearer  s3cret", b"BEARER s3cret"):
        assert httpx.get(keyed + "/v1/models", headers=[(b"Authorization", value)]).status_code == 200


@pytest.mark.parametrize("key", ["clé", "s3cret\n", "two words", ""])
def test_a_key_no_header_can_carry_is_refused_at_start(tiny_model_dir, key, capsys, monkeypatch):
    args = ["serve", str(tiny_model_dir), "--port", "0"]
    if key:
        args += ["--api-key", key]
    else:
        monkeypatch.setenv("GLMTUNE_API_KEY", "schlüssel")

    def no_loading(*_args, **_kwargs):
        raise AssertionError("refused before any model loads")

    monkeypatch.setattr("glmtune.infer.serve.registry.load_models", no_loading)
    with pytest.raises(SystemExit) as caught:
        main(args)
    assert caught.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--api-key" in err and "Traceback" not in err


def test_create_app_refuses_such_a_key(served):
    from glmtune.core.errors import UserError
    from glmtune.infer.serve.app import create_app

    with pytest.raises(UserError, match="--api-key"):
        create_app(served, api_key="clé")


# =========================================================================== finding 8: Host, /openapi.json, logs


@pytest.mark.parametrize(
    "host, allowed, status",
    [
        ("localhost", None, 200),
        ("localhost:8000", None, 200),
        ("LOCALHOST.:1", None, 200),
        ("127.0.0.1:1234", None, 200),
        ("[::1]:8000", None, 200),
        ("[::1]", None, 200),
        ("evil.example", None, 400),  # a rebound name: what a DNS rebinding page sends
        ("evil.example:8000", None, 400),
        ("127.0.0.1.evil.example", None, 400),
        ("localhost.evil.example", None, 400),
        ("", None, 400),
        ("\u00e9", None, 400),
        ("api.example.com", ["api.example.com"], 200),
        ("b.internal", ["api.example.com, *.internal"], 200),
        ("internal", ["*.internal"], 400),
        ("10.0.0.5:8000", ["10.0.0.5", "::2"], 200),
        ("[::2]:8000", ["10.0.0.5", "::2"], 200),
        ("evil.example", ["api.example.com"], 400),
        ("evil.example", ["*"], 200),
    ],
)
def test_host_names(served, host, allowed, status):
    from glmtune.infer.serve.app import create_app

    with running(create_app(served, allowed_hosts=allowed)) as base:
        for path in ("/health", "/v1/models"):
            answer = httpx.get(base + path, headers=[(b"Host", host.encode("latin-1"))])
            assert answer.status_code == status, (host, path, answer.text)
            if status == 400:
                error = answer.json()["error"]
                assert error["param"] == "Host" and error["code"] == "host_not_allowed"


def test_allowed_hosts_reach_the_server(monkeypatch):
    import glmtune.infer.serve as serve_mod

    seen = {}
    monkeypatch.setattr(serve_mod, "serve", lambda targets, **options: seen.update(options))
    main(["serve", "m", "--allowed-hosts", "a.example,b.example", "--allowed-hosts", "c.example"])
    assert seen["allowed_hosts"] == ["a.example,b.example", "c.example"]
    from glmtune.infer.serve.guard import host_names

    assert host_names(seen["allowed_hosts"]) >= {"localhost", "a.example", "b.example", "c.example"}


def test_openapi_and_docs_need_the_key(keyed):
    for path in ("/openapi.json", "/docs", "/redoc", "/nothing"):
        assert httpx.get(keyed + path).status_code == 401, path
    assert httpx.get(keyed + "/openapi.json", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert httpx.get(keyed + "/health").status_code == 200  # probes need no key


def _logging_server(app):
    """``tests.helpers.running`` with uvicorn's access log on (INFO) and ``serve``'s log filter."""
    from glmtune.infer.serve import hide_query_strings

    return running(app, log_level="info", after_config=hide_query_strings)


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def test_access_log_has_no_query_strings(served):
    from glmtune.infer.serve.app import create_app

    access = logging.getLogger("uvicorn.access")
    with _logging_server(create_app(served, api_key="s3cret")) as base:
        lines = _Lines()
        access.addHandler(lines)
        try:
            httpx.get(base + "/v1/models?api_key=TOPSECRET&x=1", headers={"Authorization": "Bearer s3cret"})
            httpx.get(base + "/health?token=TOPSECRET")
            deadline = time.monotonic() + 5
            while len(lines.lines) < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
        finally:
            access.removeHandler(lines)
    assert any('"GET /v1/models HTTP/1.1" 200' in line for line in lines.lines), lines.lines
    assert any('"GET /health HTTP/1.1" 200' in line for line in lines.lines), lines.lines
    assert not any("TOPSECRET" in line or "?" in line for line in lines.lines), lines.lines
