"""Keys and rate limits hold across real server processes on one database, and a server that would be open
to the network without keys refuses to start.

Two replicas share one database (a SQLite file, or a PostgreSQL schema), as two hosts behind a load
balancer would. A client cannot multiply its rate limit by the number of replicas, and a key revoked
with the CLI stops working on both at once.
"""

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.e2e.server_process import ServerFactory, free_port
from tests.tenancy import bearer, create_key, run_cli

BURST = 10
RATE = 0.5
"""Requests per second refilled: a second of requests adds at most one to the burst."""
START_TIMEOUT = 30.0


def test_a_key_gets_one_burst_however_many_replicas_it_spreads_its_requests_over(
    server_factory: ServerFactory, new_database: Callable[[], str]
) -> None:
    url = new_database()
    key = create_key(url, "acme")
    limits = {"OPTIM_TENANT_REQUESTS_PER_SECOND": str(RATE), "OPTIM_TENANT_BURST": str(BURST)}
    replicas = [server_factory(url, env=limits) for _ in range(2)]

    started = time.monotonic()
    statuses: list[list[int]] = [[], []]
    with httpx.Client(headers=bearer(key), timeout=30) as client:
        for index in range(4 * BURST):
            replica = index % 2
            statuses[replica].append(client.get(f"{replicas[replica].base_url}/v1/tenant").status_code)
    elapsed = time.monotonic() - started

    admitted = sum(status == 200 for replica in statuses for status in replica)
    assert set(statuses[0] + statuses[1]) <= {200, 429}, statuses
    assert admitted <= BURST + RATE * elapsed + 1, f"{admitted} admitted in {elapsed:.1f} s: {statuses}"
    assert all(429 in replica for replica in statuses), f"both replicas refuse once the burst is spent: {statuses}"


def test_a_revoked_key_stops_working_on_every_replica_at_once(
    server_factory: ServerFactory, new_database: Callable[[], str]
) -> None:
    url = new_database()
    key = create_key(url, "acme")
    replicas = [server_factory(url) for _ in range(2)]
    for replica in replicas:
        assert httpx.get(f"{replica.base_url}/v1/tenant", headers=bearer(key)).status_code == 200

    run_cli(url, "keys", "revoke", key.split("_")[1])

    for replica in replicas:
        refused = httpx.get(f"{replica.base_url}/v1/sessions", headers=bearer(key))
        assert refused.status_code == 401, refused.text
        assert refused.headers["www-authenticate"].startswith("Bearer")


def serve(database_url: str, host: str, port: int, *flags: str) -> subprocess.Popen[str]:
    """``optim-service serve`` as an operator runs it, its log read from its stdout."""
    command = [sys.executable, "-m", "service", "serve", "--host", host, "--port", str(port)]
    command += ["--database-url", database_url, *flags]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_a_server_bound_beyond_loopback_without_keys_refuses_to_start_and_names_the_way_out(
    new_database: Callable[[], str],
) -> None:
    process = serve(new_database(), "0.0.0.0", free_port())
    output, _ = process.communicate(timeout=START_TIMEOUT)

    assert process.returncode != 0, output
    assert "optim-service keys create --tenant" in output
    assert "--insecure-no-auth" in output


def started_output(process: subprocess.Popen[str], port: int, log: Path) -> str:
    """What the server logged once it answers ``/healthz``; it is stopped then."""
    deadline = time.monotonic() + START_TIMEOUT
    try:
        while True:
            assert process.poll() is None, f"the server exited: {process.communicate()[0]}"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not become healthy"
            time.sleep(0.1)
    finally:
        process.terminate()
    output, _ = process.communicate(timeout=START_TIMEOUT)
    log.write_text(output)
    return output


def test_servers_that_may_start_say_in_their_log_whether_they_need_keys(
    new_database: Callable[[], str], tmp_path: Path
) -> None:
    keyed = new_database()
    create_key(keyed, "acme")
    outputs = {}
    for name, host, database_url, flags in [
        ("loopback", "127.0.0.1", new_database(), ()),
        ("insecure", "0.0.0.0", new_database(), ("--insecure-no-auth",)),
        ("keyed", "0.0.0.0", keyed, ()),
    ]:
        port = free_port()
        outputs[name] = started_output(serve(database_url, host, port, *flags), port, tmp_path / f"{name}.log")

    assert "WITHOUT authentication on 127.0.0.1 (loopback only)" in outputs["loopback"]
    assert "WITHOUT authentication on 0.0.0.0" in outputs["insecure"]
    assert "--insecure-no-auth" in outputs["insecure"]
    assert "every request to /v1 needs an API key" in outputs["keyed"]
