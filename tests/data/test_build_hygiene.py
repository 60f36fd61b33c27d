"""Build hygiene: pool workers die with their build, two processes can ensure one dataset at once,
and the files a build writes get the umask's normal mode."""
from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

psutil = pytest.importorskip("psutil")

REPO = Path(__file__).resolve().parents[2]


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", TQDM_DISABLE="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def _alive(procs):
    out = []
    for p in procs:
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="checks Linux process trees")
def test_pool_workers_exit_when_the_build_is_killed(tmp_path):
    """SIGKILL of ``medalign data build`` leaves no render worker behind (they used to stay,
    orphaned, blocked on the pool's queue)."""
    cmd = [sys.executable, "-m", "medalign_lite.cli", "data", "build", "iu-phantom", "--out", str(tmp_path / "ds"),
           "--size", "224", "--workers", "2", "--quiet"]  # every report: far longer than the test waits
    proc = subprocess.Popen(cmd, env=_env(), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    workers = []
    try:
        parent = psutil.Process(proc.pid)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            workers = parent.children(recursive=True)
            if len(workers) >= 2:
                break
            time.sleep(0.1)
        assert len(workers) >= 2, f"the build started no workers: {proc.stderr.read().decode()[-2000:]}"
        time.sleep(0.5)  # the workers are rendering now
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 5
        while _alive(workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(workers), f"workers {[p.pid for p in _alive(workers)]} outlived the killed build"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for p in _alive(workers):  # only the processes this test started
            p.kill()
        proc.stderr.close()


_ENSURE = """
import json, sys, time
from pathlib import Path
import medalign_lite.data.builders as builders
from medalign_lite.data import ensure_dataset

log, go, out = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
real = builders.get_builder

def get_builder(name):
    build = real(name)
    def logged(*args, **kwargs):
        with open(log, "a") as f:
            f.write("start\\n")
        time.sleep(1.0)  # widen the window in which the other process would start a build too
        return build(*args, **kwargs)
    return logged

builders.get_builder = get_builder
while not go.exists():
    time.sleep(0.01)
print(ensure_dataset("iu-phantom", size=32, limit=6, out=out, progress=False))
"""


@pytest.mark.skipif(sys.platform == "win32", reason="the build lock is fcntl.flock")
def test_two_processes_ensure_one_dataset(tmp_path):
    from medalign_lite.data.manifest import load_manifest

    script, log, go, out = tmp_path / "ensure.py", tmp_path / "builds.log", tmp_path / "go", tmp_path / "data" / "ds"
    script.write_text(_ENSURE)
    procs = [subprocess.Popen([sys.executable, str(script), str(log), str(go), str(out)], env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    time.sleep(0.5)
    go.touch()
    results = [p.communicate(timeout=240) for p in procs]
    for p, (stdout, stderr) in zip(procs, results):
        assert p.returncode == 0, stderr[-3000:]
    paths = {stdout.strip().splitlines()[-1] for stdout, _ in results}
    assert paths == {str(out / "manifest.csv")}
    assert log.read_text().splitlines() == ["start"], "both processes built the dataset"
    assert len(load_manifest(out / "manifest.csv")) == 6
    stamp = json.loads((out / "build.json").read_text())
    assert (stamp["name"], stamp["limit"], stamp["size"]) == ("iu-phantom", 6, 32)
    leftovers = [p.name for p in out.rglob("*") if ".tmp" in p.name]
    assert leftovers == []


def test_ensure_dataset_stamp_mode_and_rebuild(tmp_path, monkeypatch):
    from medalign_lite.data import ensure_dataset

    old = os.umask(0o027)
    try:
        path = ensure_dataset("iu-phantom", size=32, limit=3, out=tmp_path / "ds", progress=False)
    finally:
        os.umask(old)
    for p in (path, path.parent / "build.json", path.parent / "build_info.json"):
        if p.exists():
            assert stat.S_IMODE(p.stat().st_mode) == 0o640, p
    # an unchanged request costs one read; another request rebuilds and re-stamps
    from medalign_lite.data import builders

    monkeypatch.setattr(builders, "get_builder", lambda name: pytest.fail("must not rebuild"))
    assert ensure_dataset("iu-phantom", size=32, limit=3, out=tmp_path / "ds", progress=False) == path
    monkeypatch.undo()
    ensure_dataset("iu-phantom", size=32, limit=4, out=tmp_path / "ds", progress=False)
    assert json.loads((tmp_path / "ds" / "build.json").read_text())["limit"] == 4
