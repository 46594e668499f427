"""The launcher's real OpenAI-compatible server on loopback: load, bad policies, faults, SIGTERM.

Every test here starts `python -m serving.launch` in a child process (vLLM's API server plus
its engine-core process) and talks HTTP to it on 127.0.0.1.
"""

from __future__ import annotations

import json
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from agents.paths import LM_DIR, SHIPPED_POLICY
from envs.traces import PromptFactory
from serving.server_process import ServerProcess, completion_request
from tests import serving_faults
from tests.serving_client import Completion, complete, metric

pytestmark = pytest.mark.engine

NUM_REQUESTS = 200
CLIENTS = 32


def load_requests(seed: int = 0) -> list[dict]:
    """Mixed prompt and output lengths; every other request streams."""
    factory = PromptFactory(LM_DIR / "target", seed=seed)
    rng = np.random.default_rng(seed)
    return [
        {
            "prompt": factory.make(int(rng.integers(4, 600))).token_ids,
            "max_tokens": int(rng.integers(1, 200)),
            "stream": i % 2 == 1,
        }
        for i in range(NUM_REQUESTS)
    ]


def run_load(url: str, requests: list[dict], clients: int = CLIENTS) -> list[Completion]:
    with (
        httpx.Client(timeout=300, limits=httpx.Limits(max_connections=clients)) as client,
        ThreadPoolExecutor(clients) as pool,
    ):
        futures = [
            pool.submit(complete, client, url, r["prompt"], r["max_tokens"], stream=r["stream"])
            for r in requests
        ]
        return [f.result() for f in futures]


@pytest.fixture(scope="module")
def policy_server(tmp_path_factory):
    """The server as `python -m serving.launch --policy <shipped policy>` starts it."""
    log = tmp_path_factory.mktemp("policy_server") / "server.log"
    with ServerProcess(["--policy", str(SHIPPED_POLICY)], log_path=log) as server:
        yield server


def test_load_every_request_answers_with_the_plain_engines_tokens(policy_server, tmp_path):
    requests = load_requests()
    with ServerProcess(["--controller", "nospec"], log_path=tmp_path / "plain.log") as plain:
        expected = run_load(plain.url, requests)
    got = run_load(policy_server.url, requests)

    for request, reference, answer in zip(requests, expected, got, strict=True):
        assert reference.status == 200, reference.error
        assert answer.status == 200, answer.error
        assert answer.completion_tokens == request["max_tokens"]
        # Speculation is lossless: greedy text equals the plain engine's, streamed or not.
        assert answer.text == reference.text

    metrics = policy_server.metrics()
    assert metric(metrics, "turbospec:controller_info", deciding="ppo") == 1
    steps = metric(metrics, "turbospec:k_chosen_count")
    assert steps > NUM_REQUESTS / CLIENTS
    # The policy speculated: the k it chose, summed over the steps, is not 0.
    assert metric(metrics, "turbospec:k_chosen_sum") > 0
    assert metric(metrics, "vllm:spec_decode_num_draft_tokens_total") > 0
    assert "policy loaded from" in policy_server.log()


def test_invalid_requests_get_a_4xx_and_the_server_keeps_serving(policy_server):
    url = f"{policy_server.url}/v1/completions"
    with httpx.Client(timeout=120) as client:
        in_flight = threading.Thread(
            target=lambda: results.append(complete(client, policy_server.url, "def f(", 150))
        )
        results: list[Completion] = []
        in_flight.start()

        bad_json = client.post(
            url,
            content=b'{"prompt": "x", "max_tokens": ',
            headers={"content-type": "application/json"},
        )
        assert 400 <= bad_json.status_code < 500
        negative = client.post(url, json=completion_request("x", -1))
        assert negative.status_code == 400
        assert "max_tokens" in negative.text
        too_long = client.post(url, json=completion_request([11] * 1100, 4))
        assert too_long.status_code == 400
        assert "context length" in too_long.text or "maximum" in too_long.text

        in_flight.join(120)
        assert results and results[0].status == 200 and results[0].completion_tokens == 150
        after = complete(client, policy_server.url, "import os\n", 8)
        assert after.status == 200 and after.completion_tokens == 8


def test_server_binds_loopback_only(policy_server):
    port = f"{policy_server.port:04X}"
    listening = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as handle:
            for line in list(handle)[1:]:
                local, state = line.split()[1], line.split()[3]
                if state == "0A" and local.endswith(f":{port}"):  # 0A: LISTEN
                    listening.append(local)
    assert listening == ["0100007F:" + port]  # 127.0.0.1, little-endian hex


def _broken_policy(kind: str, folder) -> str:
    if kind == "missing":
        return str(folder / "no-such-policy")
    policy = folder / "policy"
    shutil.copytree(SHIPPED_POLICY, policy)
    if kind == "corrupt":
        (policy / "policy.safetensors").write_bytes(b"\x00not a safetensors file")
    else:
        meta = json.loads((policy / "policy.json").read_text())
        meta["k_max"] = 2  # made for another engine
        (policy / "policy.json").write_text(json.dumps(meta))
    return str(policy)


@pytest.mark.parametrize("kind", ["missing", "corrupt", "mismatch"])
def test_a_bad_policy_serves_with_the_analytic_controller(kind, tmp_path):
    reason = f"load:artifact_{kind}"
    policy = _broken_policy(kind, tmp_path)
    with ServerProcess(["--policy", policy], log_path=tmp_path / "server.log") as server:
        with httpx.Client(timeout=120) as client:
            answer = complete(client, server.url, "class A:\n", 32)
        assert answer.status == 200 and answer.completion_tokens == 32
        metrics = server.metrics()
        log = server.log()
    assert f"fallback goodput decides ({reason})" in log
    assert metric(metrics, "turbospec:controller_switches_total", reason=reason) == 1
    assert metric(metrics, "turbospec:fallback_decisions_total", reason=reason) >= 32 / 5
    assert metric(metrics, "turbospec:controller_info", deciding="fallback") == 1


def test_a_raising_controller_falls_back_and_sigterm_then_drains_the_streams(tmp_path):
    # Two faults on one server: the policy's inference raises mid-serving (the fallback takes
    # over and every request completes), then SIGTERM arrives with streams in flight.
    args = [
        "--policy", str(SHIPPED_POLICY),
        "--scheduler-cls", "tests.serving_faults.RaisingPolicyScheduler",
    ]  # fmt: skip
    requests = [
        {"prompt": f"def f{i}(x):\n", "max_tokens": 48, "stream": i % 2 == 0} for i in range(24)
    ]
    server = ServerProcess(args, log_path=tmp_path / "server.log")
    try:
        server.wait_ready()
        answers = run_load(server.url, requests, clients=12)
        metrics = server.metrics()
        log = server.log()
        for answer in answers:
            assert answer.status == 200, answer.error
            assert answer.completion_tokens == 48
        assert "policy inference failed" in log and "injected inference fault" in log
        assert metric(metrics, "turbospec:controller_switches_total", reason="inference_error") == 1
        fallbacks = metric(metrics, "turbospec:fallback_decisions_total", reason="inference_error")
        steps = metric(metrics, "turbospec:k_chosen_count")
        # The policy decided the first steps, the fallback every step after the fault.
        assert fallbacks > 0
        assert steps >= serving_faults.RAISE_FROM + fallbacks - 1
        assert metric(metrics, "turbospec:controller_info", deciding="fallback") == 1
        _sigterm_lets_streams_in_flight_finish(server)
    finally:
        server.stop(timeout_s=90)


def _sigterm_lets_streams_in_flight_finish(server: ServerProcess) -> None:
    """SIGTERM with eight streams in flight: each runs to its end (or ends cleanly), and the
    server exits 0."""
    results: dict[int, tuple[int, list[str]] | Exception] = {}
    streaming = threading.Barrier(9, timeout=120)

    def stream(i: int) -> None:
        body = completion_request(f"def g{i}(", 400, stream=True)
        try:
            with (
                httpx.Client(timeout=120) as client,
                client.stream("POST", f"{server.url}/v1/completions", json=body) as response,
            ):
                lines = response.iter_lines()
                received = [next(lines)]
                streaming.wait()
                received += [line for line in lines if line]
            results[i] = (response.status_code, received)
        except httpx.HTTPError as err:  # a clean error: the connection ends, nothing hangs
            results[i] = err

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    streaming.wait()
    code = server.stop(timeout_s=90)
    for thread in threads:
        thread.join(30)

    assert code == 0, server.log()[-3000:]
    assert not any(thread.is_alive() for thread in threads)
    assert len(results) == 8
    for result in results.values():
        if isinstance(result, Exception):
            continue
        status, lines = result
        # Drained (see serving.launch.SHUTDOWN_DRAIN_S): each stream ran to its end.
        assert status == 200 and lines[-1] == "data: [DONE]"
        assert sum(line.startswith("data: {") for line in lines) >= 400 / 8
