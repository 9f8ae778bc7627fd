"""Fixtures: the demo gateway (``fanout-tools demo``: embedded Kafka, route ``demo`` split by
``track``, the dead-letter topic ``demo-events.dlq``) on free loopback ports, with none of its
own subscribers, so the subscriber under test gets every message."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


def tools_bin() -> Path:
    """``$FANOUT_TOOLS``, or the workspace's debug build."""
    return Path(os.environ.get("FANOUT_TOOLS") or REPO / "target/debug/fanout-tools")


def fanoutctl_bin() -> Path:
    """``$FANOUTCTL``, or the workspace's debug build."""
    return Path(os.environ.get("FANOUTCTL") or REPO / "target/debug/fanoutctl")


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(condition: Callable[[], bool], timeout: float, what: str, context: Callable[[], str] = str) -> None:
    """Polls ``condition`` until it holds; fails the test naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{context()}")
        time.sleep(0.05)


@dataclass
class Demo:
    """One running demo gateway."""

    #: ``127.0.0.1:PORT`` of the Subscribe API.
    address: str
    #: ``127.0.0.1:PORT`` of the admin API (its token is ``demo-token``).
    admin: str
    process: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path

    def output(self) -> str:
        """What it printed so far (for failure messages)."""
        return f"--- demo stdout ---\n{self.stdout.read_text()}--- demo stderr (tail) ---\n" + "\n".join(
            self.stderr.read_text(errors="replace").splitlines()[-30:]
        )

    def fanoutctl(self, *args: str) -> str:
        """Runs ``fanoutctl`` against this demo's admin API; returns its output."""
        binary = fanoutctl_bin()
        if not binary.is_file():
            pytest.fail(f"{binary} is missing: `cargo build -p fanoutctl`, or set FANOUTCTL")
        command = [str(binary), "--gateway", self.admin, "--token", "demo-token", *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, env={"PATH": os.environ["PATH"]})
        assert done.returncode == 0, f"{command} failed:\n{done.stdout}\n{done.stderr}\n{self.output()}"
        return done.stdout

    def produced(self) -> int:
        """How many messages the demo has produced so far (its live lines, one a second)."""
        counts = re.findall(r"^\[\s*\d+s\] produced=(\d+)", self.stdout.read_text(), re.M)
        return int(counts[-1]) if counts else 0

    def report(self, timeout: float = 90) -> dict[str, int]:
        """Waits for the demo to end and returns its last line's figures (``produced``,
        ``acked``, ``dead_lettered``, ``committed``, ``lost``, ``duplicates``, ...)."""
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the demo did not end within {timeout} s\n{self.output()}")
        line = next((l for l in self.stdout.read_text().splitlines() if l.startswith("demo: ")), None)
        assert line is not None, f"the demo's report line\n{self.output()}"
        return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line)}


@pytest.fixture
def demo_gateway(tmp_path: Path) -> Iterator[Callable[..., Demo]]:
    """Starts demo gateways: ``demo_gateway(duration=5, rate=500, partitions=4)``; each is
    killed at teardown if still running."""
    binary = tools_bin()
    if not binary.is_file():
        pytest.fail(f"{binary} is missing: `cargo build -p fanout-tools`, or set FANOUT_TOOLS")
    started: list[Demo] = []

    def start(duration: int = 5, rate: int = 500, partitions: int = 4) -> Demo:
        n = len(started)
        listen, admin = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
        stdout, stderr = tmp_path / f"demo{n}.out", tmp_path / f"demo{n}.err"
        args = [str(binary), "demo", "--duration", str(duration), "--subscribers", "0", "--rate", str(rate)]
        args += ["--partitions", str(partitions), "--listen", listen, "--admin-listen", admin]
        with stdout.open("wb") as out, stderr.open("wb") as err:
            process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        demo = Demo(listen, admin, process, stdout, stderr)
        started.append(demo)
        wait_for(
            lambda: "gateway on " in stdout.read_text() or process.poll() is not None,
            60,
            "the demo gateway to come up",
            demo.output,
        )
        assert process.poll() is None, f"the demo runs\n{demo.output()}"
        return demo

    yield start
    for demo in started:
        if demo.process.poll() is None:
            demo.process.kill()
        demo.process.wait()
