"""HTTP helpers for the server tests: completions (streamed or not) and /metrics samples."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

from serving.server_process import completion_request, stream_chunk


@dataclass
class Completion:
    """What one completion request got back."""

    status: int
    text: str = ""
    completion_tokens: int = -1
    error: str = ""


def complete(
    client: httpx.Client, url: str, prompt, max_tokens: int, *, stream: bool = False
) -> Completion:
    """A greedy completion of exactly `max_tokens` tokens (EOS ignored)."""
    body = completion_request(prompt, max_tokens, stream=stream)
    if not stream:
        response = client.post(f"{url}/v1/completions", json=body)
        if response.status_code != 200:
            return Completion(response.status_code, error=response.text)
        data = response.json()
        return Completion(200, data["choices"][0]["text"], data["usage"]["completion_tokens"])
    with client.stream("POST", f"{url}/v1/completions", json=body) as response:
        if response.status_code != 200:
            return Completion(response.status_code, error=response.read().decode())
        result = Completion(200)
        for chunk in filter(None, map(stream_chunk, response.iter_lines())):
            for choice in chunk.get("choices", ()):
                result.text += choice["text"]
            if chunk.get("usage"):
                result.completion_tokens = chunk["usage"]["completion_tokens"]
        return result


def metric(text: str, name: str, **labels: str) -> float:
    """The value of sample `name` with `labels` in a /metrics text (0.0 if absent)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0
