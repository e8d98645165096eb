"""A scripted OpenAI-compatible judge for the evaluation tests: a real HTTP server
(POST /v1/chat/completions) that answers with chosen texts, refuses with 429 +
Retry-After or 500, and answers slowly, as told on the command line. Every request
is logged (arrival time, a key of its messages and seed, the status sent) so tests
can count calls, measure the rate and find repeated calls.

    judge_server.py --log calls.jsonl [--replies replies.json] [--fail 429,500]
                    [--retry-after 1] [--delay 0.1] [--slow-first 5] [--log-bodies]

Prints `PORT <n>` on its first line once it listens.
"""

import argparse
import hashlib
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

p = argparse.ArgumentParser()
p.add_argument("--log", required=True)
p.add_argument("--replies", help="JSON list of [needle, reply]: the first needle in the prompt picks the reply")
p.add_argument("--default-reply", default="The answer meets the criterion well.\n[RESULT] 4")
p.add_argument("--fail", default="", help="statuses of the first tries of every distinct call, e.g. 429,500")
p.add_argument("--retry-after", default="1", help="Retry-After header sent with 429")
p.add_argument("--delay", type=float, default=0.0, help="seconds before every successful answer")
p.add_argument("--slow-first", type=float, default=0.0, help="seconds before the first try of each call answers")
p.add_argument("--log-bodies", action="store_true", help="log each request's whole body too")
args = p.parse_args()

replies = json.load(open(args.replies)) if args.replies else []
fails = [int(s) for s in args.fail.split(",") if s.strip()]
lock = threading.Lock()
tries = {}
log = open(args.log, "a", buffering=1)


def reply_for(prompt):
    for needle, reply in replies:
        if needle in prompt:
            return reply
    return args.default_reply


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def handle(self):
        # Clients the tests kill drop their connections mid-request.
        try:
            super().handle()
        except (ConnectionResetError, BrokenPipeError):
            pass

    def send(self, status, body, headers=()):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        try:
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def do_POST(self):
        t = time.time()
        n = int(self.headers.get("Content-Length", "0"))
        req = json.loads(self.rfile.read(n) or b"{}")
        if self.path.rstrip("/") != "/v1/chat/completions":
            return self.send(404, {"error": {"message": f"no route {self.path}", "type": "invalid_request_error"}})
        msgs = req.get("messages", [])
        prompt = msgs[-1]["content"] if msgs else ""
        key = hashlib.sha256(json.dumps([msgs, req.get("seed")], sort_keys=True).encode()).hexdigest()[:16]
        with lock:
            attempt = tries.get(key, 0)
            tries[key] = attempt + 1
        status = fails[attempt] if attempt < len(fails) else 200
        entry = {"t": t, "key": key, "seed": req.get("seed"), "attempt": attempt, "status": status}
        if args.log_bodies:
            entry["body"] = req
        log.write(json.dumps(entry) + "\n")
        if status == 429:
            return self.send(429, {"error": {"message": "rate limited", "type": "rate_limit_error"}},
                             [("Retry-After", args.retry_after)])
        if status != 200:
            return self.send(status, {"error": {"message": "scripted failure", "type": "server_error"}})
        if args.slow_first and attempt == 0:
            time.sleep(args.slow_first)
        if args.delay:
            time.sleep(args.delay)
        text = reply_for(prompt)
        self.send(200, {
            "id": "chatcmpl-" + key, "object": "chat.completion", "created": int(t), "model": req.get("model", ""),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": len(text.split()),
                      "total_tokens": len(prompt.split()) + len(text.split())},
        })


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
print(f"PORT {server.server_address[1]}", flush=True)
sys.stdout.flush()
server.serve_forever()
