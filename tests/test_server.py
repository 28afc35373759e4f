"""Tests for tools.server.EmbeddedServer.

The unit tests stand in for vLLM with tiny Python child processes; the test marked
``vllm`` starts the real server with the default model (minutes on a cold compile cache).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

import tools.server as server_mod
from tools.default_model import DEFAULT_MODEL_NAME
from tools.server import EmbeddedServer, ServerError

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


@pytest.fixture
def fake_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Make the default model resolve to a dummy folder without converting anything."""
    model_dir = tmp_path / "default-model"
    model_dir.mkdir()

    def fake_resolve(model: str | None) -> str:
        if model in (None, "", "default", DEFAULT_MODEL_NAME):
            return str(model_dir)
        return model

    monkeypatch.setattr(server_mod, "resolve_model", fake_resolve)
    return model_dir


def _arg(cmd: list[str], flag: str) -> str:
    return cmd[cmd.index(flag) + 1]


def _pid_alive(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists():
        try:
            text = stat.read_text()
        except OSError:
            return False
        return text[text.rfind(")") + 2 :].split()[0] not in ("Z", "X")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# --- command line and environment -------------------------------------------------------


def test_command_default_model(fake_default: Path, tmp_path: Path) -> None:
    srv = EmbeddedServer(log_path=tmp_path / "vllm.log", dtype="float32")
    cmd = srv.command()
    assert cmd[:3] == [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
    assert _arg(cmd, "--model") == str(fake_default)
    assert _arg(cmd, "--served-model-name") == DEFAULT_MODEL_NAME
    assert srv.model_name == DEFAULT_MODEL_NAME
    assert _arg(cmd, "--host") == "127.0.0.1"
    assert _arg(cmd, "--port") == str(srv.port)
    assert _arg(cmd, "--dtype") == "float32"
    assert _arg(cmd, "--max-model-len") == "2048"
    assert "--enable-lora" not in cmd
    assert srv.base_url == f"http://127.0.0.1:{srv.port}/v1"
    assert 0 < srv.port < 65536
    assert not srv.running


@pytest.mark.parametrize("alias", ["default", DEFAULT_MODEL_NAME])
def test_default_aliases(fake_default: Path, tmp_path: Path, alias: str) -> None:
    srv = EmbeddedServer(alias, log_path=tmp_path / "vllm.log")
    assert srv.model_path == str(fake_default)
    assert srv.model_name == DEFAULT_MODEL_NAME


def test_command_custom_model_lora_and_extra(tmp_path: Path) -> None:
    srv = EmbeddedServer(
        "org/some-model",
        log_path=tmp_path / "vllm.log",
        port=8123,
        max_model_len=1024,
        dtype="bfloat16",
        lora_modules={"safety": "/ckpt/safety", "odd": "/ckpt/a,b"},
        max_lora_rank=16,
        extra_args=["--seed", "7"],
    )
    cmd = srv.command()
    assert _arg(cmd, "--model") == "org/some-model"
    assert _arg(cmd, "--served-model-name") == "org/some-model"
    assert srv.port == 8123 and _arg(cmd, "--port") == "8123"
    assert srv.base_url == "http://127.0.0.1:8123/v1"
    assert _arg(cmd, "--dtype") == "bfloat16"
    assert _arg(cmd, "--max-model-len") == "1024"
    assert "--enable-lora" in cmd
    assert _arg(cmd, "--max-lora-rank") == "16"
    i = cmd.index("--lora-modules")
    assert cmd[i + 1] == "safety=/ckpt/safety"
    # A comma would be misread by vLLM's name=path parser, so that item goes as JSON.
    assert json.loads(cmd[i + 2]) == {"name": "odd", "path": "/ckpt/a,b"}
    assert cmd[-2:] == ["--seed", "7"]


def test_served_model_name_override(tmp_path: Path) -> None:
    srv = EmbeddedServer("/models/x", log_path=tmp_path / "l.log", served_model_name="x")
    assert srv.model_name == "x"
    assert _arg(srv.command(), "--served-model-name") == "x"


def test_cpu_environment_and_dtype(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(server_mod, "is_cpu_build", lambda: True)
    monkeypatch.setattr(server_mod, "_cpu_list", lambda: "0-1")
    for var in (
        "VLLM_CPU_OMP_THREADS_BIND",
        "VLLM_CPU_NUM_OF_RESERVED_CPU",
        "VLLM_USE_AOT_COMPILE",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "4")  # the user's choice wins
    srv = EmbeddedServer("/models/x", log_path=tmp_path / "l.log")
    assert srv.dtype == "float32"
    env = srv.environment()
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "0-1"
    assert env["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0"
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "4"
    assert env["VLLM_USE_AOT_COMPILE"] == "0"
    assert env["PATH"] == os.environ["PATH"]


def test_gpu_environment_and_dtype(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(server_mod, "is_cpu_build", lambda: False)
    for var in ("VLLM_CPU_OMP_THREADS_BIND", "VLLM_CPU_NUM_OF_RESERVED_CPU"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    monkeypatch.delenv("VLLM_USE_AOT_COMPILE", raising=False)
    srv = EmbeddedServer("/models/x", log_path=tmp_path / "l.log")
    assert srv.dtype == "auto"
    env = srv.environment()
    assert not any(k.startswith("VLLM_CPU_") for k in env)
    assert "VLLM_USE_AOT_COMPILE" not in env


def test_cpu_list_matches_affinity() -> None:
    cpus = sorted(os.sched_getaffinity(0))
    expanded: list[int] = []
    for part in server_mod._cpu_list().split(","):
        lo, _, hi = part.partition("-")
        expanded += range(int(lo), int(hi or lo) + 1)
    assert expanded == cpus


# --- lifecycle with stand-in processes -------------------------------------------------

# Spawns a grandchild in the same process group, prints, then sleeps; optionally ignores
# SIGTERM so that stop() has to escalate to SIGKILL.
_SLEEPER = """
import signal, subprocess, sys, time
if sys.argv[1] == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
print("sleeper up", child.pid, flush=True)
time.sleep(600)
"""


def _fake_server(tmp_path: Path, mode: str = "polite", **kwargs: object) -> EmbeddedServer:
    srv = EmbeddedServer("/models/fake", log_path=tmp_path / "fake.log", **kwargs)  # type: ignore[arg-type]
    srv.command = lambda: [sys.executable, "-c", _SLEEPER, mode]  # type: ignore[method-assign]
    return srv


def _group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                text = (entry / "stat").read_text()
            except OSError:
                continue
            fields = text[text.rfind(")") + 2 :].split()
            if fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
                pids.append(int(entry.name))
    return pids


def test_stop_never_started_is_noop(tmp_path: Path) -> None:
    srv = EmbeddedServer("/models/x", log_path=tmp_path / "l.log")
    srv.stop()
    srv.stop(timeout=0.1)
    assert not srv.running
    assert srv.pid is None
    assert not (tmp_path / "l.log").exists()


def test_bad_model_path_fails_fast(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "vllm.log"
    srv = EmbeddedServer(str(tmp_path / "no-such-model"), log_path=log, startup_timeout=120)
    began = time.monotonic()
    with pytest.raises(ServerError) as info:
        srv.start()
    elapsed = time.monotonic() - began
    message = str(info.value)
    assert "exited with code" in message
    assert "no-such-model" in message  # from the log tail
    assert len(message.splitlines()) <= server_mod.LOG_TAIL_LINES + 3
    assert elapsed < 90, f"took {elapsed:.0f} s; should fail as soon as the process exits"
    assert not srv.running
    assert log.exists()
    srv.stop()  # still a no-op


def test_startup_timeout_stops_process_group(tmp_path: Path) -> None:
    srv = _fake_server(tmp_path, startup_timeout=2)
    with pytest.raises(ServerError, match="not ready after 2 s") as info:
        srv.start()
    assert "sleeper up" in str(info.value)
    assert not srv.running


def test_stop_kills_whole_group_and_escalates(tmp_path: Path) -> None:
    srv = _fake_server(tmp_path, "stubborn")
    srv._wait_ready = lambda began: time.sleep(1.0)  # type: ignore[method-assign]
    srv.start()
    pid = srv.pid
    assert pid is not None and srv.running
    assert os.getpgid(pid) == pid  # its own process group
    assert len(_group_pids(pid)) == 2  # server + grandchild
    began = time.monotonic()
    srv.stop(timeout=1.0)
    assert time.monotonic() - began < 15
    assert not srv.running
    assert _group_pids(pid) == []
    srv.stop()  # idempotent


def test_keyboard_interrupt_during_start_stops_child(tmp_path: Path) -> None:
    srv = _fake_server(tmp_path)
    seen: dict[str, int] = {}

    def interrupted(began: float) -> None:
        assert srv.pid is not None
        seen["pid"] = srv.pid
        time.sleep(0.5)
        raise KeyboardInterrupt

    srv._wait_ready = interrupted  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        srv.start()
    assert not srv.running
    assert _group_pids(seen["pid"]) == []


def test_port_in_use_is_refused(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        srv = EmbeddedServer("/models/x", log_path=tmp_path / "l.log", port=port)
        with pytest.raises(ServerError, match="already in use"):
            srv.start()
    assert not srv.running


# --- startup progress, stop signals, parent death ----------------------------------------

# Answers every GET with 200 on the port given (a stand-in that becomes "ready"), after
# starting a grandchild in the same process group.
_READY = """
import http.server, subprocess, sys
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b'{"data": []}')
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def _ready_server(tmp_path: Path, **kwargs: object) -> EmbeddedServer:
    srv = EmbeddedServer("/models/ready", log_path=tmp_path / "ready.log", **kwargs)  # type: ignore[arg-type]
    srv.command = lambda: [sys.executable, "-c", _READY, str(srv.port)]  # type: ignore[method-assign]
    return srv


def test_startup_progress_lines_when_stderr_is_not_a_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(server_mod, "STARTUP_PROGRESS_EVERY", 0.0)  # a line every poll
    with pytest.raises(ServerError):
        _fake_server(tmp_path, startup_timeout=2).start()
    lines = [ln for ln in capfd.readouterr().err.splitlines() if ln.startswith("starting vLLM")]
    assert len(lines) >= 2, lines
    assert all("(model /models/fake)" in ln and str(tmp_path / "fake.log") in ln for ln in lines)
    assert lines[0].startswith("starting vLLM (model /models/fake), 0 s,")


def test_startup_progress_says_when_the_server_is_up(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    with _ready_server(tmp_path) as srv:
        assert srv.running
    err = capfd.readouterr().err
    assert "starting vLLM (model /models/ready), 0 s, log: " in err
    assert "vLLM is up after" in err and srv.base_url in err


def test_no_startup_progress_when_disabled(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    with _ready_server(tmp_path, progress=False):
        pass
    assert capfd.readouterr().err == ""


def test_stop_signals_raise_keyboard_interrupt_inside_the_block() -> None:
    before = {sig: signal.getsignal(sig) for sig in server_mod.STOP_SIGNALS}
    for sig in server_mod.STOP_SIGNALS:
        with pytest.raises(KeyboardInterrupt), server_mod.stop_signals_interrupt():
            os.kill(os.getpid(), sig)
            time.sleep(5)  # the signal interrupts this at once
    assert {sig: signal.getsignal(sig) for sig in server_mod.STOP_SIGNALS} == before


def test_a_second_interrupt_does_not_cut_the_teardown_short(tmp_path: Path) -> None:
    """Ctrl-C pressed again while stop() waits: the whole group still goes, then the
    KeyboardInterrupt comes."""
    srv = _fake_server(tmp_path, "stubborn")  # ignores SIGTERM: stop() waits, then SIGKILLs
    srv._wait_ready = lambda began: time.sleep(1.0)  # type: ignore[method-assign]
    srv.start()
    pid = srv.pid
    assert pid is not None
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        srv.stop(timeout=2.0)
    timer.join()
    assert _group_pids(pid) == []


_SERVE_STANDIN = """
import sys
from tools.server import EmbeddedServer
sys.path.insert(0, sys.argv[2])
from test_server import _READY
EmbeddedServer.command = lambda self: [sys.executable, "-c", _READY, str(self.port)]
from experiment.cli import main
sys.exit(main(["serve", "--model", "/models/standin", "--log", sys.argv[1]]))
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_serve_stops_its_server_group_on_sigterm_and_sighup(tmp_path: Path, sig: int) -> None:
    """`data-advisor serve` (with a stand-in for vLLM) killed: no process of its group is left."""
    import psutil

    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVE_STANDIN, str(tmp_path / "serve.log"), str(TESTS)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )
    tree: list[psutil.Process] = []
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # "serving ... at URL": the server is up
        assert "serving /models/standin at" in line, (line, proc.stderr and proc.stderr.read())
        tree = psutil.Process(proc.pid).children(recursive=True)
        assert len(tree) >= 2  # the stand-in server and its child
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        gone, alive = psutil.wait_procs(tree, timeout=10)
        assert alive == [], alive
        assert proc.returncode == 0, err
        assert "stopped the vLLM server" in err
    finally:
        if proc.poll() is None:
            proc.kill()
        for child in tree:  # what a failed test would otherwise leave behind
            _group_kill(child.pid)


_KILLED_PARENT = """
import sys, time
sys.path.insert(0, sys.argv[2])
from test_server import _fake_server
from pathlib import Path
srv = _fake_server(Path(sys.argv[1]), "plain")
srv._wait_ready = lambda began: None
srv.start()
print(srv.pid, flush=True)
time.sleep(600)
"""


def test_server_gets_sigterm_when_its_parent_is_killed(tmp_path: Path) -> None:
    """SIGKILL leaves no chance to clean up: the parent-death signal stops the server."""
    import psutil

    parent = subprocess.Popen(
        [sys.executable, "-c", _KILLED_PARENT, str(tmp_path), str(TESTS)],
        stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )
    assert parent.stdout is not None
    pid = int(parent.stdout.readline())
    try:
        child = psutil.Process(pid)
        parent.kill()
        parent.wait(10)
        gone, alive = psutil.wait_procs([child], timeout=10)
        assert alive == []
    finally:
        _group_kill(pid)


def _group_kill(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# --- the real thing ---------------------------------------------------------------------


@pytest.mark.vllm
def test_real_server_chat_completion(tmp_path: Path) -> None:
    log = tmp_path / "vllm.log"
    srv = EmbeddedServer(log_path=log, startup_timeout=900)
    with srv:
        assert srv.running
        pid = srv.pid
        assert pid is not None
        print(f"\nvLLM startup took {srv.startup_seconds:.1f} s")
        models = httpx.get(f"{srv.base_url}/models", timeout=10).json()
        assert [m["id"] for m in models["data"]] == [DEFAULT_MODEL_NAME]
        response = httpx.post(
            f"{srv.base_url}/chat/completions",
            json={
                "model": srv.model_name,
                "messages": [{"role": "user", "content": "Say hello."}],
                "max_tokens": 8,
                "temperature": 0,
            },
            timeout=120,
        )
        response.raise_for_status()
        answer = response.json()["choices"][0]["message"]["content"]
        assert answer and answer.strip()
    assert not srv.running
    assert not _pid_alive(pid)
    assert _group_pids(pid) == []
    assert _port_free(srv.port)


@pytest.mark.vllm
def test_real_serve_stopped_by_sigterm_leaves_no_vllm_process(tmp_path: Path) -> None:
    """`data-advisor serve &` then `kill`: vLLM's API server and engine processes all go."""
    import queue

    import psutil

    err_path = tmp_path / "serve.err"
    with err_path.open("w") as err_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "experiment.cli", "serve", "--log", str(tmp_path / "vllm.log")],
            stdout=subprocess.PIPE, stderr=err_file, text=True, cwd=ROOT,
        )
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    threading.Thread(target=lambda: [lines.put(ln) for ln in proc.stdout], daemon=True).start()
    tree: list[psutil.Process] = []
    try:
        url = ""
        while not url:
            line = lines.get(timeout=900)  # a cold compile cache takes minutes
            if "DATA_ADVISOR_BASE_URL=" in line:
                url = line.split("DATA_ADVISOR_BASE_URL=")[1].split()[0]
        tree = psutil.Process(proc.pid).children(recursive=True)
        assert any("vllm" in " ".join(p.cmdline()) for p in tree), tree
        assert httpx.get(f"{url}/models", timeout=10).status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0
        gone, alive = psutil.wait_procs(tree, timeout=30)
        assert alive == [], [p.cmdline() for p in alive]
        port = url.rsplit(":", 1)[1].split("/")[0]
        assert _port_free(int(port))
        err = err_path.read_text()
        assert "starting vLLM (model SmolLM2-135M-Instruct), 0 s, log: " in err
        assert "stopped the vLLM server" in err
    finally:
        if proc.poll() is None:
            proc.kill()
        for child in tree:
            _group_kill(child.pid)


def test_one_rule_for_the_default_model_aliases() -> None:
    """The server, the model resolver and the experiment agree on what names the default."""
    import experiment.stages
    from tools.default_model import is_default_model, resolve_model

    assert experiment.stages.is_default_model is is_default_model
    for alias in (None, "", "default", DEFAULT_MODEL_NAME):
        assert is_default_model(alias)
        assert server_mod.served_name(alias) == DEFAULT_MODEL_NAME
    for other in ("HuggingFaceTB/SmolLM2-360M-Instruct", "./models/x", "Default"):
        assert not is_default_model(other)
        assert server_mod.served_name(other) == other
        assert resolve_model(other) == other
