"""glmtune serve's monitoring: ``GET /metrics`` read back with prometheus_client's own parser after real requests
to the real server (uvicorn on a loopback port, the tiny random Llama), the JSON access log, ``X-Request-Id``, the
key on ``/metrics`` (and ``--metrics-public``), and the Grafana dashboard's queries against the metrics served."""

from __future__ import annotations

import io
import json
import logging
import re
import threading
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import REPO, client, running

USER = [{"role": "user", "content": "这个好"}]
CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def served(tiny_served):
    return tiny_served


@pytest.fixture(scope="module")
def name(tiny_model_dir) -> str:
    return tiny_model_dir.name


def app_of(served, **options):
    from glmtune.infer.serve.app import create_app

    return create_app(served, options.pop("limits", None), options.pop("api_key", None), **options)


def scrape(url: str, key: str | None = None) -> dict:
    """``/metrics`` parsed by prometheus_client: {family name: family}."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    answer = httpx.get(url + "/metrics", headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    return {family.name: family for family in text_string_to_metric_families(answer.text)}


def value(families: dict, sample: str, **labels: str) -> float:
    """The sum of the samples named ``sample`` whose labels include ``labels`` (0 when there are none)."""
    family = families[re.sub(r"_(total|bucket|sum|count)$", "", sample)]
    chosen = [s for s in family.samples if s.name == sample and labels.items() <= s.labels.items()]
    return sum(s.value for s in chosen)


def buckets(families: dict, histogram: str, **labels: str) -> list[tuple[float, float]]:
    family = families[histogram]
    rows = [
        s for s in family.samples if s.name == histogram + "_bucket" and labels.items() <= s.labels.items()
    ]
    return sorted((float(s.labels["le"]), s.value) for s in rows)


def prompt_len(served, name: str, messages=USER) -> int:
    from glmtune.data.conversation import Message

    return len(served[name].chat_prompt([Message(m["role"], m["content"]) for m in messages], None))


# =========================================================================== metrics


def test_counts_and_histograms_move_with_real_requests(served, name):
    app = app_of(served)
    tokenizer = served[name].lm.tokenizer
    with running(app) as url:
        before = scrape(url)
        assert value(before, "glmtune_models_loaded") == 1
        assert value(before, "glmtune_model_info", model=name, task="sft") == 1
        assert value(before, "glmtune_queue_capacity") == app.state.limits.max_queue
        assert value(before, "glmtune_generated_tokens_total", model=name) == 0  # present from the start
        assert value(before, "glmtune_requests_total", route=CHAT) == 0

        api = client(url)
        # the stream first: a request's count is final before its last byte, a stream's just after its [DONE]
        list(api.chat.completions.create(model=name, messages=USER, max_tokens=4, stream=True))
        api.chat.completions.create(model=name, messages=USER, max_tokens=5, temperature=0)
        api.completions.create(model=name, prompt=["这个", "质量很差"], max_tokens=3, temperature=0)
        after = scrape(url)

    assert value(after, "glmtune_requests_total", route=CHAT, model=name, status="200") == 2
    assert value(after, "glmtune_requests_total", route="/v1/completions", model=name, status="200") == 1
    assert value(after, "glmtune_requests_total", route="/metrics", status="200") == 1  # the first scrape
    assert value(after, "glmtune_generated_tokens_total", model=name) == 5 + 2 * 3 + 4
    prompts = (
        2 * prompt_len(served, name)
        + len(tokenizer("这个")["input_ids"])
        + len(tokenizer("质量很差")["input_ids"])
    )
    assert value(after, "glmtune_prompt_tokens_total", model=name) == prompts

    # latency: one observation per request, cumulative buckets ending in +Inf == count
    assert value(after, "glmtune_request_duration_seconds_count", route=CHAT) == 2
    rows = buckets(after, "glmtune_request_duration_seconds", route=CHAT)
    assert rows[-1] == (float("inf"), 2) and [n for _, n in rows] == sorted(n for _, n in rows)
    latency = value(after, "glmtune_request_duration_seconds_sum", model=name)
    # time to first token: one per generation request, never longer than the requests themselves
    assert value(after, "glmtune_time_to_first_token_seconds_count", model=name) == 3
    assert 0 < value(after, "glmtune_time_to_first_token_seconds_sum", model=name) <= latency
    # the worker's view: 4 jobs (the completions request is two), in as many batches as it ran
    assert value(after, "glmtune_queue_wait_seconds_count", model=name) == 4
    assert value(after, "glmtune_batch_size_sum", model=name) == 4
    assert value(after, "glmtune_batch_size_count", model=name) == app.state.scheduler.stats["batches"]
    assert value(after, "glmtune_queue_depth") == value(after, "glmtune_running_requests") == 0
    assert (
        value(after, "glmtune_rejected_requests_total") == value(after, "glmtune_failed_requests_total") == 0
    )


def test_refusals_are_counted_as_rejected_and_queue_depth_is_live(served, name):
    from glmtune.infer.serve.limits import Limits

    app = app_of(served, limits=Limits(max_queue=1, max_tokens=8, batch_wait_s=0))
    scheduler = app.state.scheduler
    release = threading.Event()
    run = scheduler.runners[name]

    def held(jobs):  # the worker waits here until the test has seen the queue full
        release.wait(30)
        run(jobs)

    scheduler.runners[name] = held
    with running(app) as url:
        api = client(url)
        with pytest.raises(Exception, match="does not exist"):
            api.chat.completions.create(model="nope", messages=USER)  # 404: no model label made up
        with pytest.raises(Exception, match="at most 8"):
            api.chat.completions.create(model=name, messages=USER, max_tokens=9)  # 400

        def ask(max_tokens: int) -> None:
            client(url).completions.create(model=name, prompt="这个", max_tokens=max_tokens)

        threads = [threading.Thread(target=ask, args=(2,))]
        threads[0].start()
        wait_until(lambda: scheduler.stats["running"] == 1)  # the first job is in the (held) batch
        threads.append(threading.Thread(target=ask, args=(3,)))
        threads[1].start()
        wait_until(lambda: scheduler.waiting == 1)  # the second waits
        families = scrape(url)
        assert (
            value(families, "glmtune_queue_depth") == 1 and value(families, "glmtune_running_requests") == 1
        )
        full = httpx.post(url + "/v1/completions", json={"model": name, "prompt": "这个", "max_tokens": 1})
        assert full.status_code == 429
        release.set()
        for thread in threads:
            thread.join(30)
        families = scrape(url)

    rejected = "glmtune_rejected_requests_total"
    assert value(families, rejected, route=CHAT, model="", status="404") == 1
    assert value(families, rejected, route=CHAT, model=name, status="400") == 1
    assert value(families, rejected, route="/v1/completions", model=name, status="429") == 1
    assert value(families, rejected) == 3
    assert value(families, "glmtune_requests_total", route="/v1/completions", status="200") == 2
    assert (
        value(families, "glmtune_generated_tokens_total", model=name) == 2 + 3
    )  # refused ones count nothing
    assert value(families, "glmtune_queue_depth") == 0


def test_metrics_need_the_key_unless_public(served, name):
    with running(app_of(served, api_key="sekret")) as url:
        assert httpx.get(url + "/metrics").status_code == 401
        assert httpx.get(url + "/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        families = scrape(url, key="sekret")
    assert value(families, "glmtune_rejected_requests_total", route="/metrics", status="401") == 2

    with running(app_of(served, api_key="sekret", metrics_public=True)) as url:
        families = scrape(url)
        assert httpx.get(url + "/v1/models").status_code == 401  # only /metrics is opened
        assert httpx.get(url + "/health").status_code == 200
    assert value(families, "glmtune_models_loaded") == 1


def test_two_apps_keep_their_own_counts(served, name):
    first, second = app_of(served), app_of(served)
    with running(first) as url_a, running(second) as url_b:
        httpx.get(url_a + "/health")
        httpx.get(url_a + "/health")
        assert value(scrape(url_a), "glmtune_requests_total", route="/health") == 2
        assert value(scrape(url_b), "glmtune_requests_total", route="/health") == 0


# =========================================================================== the access log


def wait_until(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def access_lines(caplog) -> list[dict]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "glmtune.serve.access"]


FIELDS = {"time", "request_id", "method", "route", "model", "status", "stream", "prompt_tokens",
          "completion_tokens", "latency_s", "queue_wait_s", "ttft_s", "error"}  # fmt: skip


def test_one_json_line_per_request_without_content(served, name, caplog):
    with caplog.at_level(logging.INFO, logger="glmtune.serve.access"), running(app_of(served)) as url:
        answer = httpx.post(url + CHAT, json={"model": name, "messages": USER, "max_tokens": 5},
                            headers={"X-Request-Id": "trace-42.a"})  # fmt: skip
        assert answer.headers["x-request-id"] == "trace-42.a"
        reply = answer.json()["choices"][0]["message"]["content"]
        odd = httpx.post(url + CHAT, json={"model": name, "messages": USER, "max_tokens": 2},
                         headers={"X-Request-Id": "no spaces ; please"})  # fmt: skip
        generated = odd.headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", generated)
        stream = client(url).chat.completions.create(model=name, messages=USER, max_tokens=4, stream=True)
        chunks = list(stream)
        assert chunks[-1].choices[0].finish_reason == "length"
        bad = httpx.post(url + CHAT, json={"model": name, "messages": USER, "max_tokens": 10**6})
        assert bad.status_code == 400
        httpx.get(url + "/health")  # a probe: DEBUG, not in an INFO log

    lines = access_lines(caplog)
    assert [line["route"] for line in lines] == [CHAT] * 4
    first, second, streamed, refused = lines
    assert FIELDS <= first.keys() and "prompt" not in first and "reply" not in first
    assert first["request_id"] == "trace-42.a" and second["request_id"] == generated
    assert first["model"] == name and first["status"] == 200 and first["method"] == "POST"
    assert first["prompt_tokens"] == prompt_len(served, name) and first["completion_tokens"] == 5
    assert first["latency_s"] >= first["ttft_s"] >= first["queue_wait_s"] >= 0
    assert streamed["stream"] is True and streamed["completion_tokens"] == 4  # logged when the stream ended
    assert refused["status"] == 400 and refused["error"] == "max_tokens_too_large"
    assert refused["completion_tokens"] is None
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert USER[0]["content"] not in text and (not reply or reply not in text)


def test_log_content_adds_prompt_and_reply(served, name, caplog):
    with caplog.at_level(logging.INFO, logger="glmtune.serve.access"):
        with running(app_of(served, log_content=True)) as url:
            api = client(url)
            reply = api.chat.completions.create(model=name, messages=USER, max_tokens=5).choices[0].message
            done = api.completions.create(model=name, prompt="质量很", max_tokens=3, stream=True)
            streamed = "".join(c.choices[0].text for c in done if c.choices)
    chat, completion = access_lines(caplog)
    assert chat["prompt"] == USER and chat["reply"] == reply.content
    assert completion["prompt"] == ["质量很"] and completion["reply"] == streamed


def test_request_ids_and_the_installed_log():
    from glmtune.infer.serve.monitor import RequestRecord, access_log, install_access_log, request_id

    assert request_id([(b"X-Request-Id", b"abc-1:2/3=")]) == "abc-1:2/3="
    for bad in (b"", b"a b", b"x" * 129, b"\xff", b"{json}"):
        assert re.fullmatch(r"[0-9a-f]{32}", request_id([(b"x-request-id", bad)]))
    out = io.StringIO()
    saved = access_log.handlers[:], access_log.level, access_log.propagate
    try:
        install_access_log(out)
        install_access_log(out)  # once per process: one handler
        assert access_log.propagate is False and len(access_log.handlers) == len(saved[0]) + 1
        from glmtune.infer.serve.monitor import Monitor

        monitor = Monitor({}, 4)
        monitor.finish(
            RequestRecord("r1", "GET", "/v1/models", time.monotonic(), status=200), time.monotonic()
        )
    finally:
        access_log.handlers[:], access_log.level, access_log.propagate = saved
    line = json.loads(out.getvalue())
    assert line["request_id"] == "r1" and line["status"] == 200 and line["model"] is None


def test_cli_flags_reach_the_server(monkeypatch):
    import glmtune.infer.serve as serve_mod
    from glmtune.cli import main

    calls = []
    monkeypatch.setattr(serve_mod, "serve", lambda targets, **kwargs: calls.append(kwargs))
    main(["serve", "some-model"])
    main(["serve", "some-model", "--metrics-public", "--log-content"])
    assert [(c["metrics_public"], c["log_content"]) for c in calls] == [(False, False), (True, True)]


# =========================================================================== the Grafana dashboard


def test_dashboard_queries_name_served_metrics(served, name):
    dashboard = json.loads((REPO / "examples" / "grafana-glmtune.json").read_text(encoding="utf-8"))
    assert dashboard["title"] and dashboard["uid"] and isinstance(dashboard["schemaVersion"], int)
    panels = [panel for panel in dashboard["panels"] if panel["type"] != "row"]
    assert len(panels) >= 8
    exprs = [target["expr"] for panel in panels for target in panel["targets"]]
    assert all(panel["datasource"]["type"] == "prometheus" for panel in panels)
    exprs += [v["query"]["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    named = {
        re.sub(r"_(total|bucket|sum|count)$", "", found)
        for e in exprs
        for found in re.findall(r"\bglmtune_\w+", e)
    }
    with running(app_of(served)) as url:
        client(url).chat.completions.create(model=name, messages=USER, max_tokens=2)
        families = scrape(url)
    assert named and named <= families.keys(), named - families.keys()
    # every metric served has a panel
    assert {f for f in families if f.startswith("glmtune_") and not f.endswith("_created")} <= named
