"""A loopback HTTP server speaking the OpenAI Chat Completions and Anthropic Messages wire
formats (and legacy Completions through a test-supplied `complete` function), for testing the real SDKs without a network. Faults can be scripted per request:
400, 429 with retry-after, 500, a hang past the client timeout, truncated and malformed JSON.
`GatedServer` answers a first few requests and holds the rest until released."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable


class FakeLLMServer:
    def __init__(self, reply: Callable[[dict], str] | None = None):
        self.reply = reply or (lambda request: 'the main thing this neuron does is find the token "the".')
        # /v1/completions (not chat): the whole response body for a request body, set by a test
        self.complete: Callable[[dict], dict] | None = None
        # chat logprobs.content for (request body, reply text); default: one entry per space-separated word
        self.chat_logprobs: Callable[[dict, str], list] | None = None
        self.faults: list[str] = []  # consumed one per request: "400", "429", "500", "hang", "truncated", "malformed", "empty"
        self.requests: list[dict] = []  # every request body received (also faulted ones)
        self.headers: list[dict] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server._lock:
                    server.requests.append(body)
                    server.headers.append({k.lower(): v for k, v in self.headers.items()})
                    fault = server.faults.pop(0) if server.faults else None
                if fault == "429":
                    return self._send(429, {"error": {"message": "slow down", "type": "rate_limit"}},
                                      {"retry-after": "1"})
                if fault == "400":
                    return self._send(400, {"error": {"message": "bad request", "type": "invalid_request_error"}})
                if fault == "500":
                    return self._send(500, {"error": {"message": "boom", "type": "server_error"}})
                if fault == "hang":
                    time.sleep(3)
                    return
                if self.path.endswith("/completions") and not self.path.endswith("/chat/completions"):
                    return self._send(200, server.complete(body))
                text = "" if fault == "empty" else server.reply(body)
                payload = (self._anthropic(body, text) if self.path.endswith("/messages")
                           else self._openai(body, text))
                if fault == "malformed":
                    return self._send_raw(200, b'{"id": "x", "choices": [ {"mess')
                if fault == "truncated":
                    raw = json.dumps(payload).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(raw)))
                    self.end_headers()
                    self.wfile.write(raw[: len(raw) // 2])  # then close: the body ends early
                    self.close_connection = True
                    return
                self._send(200, payload)

            def _openai(self, body, text):
                n = body.get("n") or 1
                tokens = text.split(" ")
                content = (server.chat_logprobs(body, text) if server.chat_logprobs else
                           [{"token": t, "logprob": -0.25, "bytes": None, "top_logprobs": []} for t in tokens])
                logprobs = {"content": content} if body.get("logprobs") else None
                return {"id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": body["model"],
                        "choices": [{"index": i, "message": {"role": "assistant", "content": text},
                                     "finish_reason": "stop", "logprobs": logprobs} for i in range(n)],
                        "usage": {"prompt_tokens": 100, "completion_tokens": 10 * n, "total_tokens": 100 + 10 * n,
                                  "prompt_tokens_details": {"cached_tokens": 40}}}

            def _anthropic(self, body, text):
                return {"id": "msg_test", "type": "message", "role": "assistant", "model": body["model"],
                        "content": [{"type": "text", "text": text}], "stop_reason": "end_turn",
                        "stop_sequence": None, "usage": {"input_tokens": 120, "output_tokens": 12}}

            def _send(self, status, payload, headers=None):
                self._send_raw(status, json.dumps(payload).encode(), headers)

            def _send_raw(self, status, raw, headers=None):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                try:
                    self.wfile.write(raw)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up on this request
                    self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        # shutdown() waits for serve_forever's next poll: a short interval keeps each server's exit fast
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02},
                                        daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


class GatedServer(FakeLLMServer):
    """Answers the first `open_for` requests, then holds every further one until released."""

    def __init__(self, open_for: int):
        self.gate = threading.Event()
        self.answered: list[str] = []
        self.held = 0
        lock = threading.Lock()

        def reply(body):
            with lock:
                if len(self.answered) >= open_for and not self.gate.is_set():
                    self.held += 1
                    hold = True
                else:
                    hold = False
            if hold:
                self.gate.wait(120)
                return 'the main thing this neuron does is find the token "the".'
            with lock:
                self.answered.append(json.dumps(body, sort_keys=True))
            return 'the main thing this neuron does is find the token "the".'

        super().__init__(reply)

    def __exit__(self, *exc):
        self.gate.set()  # let held handlers end
        super().__exit__(*exc)
