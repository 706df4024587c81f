"""The judge as an OpenAI-compatible endpoint: a real HTTP server on 127.0.0.1, started by
the test, answering fixed, malformed, slow and failing answers."""
from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from engine.feedback.judge import parse_choice

SECRET = "sk-test-not-a-real-key-4711"


class FakeJudge:
    """What the server saw and how it answers (by markers in the question)."""

    def __init__(self, status: int | None = None, delay: float = 0.1, overlap: int = 0):
        self.status, self.delay = status, delay
        # the first `overlap` requests wait for one another (≤ 10 s): a client that sends
        # them concurrently has them all in flight at once, whatever the machine's load
        self.overlap = threading.Barrier(overlap) if overlap else None
        self.released = threading.Event()   # a slow answer waits for this (the test's end)
        self.lock = threading.Lock()
        self.active = self.max_active = 0
        self.requests = 0
        self.auth: list[str | None] = []
        self.models: set[str] = set()
        self.seen: Counter = Counter()

    def answer(self, prompt: str) -> tuple[int, bytes]:
        with self.lock:
            n = self.seen[prompt]
            self.seen[prompt] += 1
        if self.status:
            return self.status, b'{"error": {"message": "invalid api key"}}'
        if "slow" in prompt and n == 0:
            # never answered in time, once: the client gives up on this request (its
            # timeout), so it no longer counts as one in flight
            with self.lock:
                self.active -= 1
            self.released.wait(60)
            with self.lock:
                self.active += 1
        if "flaky" in prompt and n == 0:
            return 500, b'{"error": "overloaded"}'
        if "broken" in prompt:
            return 200, b"<html>bad gateway</html>"
        if "Rewrite the answer" in prompt:
            text = "Too vague." if "echo" in prompt else "A better answer."
        elif "Critique the answer" in prompt:
            text = "Too vague."
        elif "always-a" in prompt:   # a judge with a pure position bias
            text = "A"
        elif "garbled" in prompt:
            text = "Both have their merits, hard to say."
        else:
            a = re.search(r"Answer A: (.*?)\n\nAnswer B:", prompt, re.S).group(1)
            text = "Answer A is better." if "GOOD" in a else "**B**"
        body = {"id": "x", "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": "stop"}]}
        return 200, json.dumps(body).encode()


def serve(fake: FakeJudge):
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            with fake.lock:
                fake.requests += 1
                fake.active += 1
                fake.max_active = max(fake.max_active, fake.active)
                fake.auth.append(self.headers.get("Authorization"))
                first = fake.requests <= (fake.overlap.parties if fake.overlap else 0)
            try:
                if first:
                    try:
                        fake.overlap.wait(10)
                    except threading.BrokenBarrierError:
                        pass                       # the client did not send them together
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length))
                fake.models.add(body["model"])
                assert self.path == "/v1/chat/completions"
                time.sleep(fake.delay)
                status, payload = fake.answer(body["messages"][-1]["content"])
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass                               # the client gave up (a timeout)
            finally:
                with fake.lock:
                    fake.active -= 1

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/v1"


@pytest.fixture
def judge_server():
    servers = []

    def start(**kw):
        fake = FakeJudge(**kw)
        server, url = serve(fake)
        server.fake = fake
        servers.append(server)
        return fake, url
    yield start
    for server in servers:
        server.fake.released.set()
        server.shutdown()
        server.server_close()


def question_set(store):
    names = ["plain one", "garbled two", "slow three", "flaky four", "broken five",
             "plain six"]
    store.create_dataset("qs", "preference", eval_fraction=0.0)
    store.add_rows("qs", [{"prompt": f"Question {n}?", "chosen": f"A GOOD answer to {n}.",
                           "rejected": f"A poor answer to {n}.", "source": "human"}
                          for n in names])
    return names


def db_bytes(store) -> bytes:
    return b"".join(p.read_bytes() for p in store.path.parent.glob(store.path.name + "*"))


def test_endpoint_judge_retries_reports_bad_rows_and_keeps_the_key_out(
        store, judge_server, monkeypatch):
    from engine.runtime.jobs import run_sync

    monkeypatch.setenv("LAB_JUDGE_KEY", SECRET)
    fake, url = judge_server(overlap=2)
    question_set(store)
    run = run_sync(store, "ai_feedback", {
        "model": "/no/such/policy", "mode": "compare", "prompts": "qs", "dataset": "ai-qs",
        "judge_url": url, "judge_model": "judge-7b", "judge_api_key_env": "LAB_JUDGE_KEY",
        "timeout_s": 3.0, "retries": 2, "concurrency": 2})
    assert run["status"] == "succeeded", run["error"]
    s = run["summary"]
    # the garbled and the broken answers are reported per row; the others made pairs
    assert s["pairs_made"] == 4, s
    reasons = {k["row"]: k["reason"] for k in s["skipped"]}
    assert set(reasons) == {1, 4}
    assert "unparsable" in reasons[1] and "hard to say" in reasons[1]
    assert "not JSON" in reasons[4]
    assert all(k["prompt"].startswith("Question") for k in s["skipped"])
    ids = [r["id"] for r in store.list_rows("qs")]
    assert [k["input_row"] for k in s["skipped"]] == [ids[1], ids[4]]
    # the slow answers timed out once (both orders) and were retried; so were the 500s
    st = s["endpoint"]
    assert st["timeouts"] == 2 and st["server_errors"] == 2 and st["retries"] == 4, st
    rows = store.list_rows("ai-qs")
    assert len(rows) == 4
    for r in rows:
        m = r["meta"]
        assert r["source"] == "ai" and "GOOD" in r["chosen"]
        assert m["order_agreement"] is True and m["confidence"] == 1.0
        assert m["ai_choice"] == "chosen" and m["agrees_with_input"] is True
        assert m["input_source"] == "human" and "judge-7b" in m["judge"] and url in m["judge"]
    # the key reached the server as a Bearer token, and nowhere in the database
    assert fake.auth and set(fake.auth) == {f"Bearer {SECRET}"}
    assert fake.models == {"judge-7b"}
    assert SECRET.encode() not in db_bytes(store)
    # the concurrency limit held (two workers did overlap)
    assert fake.max_active == 2, fake.max_active


def test_a_judge_naming_the_same_letter_in_both_orders_gives_a_tie_never_trained_on(
        store, judge_server):
    """The default order_disagreement (average): P = 1 then 0 for the same answer average to
    exactly 1/2, a tie; training leaves ties out."""
    from engine.data.sources import mix_sources
    from engine.runtime.jobs import run_sync

    _, url = judge_server(delay=0.0)
    store.create_dataset("bias", "preference", eval_fraction=0.0)
    store.add_rows("bias", [{"prompt": "Question always-a?", "chosen": "A GOOD answer.",
                             "rejected": "A poor answer.", "source": "human"},
                            {"prompt": "Question plain?", "chosen": "A GOOD answer.",
                             "rejected": "A poor answer.", "source": "human"}])
    run = run_sync(store, "ai_feedback", {
        "model": "/no/such/policy", "mode": "compare", "prompts": "bias", "dataset": "ai-b",
        "judge_url": url, "judge_model": "m", "retries": 0})
    assert run["status"] == "succeeded", run["error"]
    rows = {r["prompt"]: r for r in store.list_rows("ai-b")}
    biased, fair = rows["Question always-a?"]["meta"], rows["Question plain?"]["meta"]
    assert biased["tie"] is True and biased["ai_choice"] == "tie"
    assert biased["order_agreement"] is False and biased["confidence"] == 0.5
    assert fair["tie"] is False and fair["ai_choice"] == "chosen"
    kept = mix_sources(store.list_rows("ai-b"), None, 0)
    assert [r["prompt"] for r in kept] == ["Question plain?"]


def test_endpoint_401_is_not_retried_and_says_what_to_fix(store, judge_server, monkeypatch):
    from engine.runtime.jobs import run_sync

    monkeypatch.setenv("LAB_JUDGE_KEY", SECRET)
    fake, url = judge_server(status=401)
    question_set(store)
    run = run_sync(store, "ai_feedback", {
        "mode": "compare", "prompts": "qs", "dataset": "ai-qs", "judge_url": url,
        "judge_model": "m", "judge_api_key_env": "LAB_JUDGE_KEY", "retries": 3,
        "concurrency": 1, "model": "/no/such/policy"})
    assert run["status"] == "failed"
    assert "HTTP 401" in run["error"] and "LAB_JUDGE_KEY" in run["error"]
    assert fake.requests == 1                      # not retried, no other row tried
    assert SECRET not in run["error"] and SECRET.encode() not in db_bytes(store)


def test_endpoint_critique_with_a_local_policy(store, judge_server, tiny_model_dir,
                                              monkeypatch):
    from engine.runtime.jobs import run_sync

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    fake, url = judge_server(delay=0.0)
    store.create_dataset("qsft", "sft")
    store.add_rows("qsft", [{"prompt": f"Question {n}?", "response": "-"}
                            for n in ("one", "echo two", "three")])
    run = run_sync(store, "ai_feedback", {
        "mode": "critique", "model": str(tiny_model_dir), "prompts": "qsft",
        "max_new_tokens": 8, "dataset": "cai", "judge_url": url, "judge_model": "m",
        "concurrency": 2})
    assert run["status"] == "succeeded", run["error"]
    s = run["summary"]
    assert s["pairs_made"] == 2 and s["sft_rows_made"] == 2
    # the judge wrote its critique again as the revision: reported, not stored
    assert [(k["row"], k["reason"]) for k in s["skipped"]] == \
        [(1, "the revision repeats the critique")]
    assert fake.requests == 6                      # a critique and a revision per prompt
    for pair, row in zip(store.list_rows("cai"), store.list_rows("cai-sft")):
        assert pair["chosen"] == "A better answer." == row["response"]
        assert pair["meta"]["critique"] == "Too vague." and pair["rejected"] != pair["chosen"]
    assert fake.auth == [None] * 6                 # no key set: no Authorization header


@pytest.mark.parametrize("text, expected", [
    ("A", "A"), ("B.", "B"), ("**A**", "A"), ("(B) because it is shorter", "B"),
    ("Answer A is better.", "A"), ("Response B", "B"), ("Réponse A", "A"),
    ("I prefer B", "B"), ("A is better than B", "A"), ("b", "B"),
    ("A good answer is B", "B"),
    ("Both have their merits", None), ("A and B are both fine", None), ("", None),
    ("answer A is worse than answer B", None),
])
def test_parse_choice_is_lenient_but_never_guesses(text, expected):
    assert parse_choice(text) == expected
