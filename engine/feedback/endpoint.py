"""An OpenAI-compatible chat endpoint as the judge (llama.cpp server, Ollama, vLLM, ...).

Only the standard library (urllib): `POST <base_url>/chat/completions` with
{"model", "messages", "max_tokens", "temperature"}, the answer read from
`choices[0].message.content`.

- timeouts: each request waits at most `timeout_s`;
- retries with exponential back-off (backoff_s · 2^attempt) on a timeout, a connection
  error or a 5xx answer, never on a 4xx one;
- a concurrency limit: at most `concurrency` requests in flight (a semaphore, and the
  job's thread pool of the same size);
- a 401 or 403 stops the job with `EndpointAuthError` (the key is wrong for every row);
  any other failure is an `EndpointError` for that row alone (the job reports it and goes
  on);
- the API key is read from the environment variable the config names, sent as
  `Authorization: Bearer ...`, and appears in no error message, log or database row.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

BACKOFF_S = 0.5
RETRY_STATUS = range(500, 600)


class EndpointError(RuntimeError):
    """One request that failed for good (after its retries, or not retryable)."""


class EndpointAuthError(EndpointError):
    """The endpoint refused the credentials (401/403): no row can succeed."""


class Endpoint:
    """A chat-completions client with retries, back-off and a concurrency limit."""

    def __init__(self, base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY",
                 timeout_s: float = 60.0, retries: int = 3, concurrency: int = 4,
                 backoff_s: float = BACKOFF_S, temperature: float = 0.0):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key_env = api_key_env
        self.timeout_s = float(timeout_s)
        self.retries = int(retries)
        self.concurrency = max(1, int(concurrency))
        self.backoff_s = float(backoff_s)
        self.temperature = temperature
        self._slots = threading.BoundedSemaphore(self.concurrency)
        self._lock = threading.Lock()
        self.stats = {"requests": 0, "retries": 0, "timeouts": 0, "server_errors": 0,
                      "connection_errors": 0, "failed": 0}

    @property
    def label(self) -> str:
        return f"{self.model} @ {self.url.rsplit('/chat/completions', 1)[0]}"

    def _count(self, key: str) -> None:
        with self._lock:
            self.stats[key] += 1

    def _headers(self) -> dict:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = os.environ.get(self.api_key_env or "", "").strip()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _scrub(self, text: str) -> str:
        """`text` without the API key (an error body may echo the request)."""
        key = os.environ.get(self.api_key_env or "", "").strip()
        return text.replace(key, "***") if key else text

    def _once(self, body: bytes) -> dict:
        request = urllib.request.Request(self.url, data=body, headers=self._headers(),
                                         method="POST")
        with self._slots:
            self._count("requests")
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                raw = response.read()
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise EndpointError(f"the endpoint's answer is not JSON: {raw[:120]!r}") from None

    def chat(self, prompt: str, max_tokens: int = 64) -> str:
        """The endpoint's answer to one user message (retried as the module says)."""
        body = json.dumps({"model": self.model, "max_tokens": int(max_tokens),
                           "temperature": self.temperature,
                           "messages": [{"role": "user", "content": prompt}]}).encode()
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                self._count("retries")
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                return content_of(self._once(body))
            except urllib.error.HTTPError as exc:
                detail = self._scrub(_error_detail(exc))
                if exc.code in (401, 403):
                    self._count("failed")
                    raise EndpointAuthError(
                        f"the judge endpoint refused the request (HTTP {exc.code}{detail}): "
                        f"check the API key in the environment variable "
                        f"{self.api_key_env or '(none)'}") from None
                if exc.code not in RETRY_STATUS:
                    self._count("failed")
                    raise EndpointError(f"HTTP {exc.code} from the judge endpoint{detail} "
                                        f"(not retried)") from None
                self._count("server_errors")
                last = f"HTTP {exc.code}{detail}"
            except (socket.timeout, TimeoutError):
                self._count("timeouts")
                last = f"no answer within {self.timeout_s:g} s"
            except urllib.error.URLError as exc:
                if isinstance(exc.reason, (socket.timeout, TimeoutError)):
                    self._count("timeouts")
                    last = f"no answer within {self.timeout_s:g} s"
                else:
                    self._count("connection_errors")
                    last = f"cannot connect: {exc.reason}"
            except (ConnectionError, http_client_errors()) as exc:
                self._count("connection_errors")
                last = f"connection lost: {type(exc).__name__}"
        self._count("failed")
        raise EndpointError(f"the judge endpoint failed {self.retries + 1} time(s); last: {last}")

    def map(self, fn: Callable, items: list) -> list:
        """fn(item) for every item on at most `concurrency` threads, in order; an
        EndpointError (not an auth error) is returned in place of its result."""
        def safe(item):
            try:
                return fn(item)
            except EndpointAuthError:
                raise
            except EndpointError as exc:
                return exc
        if len(items) <= 1 or self.concurrency == 1:
            return [safe(item) for item in items]
        with ThreadPoolExecutor(max_workers=self.concurrency,
                                thread_name_prefix="judge-endpoint") as pool:
            return list(pool.map(safe, items))


def http_client_errors() -> type:
    import http.client

    return http.client.HTTPException


def content_of(answer: dict) -> str:
    """choices[0].message.content of a chat completion, or an EndpointError saying what
    the answer lacks."""
    try:
        content = answer["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise EndpointError(f"the endpoint's answer has no choices[0].message.content: "
                            f"{json.dumps(answer)[:160]}") from None
    if not isinstance(content, str):
        raise EndpointError(f"the endpoint's message content is not text: {content!r:.80}")
    return content


def _error_detail(exc: urllib.error.HTTPError) -> str:
    try:
        text = exc.read().decode("utf-8", "replace").strip()
    except Exception:  # noqa: BLE001 - the body is only a hint
        text = ""
    return f": {text[:160]}" if text else ""
