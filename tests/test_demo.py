"""The demo command: a real run on the standard library, its output, report and errors."""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from kaygraph_otel_dashboard import demo
from kaygraph_otel_dashboard.demo_pipeline import (
    analyse_source,
    list_source_files,
    standard_library_dir,
)
from tests.helpers import free_port


def demo_environment() -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("KAYGRAPH_OTEL", "OTEL_"))
    }
    env["PYTHONPATH"] = ""
    return env


def test_demo_runs_on_pocketflow_with_dashboard(tmp_path: Path) -> None:
    port = free_port()
    process = subprocess.run(
        [sys.executable, "-m", "kaygraph_otel_dashboard.cli", "demo", "--runs", "2",
         "--files", "60", "--interval", "0", "--port", str(port), "--report-dir", str(tmp_path),
         "--exit"],
        capture_output=True, text=True, timeout=90, env=demo_environment(), cwd=tmp_path,
    )  # fmt: skip
    assert process.returncode == 0, process.stderr
    lines = process.stdout.splitlines()
    assert lines[0].startswith("Running the standard-library census on pocketflow")
    assert f"Dashboard: http://127.0.0.1:{port}" in process.stdout
    runs = [line for line in lines if line.startswith("run ")]
    assert len(runs) == 2
    reports = sorted(tmp_path.glob("stdlib-census-*.json"))
    assert len(reports) == 2
    summary = json.loads(reports[0].read_text())["summary"]
    assert summary["files"] == 60
    assert summary["parsed"] + summary["failed"] == 60


def test_demo_port_in_use_names_port(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = subprocess.run(
            [sys.executable, "-m", "kaygraph_otel_dashboard.cli", "demo", "--runs", "1",
             "--port", str(port)],
            capture_output=True, text=True, timeout=60, env=demo_environment(), cwd=tmp_path,
        )  # fmt: skip
    assert process.returncode == 2
    assert str(port) in process.stderr
    assert "--port" in process.stderr
    assert "Traceback" not in process.stderr


# Parsing the standard library's tests meets deliberate invalid escape sequences.
@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::SyntaxWarning")
def test_demo_on_kaygraph_records_parse_failures(tmp_path: Path) -> None:
    failing = []
    for path in list_source_files(standard_library_dir()):
        try:
            analyse_source(path)
        except (SyntaxError, ValueError):
            failing.append(path)
    if not failing:
        pytest.skip("every standard-library file of this interpreter parses")
    args = argparse.Namespace(
        port=0,
        runs=1,
        redis_url=None,
        no_dashboard=True,
        interval=0,
        files=0,
        report_dir=str(tmp_path),
    )
    # The conftest puts the kaygraph fake on the import path, so the demo takes the KayGraph branch.
    framework, _ = demo.choose_framework()
    assert framework == "kaygraph"
    assert demo.run_demo(args) == 0
    report = json.loads(next(tmp_path.glob("stdlib-census-*.json")).read_text())
    assert report["summary"]["failed"] == len(failing)
    assert {Path(f["path"]) for f in report["failures"]} == set(failing)
    assert all(
        f["error"].startswith(("SyntaxError", "ValueError", "UnicodeDecodeError"))
        for f in report["failures"]
    )


def test_demo_keeps_dashboard_after_runs_until_stopped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import threading

    import httpx

    from tests.helpers import wait_for

    port = free_port()
    args = argparse.Namespace(
        port=port, runs=1, redis_url=None, no_dashboard=False, interval=0, files=20,
        report_dir=str(tmp_path), exit=False,
    )  # fmt: skip
    stop = threading.Event()
    outcome: list[int] = []
    thread = threading.Thread(target=lambda: outcome.append(demo.run_demo(args, stop)), daemon=True)
    thread.start()
    try:
        assert wait_for(
            lambda: "runs finished" in capsys.readouterr().out, timeout=60, interval=0.2
        )
        health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
        assert health.status_code == 200
        assert health.json()["runs"] == 1
    finally:
        stop.set()
        thread.join(30)
    assert outcome == [0]


def test_demo_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    import signal

    import httpx

    from tests.helpers import wait_for

    port = free_port()
    # --files 0 parses the whole standard library, so the signal arrives while the
    # async workflow runs inside asyncio.run.
    process = subprocess.Popen(
        [sys.executable, "-m", "kaygraph_otel_dashboard.cli", "demo", "--files", "0",
         "--port", str(port), "--report-dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=demo_environment(),
        cwd=tmp_path,
    )  # fmt: skip

    def running_runs() -> int:
        try:
            health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).json()
        except httpx.HTTPError:
            return 0
        return int(health.get("runs", 0))

    try:
        assert wait_for(lambda: running_runs() >= 1, timeout=60, interval=0.2)
        assert list(tmp_path.glob("stdlib-census-*.json")) == []
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert "run 1:" not in stdout
