"""`python -m kubefusion_trainer.seeded_server MODEL`: an OpenAI-compatible chat server for CPU that honours seeds.

The local runner's CPU server. `transformers serve` seeds torch's global generator per request, which
concurrent requests share, so the same FusionRun sampled twice gets different answers. Here every choice
draws from its own generator, seeded from the request's `seed` + the choice's index and the prompt's
tokens: the same request gives the same answers whatever else is in flight, choice j of a request with
seed s equals choice 0 of the same request with seed s + j and n = 1 (the sampler's "sample i uses
seed + i"), and two prompts sent with the same seed still draw independent randomness.

Requests are generated one at a time (its n choices as one batch): a row's floats never depend on which
other requests share its batch. For the tiny quickstart models that costs little; on a GPU the runner
uses vLLM instead.

Endpoints: GET /health, GET /v1/models, POST /v1/chat/completions (messages, n, seed, temperature, top_p,
max_tokens, repetition_penalty; `model` must be the served name, which is the path given, as with
`transformers serve`). `stream` is ignored: the answer comes back whole, as JSON, which the sampler
accepts from a server that does not stream.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MAX_N = 64


class ListeningServer(ThreadingHTTPServer):
    """A threading HTTP server whose listen backlog holds every connection its clients open at once.

    socketserver's default backlog is 5. The sampler and the evaluate stage open up to 64 connections
    together; while a generation holds the GIL the accept loop falls behind, the kernel drops the SYNs
    past the backlog, and each dropped connection waits out TCP's retransmission timer (1 s, 3 s, 7 s...)
    or the client's connect timeout and its retry backoff: a scorecard took minutes of idle CPU.
    """

    request_queue_size = 1024


class BadRequest(ValueError):
    """The request is not one this server can answer (HTTP 400, or `status`)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def choice_seed(seed: int, index: int, prompt_ids: list[int]) -> int:
    """The generator seed of choice `index`: a function of seed + index and the prompt's tokens only."""
    digest = hashlib.sha256(f"{seed + index}:{','.join(map(str, prompt_ids))}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def read_params(body: Any, served: str) -> dict[str, Any]:
    """Validated sampling parameters of a chat-completion body; BadRequest names the bad field."""
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    if body.get("model") not in (None, served):
        raise BadRequest(f"model {body.get('model')!r} is not served here (serving {served!r})", 404)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages: a non-empty list is required")

    def number(key: str, default: float, low: float, high: float) -> float:
        value = body.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
            raise BadRequest(f"{key}: expected a number in [{low}, {high}], got {value!r}")
        return float(value)

    n = int(number("n", 1, 1, MAX_N))
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise BadRequest(f"seed: expected an integer, got {seed!r}")
    return {
        "messages": messages,
        "n": n,
        # Unseeded requests are random, as on any server.
        "seed": seed if seed is not None else int.from_bytes(os.urandom(6), "little"),
        "temperature": number("temperature", 1.0, 0.0, 5.0),
        "top_p": number("top_p", 1.0, 1e-9, 1.0),
        "max_tokens": int(number("max_tokens", 256, 1, 1 << 20)),
        "repetition_penalty": number("repetition_penalty", 1.0, 1e-3, 10.0),
    }


class SeededGenerator:
    """Loads the model once; `complete` answers one request (callers serialise, see Handler)."""

    def __init__(self, model_path: str) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.model = AutoModelForCausalLM.from_pretrained(model_path)
        self.model.eval()
        self.eos = self.tokenizer.eos_token_id

    def prompt_ids(self, messages: list[dict[str, Any]]) -> list[int]:
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def complete(self, params: dict[str, Any]) -> tuple[list[int], list[list[int]], list[bool]]:
        """(prompt ids, each choice's new tokens without EOS, whether each ended with EOS)."""
        import torch

        try:
            ids = self.prompt_ids(params["messages"])
        except Exception as exc:  # the template rejects a conversation: the client's error
            raise BadRequest(f"messages: {exc}") from None
        n = params["n"]
        generators = [torch.Generator().manual_seed(choice_seed(params["seed"], j, ids)) for j in range(n)]
        tokens = torch.tensor([ids] * n)
        new: list[list[int]] = [[] for _ in range(n)]
        done = [False] * n
        past = None
        step_input = tokens
        with torch.no_grad():
            for _ in range(params["max_tokens"]):
                out = self.model(input_ids=step_input, past_key_values=past, use_cache=True)
                past = out.past_key_values
                logits = out.logits[:, -1, :].float()
                picks = []
                for row in range(n):
                    if done[row]:
                        picks.append(self.eos)
                        continue
                    token = self._pick(logits[row], ids + new[row], params, generators[row])
                    if token == self.eos:
                        done[row] = True
                    else:
                        new[row].append(token)
                    picks.append(token)
                if all(done):
                    break
                step_input = torch.tensor(picks).unsqueeze(1)
        return ids, new, done

    @staticmethod
    def _pick(logits: Any, context: list[int], params: dict[str, Any], generator: Any) -> int:
        import torch

        if params["repetition_penalty"] != 1.0:
            seen = torch.tensor(sorted(set(context)))
            values = logits[seen]
            logits = logits.clone()
            penalty = params["repetition_penalty"]
            logits[seen] = torch.where(values < 0, values * penalty, values / penalty)
        if params["temperature"] == 0.0:
            return int(logits.argmax())
        probs = torch.softmax(logits / params["temperature"], dim=-1)
        if params["top_p"] < 1.0:
            ordered, order = probs.sort(descending=True)
            keep = ordered.cumsum(0) - ordered < params["top_p"]  # the smallest set reaching top_p
            probs = torch.zeros_like(probs).scatter(0, order[keep], ordered[keep])
        return int(torch.multinomial(probs, 1, generator=generator))


def completion_body(
    generator: SeededGenerator, served: str, prompt: list[int], new: list[list[int]], ended: list[bool]
) -> dict[str, Any]:
    choices = [
        {
            "index": j,
            "message": {
                "role": "assistant",
                "content": generator.tokenizer.decode(tokens, skip_special_tokens=True),
            },
            "finish_reason": "stop" if stop else "length",
        }
        for j, (tokens, stop) in enumerate(zip(new, ended, strict=True))
    ]
    completion_tokens = sum(len(t) + int(stop) for t, stop in zip(new, ended, strict=True))
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": served,
        "choices": choices,
        "usage": {
            "prompt_tokens": len(prompt),
            "completion_tokens": completion_tokens,
            "total_tokens": len(prompt) + completion_tokens,
        },
    }


def make_handler(generator: SeededGenerator, served: str) -> type[BaseHTTPRequestHandler]:
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass  # one line per request would flood the log

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: int, message: str) -> None:
            self._send(status, {"error": {"message": message, "type": "invalid_request_error"}})

        def do_GET(self) -> None:
            if self.path == "/health":
                self._send(200, {"status": "ok"})
            elif self.path == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": served, "object": "model"}]})
            else:
                self._error(404, f"{self.path}: not found")

        def do_POST(self) -> None:
            if self.path != "/v1/chat/completions":
                self._error(404, f"{self.path}: not found")
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
                params = read_params(json.loads(self.rfile.read(length) or b"null"), served)
                with lock:
                    prompt, new, ended = generator.complete(params)
            except BadRequest as exc:
                self._error(exc.status, str(exc))
                return
            except ValueError as exc:  # the body is not JSON
                self._error(400, f"the body is not JSON: {exc}")
                return
            self._send(200, completion_body(generator, served, prompt, new, ended))

    return Handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="kubefusion_trainer.seeded_server", description=__doc__.split("\n")[0]
    )
    parser.add_argument("model", help="model folder; also the name requests must use")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads. Default 1 (tiny models: more mostly add overhead).",
    )
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    generator = SeededGenerator(args.model)
    server = ListeningServer((args.host, args.port), make_handler(generator, args.model))
    server.daemon_threads = True
    print(f"seeded_server: serving {args.model} on http://{args.host}:{args.port}/v1", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
