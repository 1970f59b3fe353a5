"""Fixtures for tests that mount the real imdsfs binary against scripts/imds-mock.

Every mount is unmounted on teardown, also when the test failed, and every
blocking step has a timeout. Daemon output that mentions an error, a warning
or a sanitizer report fails the test unless the test said it expects it
(``mnt.expect_log(regex)``).
"""

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data"
MOCK = REPO / "scripts" / "imds-mock"
BINARY = Path(os.environ.get("IMDSFS_BINARY", REPO / "build" / "imdsfs"))
IN_CI = bool(os.environ.get("CI"))

INSTANCES = ["aemm", "minimal", "rich"]

BAD_OUTPUT = re.compile(r"error|warning|AddressSanitizer|LeakSanitizer|runtime error|"
                        r"ThreadSanitizer|Segmentation|Aborted", re.I)


def _cannot_run(why):
    """Fail in CI (a test that cannot mount must never pass silently there)."""
    if IN_CI:
        pytest.fail(why)
    pytest.skip(why)


def pytest_sessionstart(session):
    # Tests talk to 127.0.0.1 only; inside `unshare --net` nothing else exists,
    # so a test that forgot the endpoint fails instead of leaving the machine.
    # /proc/net/dev is per network namespace (/sys/class/net is not).
    with open("/proc/net/dev") as f:
        nets = sorted(line.split(":")[0].strip() for line in f.readlines()[2:])
    if nets != ["lo"] and not os.environ.get("IMDSFS_ALLOW_HOST_NET"):
        raise pytest.UsageError(
            "run the integration tests in a private network namespace (scripts/test does: "
            "unshare --net); found interfaces %s" % nets)


class Mock:
    """A running scripts/imds-mock and its control API."""

    def __init__(self, data, host="127.0.0.1"):
        self.data = data
        self.extra_files = {}
        self.dir = tempfile.mkdtemp(prefix="imds-mock-")
        port_file = os.path.join(self.dir, "port")
        self.log = open(os.path.join(self.dir, "mock.log"), "w+b")
        self.proc = subprocess.Popen(
            ["/usr/bin/python3", str(MOCK), "--data", str(data), "--host", host,
             "--port", "0", "--port-file", port_file],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while not (os.path.exists(port_file) and open(port_file).read().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("imds-mock did not start: " + self.output())
            time.sleep(0.02)
        self.port = int(open(port_file).read())
        self.host = host
        netloc = "[%s]" % host if ":" in host else host
        self.url = "http://%s:%d" % (netloc, self.port)

    def output(self):
        self.log.flush()
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def _call(self, method, path, body=None, timeout=5):
        req = urllib.request.Request(self.url + "/_mock/" + urllib.parse.quote(path, safe="/:=@+,;"),
                                     data=body, method=method)
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.read()

    # files
    def set(self, path, value):
        if isinstance(value, str):
            value = value.encode()
        self.extra_files[path] = value
        self._call("PUT", "files/" + path, value)

    def delete(self, path):
        self._call("DELETE", "files/" + path)

    def set_listing(self, path, value):
        if isinstance(value, str):
            value = value.encode()
        self._call("PUT", "listings/" + path, value)

    # counters
    def counts(self):
        return json.loads(self._call("GET", "counts"))

    def count(self, path, method="GET"):
        return self.counts().get("%s /latest/%s" % (method, path), 0)

    def gets(self):
        return sum(v for k, v in self.counts().items() if k.startswith("GET "))

    def puts(self):
        return self.count("api/token", "PUT")

    def reset_counts(self):
        self._call("POST", "counts/reset", b"")

    def accepts(self):
        return json.loads(self._call("GET", "accepts"))["accepts"]

    # tokens and faults
    def expire_tokens(self):
        self._call("POST", "tokens/expire", b"")

    def tokens(self):
        return json.loads(self._call("GET", "tokens"))

    def fault(self, **rule):
        self._call("POST", "faults", json.dumps(rule).encode())

    def clear_faults(self):
        self._call("DELETE", "faults")

    def secrets(self):
        """Every token issued, every credential field value and the user data
        this mock has served or can serve (strings of 8+ characters)."""
        found = set(self.tokens().get("values", []))
        doc = json.loads(Path(self.data).read_text())
        files = dict(doc.get("files", {}))
        files.update(self.extra_files)
        for path, value in files.items():
            sensitive = (path == "user-data" or path.startswith("meta-data/iam/security-credentials/")
                         or path.startswith("meta-data/identity-credentials/"))
            if not sensitive:
                continue
            if isinstance(value, dict) and "json" in value:
                value = value["json"]
            elif isinstance(value, dict) and "base64" in value:
                import base64
                value = base64.b64decode(value["base64"]).decode("latin-1")
            elif isinstance(value, bytes):
                value = value.decode("latin-1")
            if isinstance(value, str):
                try:
                    value = json.loads(value)
                except ValueError:
                    pass
            if isinstance(value, dict):
                found.update(str(v) for k, v in value.items()
                             if k in ("AccessKeyId", "SecretAccessKey", "Token"))
            elif isinstance(value, str):
                found.update(line for line in value.splitlines() if len(line.strip()) >= 8)
        return {s for s in found if len(s) >= 8}

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class Mount:
    """imdsfs -f mounted on a temporary directory."""

    def __init__(self, mock, options=(), extra_args=(), env=None, endpoint=None, debug=True):
        self.mock = mock
        self.dir = tempfile.mkdtemp(prefix="imdsfs-")
        self.path = os.path.join(self.dir, "mnt")
        os.mkdir(self.path)
        self.expected = []
        self.log_path = os.path.join(self.dir, "imdsfs.log")
        self.log = open(self.log_path, "w+b")
        opts = ["endpoint=" + (endpoint or mock.url)] + list(options)
        # -d everywhere: debug logging must never print a secret, and every
        # test checks that at teardown (see secrets_in_output).
        cmd = [str(BINARY), "-f", *(["-d"] if debug else []), "-o", ",".join(opts),
               *extra_args, self.path]
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     env=full_env)
        self.wait_for_mount()

    def wait_for_mount(self, timeout=10):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("imdsfs exited with %s before mounting:\n%s"
                                   % (self.proc.returncode, self.output()))
            if os.path.ismount(self.path):
                return
            time.sleep(0.02)
        raise RuntimeError("imdsfs did not mount within %ss:\n%s" % (timeout, self.output()))

    def p(self, *parts):
        return os.path.join(self.path, *parts)

    def read(self, *parts):
        with open(self.p(*parts), "rb") as f:
            return f.read()

    def listdir(self, *parts):
        return sorted(os.listdir(self.p(*parts)))

    def output(self):
        self.log.flush()
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def expect_log(self, pattern):
        """Daemon output matching `pattern` is expected, not a failure."""
        self.expected.append(re.compile(pattern, re.I))

    def unexpected_output(self):
        bad = []
        for line in self.output().splitlines():
            if BAD_OUTPUT.search(line) and not any(p.search(line) for p in self.expected):
                bad.append(line)
        return bad

    def secrets_in_output(self):
        """Secrets (tokens, credential values, user data) found in the daemon's output."""
        out = self.output()
        return sorted(s for s in self.mock.secrets() if s in out)

    def alive(self):
        return self.proc.poll() is None

    def umount(self):
        """Unmount and assert a clean exit (leaks show up here under ASan)."""
        subprocess.run(["fusermount3", "-u", self.path], check=True, timeout=10)
        rc = self.proc.wait(timeout=20)
        assert rc == 0, "imdsfs exited %s:\n%s" % (rc, self.output())

    def cleanup(self):
        if os.path.ismount(self.path):
            subprocess.run(["fusermount3", "-u", "-z", self.path], timeout=10,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def _check_fuse():
    if not BINARY.exists():
        _cannot_run("imdsfs binary not found at %s (build first, or set IMDSFS_BINARY)" % BINARY)
    if not os.path.exists("/dev/fuse") or not shutil.which("fusermount3"):
        _cannot_run("FUSE is not available (/dev/fuse or fusermount3 missing)")


@pytest.fixture
def start_mock():
    """start_mock(name_or_path="aemm") -> Mock; stopped at teardown."""
    started = []

    def start(data="aemm", host="127.0.0.1"):
        path = Path(data)
        if not path.suffix:
            path = DATA / (data + ".json")
        m = Mock(path, host=host)
        started.append(m)
        return m

    yield start
    for m in started:
        m.stop()


@pytest.fixture
def mount_fs(request, start_mock):
    """mount_fs(mock, options=(), ...) -> Mount; unmounted and checked at teardown.

    Depends on start_mock so that mocks outlive the mounts (the teardown
    compares the daemon's output with the mock's secrets).
    """
    _check_fuse()
    mounts = []

    def do_mount(mock, options=(), **kw):
        m = Mount(mock, options, **kw)
        mounts.append(m)
        return m

    yield do_mount
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    problems = []
    for m in mounts:
        try:
            if m.alive() and os.path.ismount(m.path):
                m.umount()
        except Exception as e:  # still clean up, then report
            problems.append("unmount of %s failed: %s" % (m.path, e))
        bad = m.unexpected_output()
        if bad and not failed:
            problems.append("unexpected daemon output:\n" + "\n".join(bad))
        try:
            leaked = m.secrets_in_output()
        except Exception as e:  # the mock is gone: nothing to compare with
            leaked = []
        if leaked:
            problems.append("the daemon's output holds secrets: %s" % leaked)
        m.cleanup()
    if problems:
        pytest.fail("\n".join(problems))


class Watchdog:
    """After `limit` seconds, kill every process of `daemons` (objects with
    a .proc) still running: that aborts their FUSE connections and
    unblocks every reader, so a hung request fails its test, never the
    run. Use as a context manager; .fired says whether it had to."""

    def __init__(self, limit, daemons):
        self.limit, self.daemons, self.fired = limit, daemons, False
        self.timer = threading.Timer(limit, self._fire)
        self.timer.daemon = True

    def _fire(self):
        self.fired = True
        for d in self.daemons:
            if d.proc.poll() is None:
                d.proc.kill()

    def __enter__(self):
        self.timer.start()
        return self

    def __exit__(self, *exc):
        self.timer.cancel()


@pytest.fixture
def mnt(request, mount_fs):
    """mount_fs with a Watchdog of the test module's WATCHDOG_S seconds
    (default 60)."""
    limit = getattr(request.module, "WATCHDOG_S", 60)
    made = []

    def do_mount(mock, **kw):
        m = mount_fs(mock, **kw)
        made.append(m)
        return m

    with Watchdog(limit, made) as dog:
        yield do_mount
    if dog.fired:
        pytest.fail("watchdog: the test ran over %ss; its imdsfs was killed" % limit)


@pytest.fixture(params=INSTANCES)
def instance(request):
    """The name of each test instance under tests/data, in turn."""
    return request.param


@pytest.fixture
def mocked(start_mock, mount_fs):
    """(mock, mount) on the aemm instance with default options."""
    mock = start_mock("aemm")
    return mock, mount_fs(mock)


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


def imdsfs_pids(marker):
    """Live imdsfs processes whose command line mentions `marker`."""
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % d, "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if argv and os.path.basename(argv[0]) == b"imdsfs" and \
                any(marker.encode() in a for a in argv[1:]):
            pids.append(int(d))
    return pids


def run_threads(n, fn, timeout, at_once=False):
    """fn(i) in n threads (released together through a barrier when
    `at_once`); their results, an exception where fn raised. Fails, never
    hangs, when a thread is still blocked after `timeout` seconds."""
    barrier = threading.Barrier(n, timeout=timeout) if at_once else None
    results = [None] * n

    def worker(i):
        try:
            if barrier:
                barrier.wait()
            results[i] = fn(i)
        except BaseException as e:  # reported by the caller
            results[i] = e

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    stuck = sum(t.is_alive() for t in threads)
    assert stuck == 0, "%d of %d threads still blocked after %ss" % (stuck, n, timeout)
    return results


def read_fd(fd, chunk=65536):
    """read(2) until EOF, with no fstat."""
    out = []
    while True:
        c = os.read(fd, chunk)
        if not c:
            return b"".join(out)
        out.append(c)


def read_errno(path):
    """The errno reading `path` fails with, or None if it reads."""
    try:
        with open(path, "rb") as f:
            f.read()
        return None
    except OSError as e:
        return e.errno


def load_instance(name):
    """The data file of a test instance, values decoded to bytes by IMDS path."""
    doc = json.loads((DATA / (name + ".json")).read_text())
    files = {}
    for path, value in doc["files"].items():
        if isinstance(value, str):
            files[path] = value.encode()
        elif "base64" in value:
            import base64
            files[path] = base64.b64decode(value["base64"])
        elif "json" in value:
            files[path] = json.dumps(value["json"], indent=2).encode()
    return doc, files
