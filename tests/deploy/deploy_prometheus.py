"""A real Prometheus on 127.0.0.1 (the Debian package's binary, run by hand), and the
operator's metrics registry served over HTTP for it to scrape."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import prometheus_client
import yaml

LOOPBACK = "127.0.0.1"
SCRAPE_JOB = "modelpress-operator"  # what the chart's ServiceMonitor names the job
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class Prometheus:
    url: str
    pid: int

    def api(self, path: str, **params: str) -> Any:
        """`data` of an HTTP API answer; a failed query fails the test with its error."""
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=30) as reply:
            answer = json.loads(reply.read())
        assert answer["status"] == "success", answer
        return answer["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        return list(self.api("query", query=promql)["result"])

    def query_range(self, promql: str, start: float, end: float) -> list[dict[str, Any]]:
        return list(self.api("query_range", query=promql, start=str(start), end=str(end),
                             step="1s")["result"])

    def wait_for(self, promql: str, timeout_s: float) -> list[dict[str, Any]]:
        """The first non-empty answer to an instant query."""
        deadline = time.monotonic() + timeout_s
        while not (result := self.query(promql)):
            assert time.monotonic() < deadline, f"{promql} had no data after {timeout_s} s"
            time.sleep(0.5)
        return result


def prometheus_binary() -> str:
    binary = shutil.which("prometheus")
    assert binary, "no prometheus binary: apt-get install -y --no-install-recommends prometheus"
    return binary


@contextmanager
def serving(registry: prometheus_client.CollectorRegistry) -> Iterator[str]:
    """The registry's /metrics on a free loopback port; yields host:port."""
    port = free_port()
    server, thread = prometheus_client.start_http_server(port, addr=LOOPBACK, registry=registry)
    try:
        yield f"{LOOPBACK}:{port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@contextmanager
def running_prometheus(target: str, rule_files: list[Path], workdir: Path) -> Iterator[Prometheus]:
    """Prometheus scraping `target` every second as the job modelpress-operator."""
    config = workdir / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(path) for path in rule_files],
        "scrape_configs": [{"job_name": SCRAPE_JOB,
                            "static_configs": [{"targets": [target]}]}],
    }), encoding="utf-8")
    port = free_port()
    log = (workdir / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [prometheus_binary(), f"--config.file={config}",
         f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address={LOOPBACK}:{port}",
         "--log.level=warn"], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    server = Prometheus(f"http://{LOOPBACK}:{port}", process.pid)
    try:
        _wait_ready(server, process, workdir / "prometheus.log")
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _wait_ready(server: Prometheus, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        assert process.poll() is None, f"prometheus exited: {log.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(f"{server.url}/-/ready", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        assert time.monotonic() < deadline, f"prometheus not ready: {log.read_text()[-3000:]}"
        time.sleep(0.2)
