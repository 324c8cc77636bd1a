"""The fault campaign's viewer rows: a busy or impossible port is one sentence and a non-zero exit before
"serving on", and the idle exit is announced, waits for open tabs, and can be switched off."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("trame_slicer", reason="the viewer extra (trame-slicer) is not installed")
import aiohttp  # comes with trame (wslink's server)
from DualDViewLib import cli as view_cli

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 120  # the page and the Slicer scene take seconds to build on a loaded machine


def test_a_busy_port_is_one_sentence_before_serving(capsys) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = view_cli.main(["--port", str(port)])
    out, err = capsys.readouterr()
    assert code == view_cli.EXIT_BAD_INPUT
    assert "serving on" not in out
    assert err.count("\n") == 1 and f"port {port}" in err and "already in use" in err and "--port" in err


@pytest.mark.parametrize("port", ["99999", "-1", "65536", "http"])
def test_an_impossible_port_is_refused_by_the_parser(port: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        view_cli.main(["--port", port])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "argument --port" in err and "0-65535" in err and "Traceback" not in err


@pytest.mark.parametrize("seconds", ["-5", "soon"])
def test_a_bad_idle_exit_is_refused_by_the_parser(seconds: str, capsys) -> None:
    with pytest.raises(SystemExit):
        view_cli._parser().parse_args(["--idle-exit", seconds])
    assert "argument --idle-exit" in capsys.readouterr().err


def test_the_idle_exit_is_announced_with_how_to_change_it() -> None:
    assert view_cli._parser().parse_args([]).idle_exit == view_cli.DEFAULT_IDLE_EXIT_S
    assert "--idle-exit 0" in view_cli.idle_note(300) and "Ctrl+C" in view_cli.idle_note(0)
    message = view_cli.idle_exit_message(300)
    assert "300 s" in message and "--idle-exit 0" in message


def _start_viewer(tmp_path: Path, *args: str) -> tuple[subprocess.Popen, int, Path]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(str(ROOT / d) for d in
                                                       ("DualDSynthesis", "DualDTraining", "DualDView")))
    log = tmp_path / "viewer.log"
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "DualDViewLib.cli", "--port", "0", "--device", "cpu", *args],
                                   cwd=tmp_path, env=env, stdout=out, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if "serving on http://127.0.0.1:" in line:
                port = int(line.split("127.0.0.1:")[1].split("/")[0])
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    return process, port, log
                except OSError:
                    pass
        if process.poll() is not None:
            pytest.fail(f"duald-view ended before serving: {log.read_text()[-2000:]}")
        time.sleep(0.3)
    process.kill()
    pytest.fail(f"duald-view did not serve within {START_TIMEOUT_S} s")


async def _hold_a_tab(port: int, seconds: float, process: subprocess.Popen) -> bool:
    """Keep one websocket (what a tab holds) open for ``seconds``; whether the viewer stayed up meanwhile."""
    async with aiohttp.ClientSession() as client, client.ws_connect(f"http://127.0.0.1:{port}/ws"):
        await asyncio.sleep(seconds)
        return process.poll() is None


def test_the_viewer_stops_when_idle_saying_so_but_not_while_a_tab_is_open(tmp_path: Path) -> None:
    idle_s = 2
    process, port, log = _start_viewer(tmp_path, "--idle-exit", str(idle_s))
    try:
        assert "it stops 2 s after the last tab closes" in log.read_text()
        assert asyncio.run(_hold_a_tab(port, 3 * idle_s, process)), "it stopped while a tab was open"
        process.wait(timeout=60)
    finally:
        process.kill()
    text = log.read_text()
    assert process.returncode == 0
    assert view_cli.idle_exit_message(idle_s) in text


def test_idle_exit_zero_keeps_it_running(tmp_path: Path) -> None:
    process, _port, log = _start_viewer(tmp_path, "--idle-exit", "0")
    try:
        time.sleep(3)
        assert process.poll() is None
        assert "runs until Ctrl+C" in log.read_text()
    finally:
        process.terminate()
        process.wait(timeout=30)
