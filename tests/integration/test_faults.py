"""Issue 7: a slow, broken or lying IMDS never takes the mount down.

SPEC.md, "Errors" and "Caching". Every fault of scripts/imds-mock is a test
that asserts, while the fault lasts:
  - the errno the reader gets (404 ENOENT, 400 EIO, 403 EACCES, 5xx/429 EIO
    after retries, timeouts ETIMEDOUT, refused connections ECONNREFUSED,
    malformed bodies EIO),
  - how many requests it cost (final errors are not retried, transient ones
    are retried `retries` times),
  - exactly one log line that says what failed,
  - that the daemon lives and answers a cached file at once,
and then that nothing wrong was cached: once the fault is gone, the next
read (no rm) gets the right bytes.

Then bounds (a reader never waits longer than timeout * (retries + 1) plus
backoff), isolation (a hanging request never blocks readers of cached
values), and a stress run (IMDSFS_STRESS_SECONDS, default 30): readers,
rm and changing values at once; no crash, no hang, no mixed value, no
memory growth.
"""

import errno
import json
import os
import random
import re
import socket
import threading
import time

import pytest

from conftest import load_instance, read_errno, read_fd, run_threads

DOC = "dynamic/instance-identity/document"
IAM = "meta-data/iam/info"
TARGET = "ami_id"                     # never read before a fault: cold
TARGET_SRC = "meta-data/ami-id"
AEMM_MAC = "0e:49:61:0f:c3:11"
FAST = 0.2                            # "at once", in seconds

_, AEMM = load_instance("aemm")
_, RICH = load_instance("rich")


def text_file(body):
    return body if body == b"" or body.endswith(b"\n") else body + b"\n"


# Cached before each fault; each must answer in < FAST while it lasts.
CACHED = {
    "instance_id": text_file(AEMM["meta-data/instance-id"]),
    "instance_type": text_file(AEMM["meta-data/instance-type"]),
    "ami_launch_index": text_file(AEMM["meta-data/ami-launch-index"]),
    "private_ipv4": text_file(AEMM["meta-data/local-ipv4"]),
    "network/interfaces/%s/vpc_id" % AEMM_MAC:
        text_file(AEMM["meta-data/network/interfaces/macs/%s/vpc-id" % AEMM_MAC]),
    "network/interfaces/%s/subnet_id" % AEMM_MAC:
        text_file(AEMM["meta-data/network/interfaces/macs/%s/subnet-id" % AEMM_MAC]),
}
CACHED_DIRS = ["network/interfaces", "network/interfaces/" + AEMM_MAC]

# Uncached top-level files of aemm with a plain value each (cold targets for
# the tests that need several at once).
COLD = {
    "ami_id": "meta-data/ami-id",
    "ami_manifest_path": "meta-data/ami-manifest-path",
    "availability_zone": "meta-data/placement/availability-zone",
    "domain": "meta-data/services/domain",
    "instance_life_cycle": "meta-data/instance-life-cycle",
    "kernel_id": "meta-data/kernel-id",
    "mac": "meta-data/mac",
    "partition": "meta-data/services/partition",
    "private_hostname": "meta-data/local-hostname",
    "public_hostname": "meta-data/public-hostname",
    "public_ipv4": "meta-data/public-ipv4",
    "reservation_id": "meta-data/reservation-id",
}


# --- helpers ---------------------------------------------------------------

def slurp(path):
    with open(path, "rb") as f:
        return f.read()


def timed(fn, *args):
    """(result or OSError, seconds)."""
    t = time.monotonic()
    try:
        r = fn(*args)
    except OSError as e:
        r = e
    return r, time.monotonic() - t


def timed_errno(path):
    t = time.monotonic()
    e = read_errno(path)
    return e, time.monotonic() - t


def ename(e):
    return errno.errorcode.get(e, repr(e)) if isinstance(e, int) else repr(e)


def warm(mnt):
    """Token, listings and CACHED in the daemon's cache."""
    mnt.listdir()
    for d in CACHED_DIRS:
        mnt.listdir(*d.split("/"))
    for rel, want in CACHED.items():
        assert mnt.read(rel) == want, rel


def assert_cached_fast(mnt, mock=None):
    """Every CACHED file and CACHED_DIRS listing answers at once, right,
    without asking IMDS."""
    before = mock.counts() if mock else None
    slow = []
    for rel, want in CACHED.items():
        got, dt = timed(slurp, mnt.p(rel))
        assert got == want, "cached %s read %r while IMDS is faulty" % (rel, got)
        if dt >= FAST:
            slow.append("%s: %.3fs" % (rel, dt))
    for d in CACHED_DIRS:
        got, dt = timed(os.listdir, mnt.p(d))
        assert not isinstance(got, OSError), "cached directory %s: %r" % (d, got)
        if dt >= FAST:
            slow.append("ls %s: %.3fs" % (d, dt))
    assert not slow, "cached values were slow while IMDS is faulty: %s" % slow
    if mock:
        assert mock.counts() == before, "reading cached values asked IMDS"
    assert mnt.alive()


def log_mark(mnt):
    return len(mnt.output())


def problems_since(mnt, mark):
    """The daemon's error and warning lines logged after `mark`."""
    return [l for l in mnt.output()[mark:].splitlines()
            if re.search(r"\b(error|warning)\b", l, re.I) and not re.match(r"imdsfs: debug:", l)]


def assert_one_log_line(mnt, mark, pattern, what):
    """Exactly one error/warning line since `mark`, and it matches `pattern`."""
    lines = problems_since(mnt, mark)
    assert len(lines) == 1 and re.search(pattern, lines[0]), (
        "%s: want exactly one log line matching %r, got %d:\n%s"
        % (what, pattern, len(lines), "\n".join(lines)))


def assert_no_log_line(mnt, mark, what):
    lines = problems_since(mnt, mark)
    assert not lines, "%s: unexpected log lines:\n%s" % (what, "\n".join(lines))


def closed_port():
    """A loopback TCP port nothing listens on."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS for pid %d" % pid)


def sanitized(pid):
    """Whether the daemon runs under ASan/TSan (their allocators keep freed
    memory in quarantine, so RSS says nothing about leaks there)."""
    with open("/proc/%d/maps" % pid) as f:
        if re.search(r"lib[at]san", f.read()):
            return True
    with open("/proc/%d/exe" % pid, "rb") as f:
        exe = f.read()
    return b"__asan_init" in exe or b"__tsan_init" in exe


class Gate:
    """A TCP forwarder on a fixed loopback port to the mock, that can be
    shut (connections reset, new ones refused) and opened again on the
    same port: IMDS going away and coming back."""

    def __init__(self, target_port):
        self.target = target_port
        self.lock = threading.Lock()
        self.conns = set()
        self.listener = None
        self.port = 0
        self.open()

    def open(self):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        self.port = s.getsockname()[1]
        s.listen(64)
        s.settimeout(0.05)
        self.listener = s
        self.running = True
        self.thread = threading.Thread(target=self._accept, args=(s,), daemon=True)
        self.thread.start()

    def _accept(self, s):
        while self.running:
            try:
                c, _ = s.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            c.settimeout(None)
            try:
                up = socket.create_connection(("127.0.0.1", self.target), timeout=5)
                up.settimeout(None)
            except OSError:
                c.close()
                continue
            with self.lock:
                self.conns.update((c, up))
            for a, b in ((c, up), (up, c)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, a, b):
        try:
            while True:
                data = a.recv(65536)
                if not data:
                    break
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def shut(self):
        self.running = False
        self.thread.join(5)
        self.listener.close()
        with self.lock:
            conns, self.conns = self.conns, set()
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self):
        if self.running:
            self.shut()


@pytest.fixture
def gate():
    gates = []

    def make(port):
        g = Gate(port)
        gates.append(g)
        return g
    yield make
    for g in gates:
        g.close()


def fault_then_recover(mock, mnt, rule, want_errno, want_requests, log, retries):
    """The common shape: TARGET is cold, `rule` applies to its source."""
    warm(mnt)
    mock.fault(path=TARGET_SRC, **rule)
    mock.reset_counts()
    if log:
        mnt.expect_log(log)
    mark = log_mark(mnt)
    got, dt = timed_errno(mnt.p(TARGET))
    assert got == want_errno, "%r: reader got %s, want %s" % (rule, ename(got), ename(want_errno))
    n = mock.count(TARGET_SRC)
    if isinstance(want_requests, tuple):
        assert want_requests[0] <= n <= want_requests[1], (
            "%r cost %d GETs, want %d..%d" % (rule, n, *want_requests))
    else:
        assert n == want_requests, "%r cost %d GETs, want %d" % (rule, n, want_requests)
    if log:
        assert_one_log_line(mnt, mark, log, repr(rule))
    else:
        assert_no_log_line(mnt, mark, repr(rule))
    # SPEC: worst case timeout * (retries + 1) plus backoff; none of these
    # faults waits for a timeout.
    assert dt < 1.0 * (retries + 1) + 0.1 * (2 ** retries) + 0.5, "%r took %.2fs" % (rule, dt)

    # While the fault lasts: alive, cached values at once, the failure not
    # cached (the next read asks again).
    assert mnt.alive()
    assert_cached_fast(mnt, mock)
    mock.reset_counts()
    assert read_errno(mnt.p(TARGET)) == want_errno, "second read while the fault lasts"
    assert mock.count(TARGET_SRC) >= 1, "the failure was cached: the second read asked nothing"

    # Fault gone: the next read is right, at the right size, with one GET.
    mock.clear_faults()
    mock.reset_counts()
    want = text_file(AEMM[TARGET_SRC])
    assert mnt.read(TARGET) == want, "after the fault cleared"
    assert os.stat(mnt.p(TARGET)).st_size == len(want)
    assert mock.count(TARGET_SRC) == 1
    assert mnt.alive()


# --- HTTP statuses -----------------------------------------------------------

R = 3  # the default retries

STATUS_CASES = [
    # status, errno, requests with the defaults, log line
    (404, errno.ENOENT, 1, None),
    (400, errno.EIO, 1, r"GET /latest/meta-data/ami-id failed: HTTP 400"),
    (403, errno.EACCES, 1, r"GET /latest/meta-data/ami-id failed: HTTP 403"),
    (500, errno.EIO, R + 1, r"GET /latest/meta-data/ami-id failed: HTTP 500.*retries"),
    (502, errno.EIO, R + 1, r"GET /latest/meta-data/ami-id failed: HTTP 502.*retries"),
    (503, errno.EIO, R + 1, r"GET /latest/meta-data/ami-id failed: HTTP 503.*retries"),
    (504, errno.EIO, R + 1, r"GET /latest/meta-data/ami-id failed: HTTP 504.*retries"),
    (429, errno.EIO, R + 1, r"GET /latest/meta-data/ami-id failed: HTTP 429.*retries"),
]


@pytest.mark.parametrize("status,want,requests,log", STATUS_CASES,
                         ids=[str(c[0]) for c in STATUS_CASES])
def test_status(start_mock, mount_fs, status, want, requests, log):
    mock = start_mock("aemm")
    mnt = mount_fs(mock)
    fault_then_recover(mock, mnt, {"status": status}, want, requests, log, R)


@pytest.mark.parametrize("retries", [0, 1, 5])
def test_retries_option_counts(start_mock, mount_fs, retries):
    """`retries=N`: a 503 costs N + 1 GETs; a 400 still one."""
    mock = start_mock("aemm")
    mnt = mount_fs(mock, ["retries=%d" % retries])
    fault_then_recover(mock, mnt, {"status": 503}, errno.EIO, retries + 1,
                       r"GET /latest/meta-data/ami-id failed: HTTP 503", retries)
    mock.fault(path="meta-data/ami-manifest-path", status=400)
    mock.reset_counts()
    mnt.expect_log(r"GET /latest/meta-data/ami-manifest-path failed: HTTP 400")
    assert read_errno(mnt.p("ami_manifest_path")) == errno.EIO
    assert mock.count("meta-data/ami-manifest-path") == 1


TRANSIENT_ONCE = [
    {"status": 500}, {"status": 503}, {"status": 429},
    {"action": "close_before"}, {"action": "hang"},
]


@pytest.mark.parametrize("rule", TRANSIENT_ONCE, ids=lambda r: str(r.get("status", r.get("action"))))
def test_transient_once_is_retried(start_mock, mount_fs, rule):
    """One transient failure: the retry gets the value; the reader never
    sees the failure and the log stays quiet (only a final failure is logged)."""
    mock = start_mock("aemm")
    mnt = mount_fs(mock, ["timeout=300"])
    warm(mnt)
    mock.fault(path=TARGET_SRC, count=1, **rule)
    mock.reset_counts()
    mark = log_mark(mnt)
    got, dt = timed(slurp, mnt.p(TARGET))
    assert got == text_file(AEMM[TARGET_SRC]), "%r once: the reader got %r" % (rule, got)
    assert mock.count(TARGET_SRC) == 2, "%r once: %d GETs" % (rule, mock.count(TARGET_SRC))
    assert dt < 0.3 + 0.1 + 0.5
    assert_no_log_line(mnt, mark, "%r once, then success" % rule)


# --- broken connections and bodies -------------------------------------------

BROKEN_CASES = [
    # action, errno, requests (a range: a broken connection may be retried).
    # close_before on a reused keep-alive connection looks to libcurl like a
    # connection the server closed while idle, which it reopens once by
    # itself: one request more than the daemon's own attempts.
    ("close_before", errno.EIO, (1, R + 2)),
    ("close_mid", errno.EIO, (1, R + 1)),
    ("truncate", errno.EIO, (1, R + 1)),
    ("oversize", errno.EIO, 1),
]


@pytest.mark.parametrize("action,want,requests", BROKEN_CASES, ids=[c[0] for c in BROKEN_CASES])
def test_broken_response(start_mock, mount_fs, action, want, requests):
    mock = start_mock("aemm")
    mnt = mount_fs(mock)
    log = r"GET /latest/meta-data/ami-id failed: "
    if action == "oversize":
        log += r".*(larger|1 ?MiB|1048576)"
    fault_then_recover(mock, mnt, {"action": action}, want, requests, log, R)


def test_oversize_body_is_refused_not_truncated(start_mock, mount_fs):
    """3 MiB of 'A' for a raw file: EIO, never the first 1 MiB of it."""
    mock = start_mock("aemm")
    mnt = mount_fs(mock)
    warm(mnt)
    mnt.expect_log(r"GET /latest/meta-data/ami-manifest-path failed: .*(larger|1048576)")
    mock.fault(path="meta-data/ami-manifest-path", action="oversize")
    raw = mnt.p("raw", "meta-data", "ami-manifest-path")
    assert read_errno(raw) == errno.EIO
    assert read_errno(mnt.p("ami_manifest_path")) == errno.EIO
    assert_cached_fast(mnt, mock)
    mock.clear_faults()
    assert slurp(raw) == AEMM["meta-data/ami-manifest-path"]
    assert os.stat(raw).st_size == len(AEMM["meta-data/ami-manifest-path"])


@pytest.mark.parametrize("action", ["oversize", "close_mid", "truncate"])
def test_broken_listing(start_mock, mount_fs, action):
    """A listing that breaks: EIO for ls, nothing cached, ls works after."""
    mock = start_mock("aemm")
    mnt = mount_fs(mock)
    warm(mnt)
    listing = "meta-data/public-keys/"
    mnt.expect_log(r"GET /latest/meta-data/public-keys/ failed")
    mock.fault(path=listing, action=action)
    mark = log_mark(mnt)
    got, _ = timed(os.listdir, mnt.p("public_keys"))
    assert isinstance(got, OSError) and got.errno == errno.EIO, "ls public_keys: %r" % (got,)
    assert_one_log_line(mnt, mark, r"GET /latest/meta-data/public-keys/ failed", action)
    assert_cached_fast(mnt, mock)
    mock.clear_faults()
    assert mnt.listdir("public_keys") == ["my-public-key"]
    assert mnt.read("public_keys", "my-public-key", "openssh_key") == text_file(
        AEMM["meta-data/public-keys/0/openssh-key"])


# --- malformed JSON ------------------------------------------------------------

JSON_DOCS = {
    DOC: ["instance_identity_document", "region", "account_id"],
    IAM: ["iam_info", "instance_profile_arn", "instance_profile_id", "instance_profile_name"],
}


@pytest.mark.parametrize("source", sorted(JSON_DOCS))
def test_garbage_json_document(start_mock, mount_fs, source):
    """A body that does not parse: EIO for the document and everything
    derived from it, logged, never cached."""
    mock = start_mock("aemm")
    mnt = mount_fs(mock)
    warm(mnt)
    mnt.expect_log(r"%s: the body is not valid JSON" % re.escape(source))
    mock.fault(path=source, action="garbage")
    mock.reset_counts()
    for i, name in enumerate(JSON_DOCS[source]):
        mark = log_mark(mnt)
        got = read_errno(mnt.p(name))
        assert got == errno.EIO, "%s with a garbage %s: %s" % (name, source, ename(got))
        assert_one_log_line(mnt, mark, r"%s: the body is not valid JSON" % re.escape(source), name)
        # Not cached: every reader asks IMDS again, once (a 200 is final).
        assert mock.count(source) == i + 1, "%s: %d GETs of %s after %d readers" % (
            name, mock.count(source), source, i + 1)
    assert_cached_fast(mnt, mock)
    assert mnt.alive()

    mock.clear_faults()
    doc = json.loads(AEMM[source])
    assert mnt.read(JSON_DOCS[source][0]) == text_file(AEMM[source])
    field = {"region": "region", "account_id": "accountId",
             "instance_profile_arn": "InstanceProfileArn",
             "instance_profile_id": "InstanceProfileId"}
    for name in JSON_DOCS[source][1:]:
        want = doc[field[name]] if name in field else doc["InstanceProfileArn"].rsplit("/", 1)[-1]
        assert mnt.read(name) == want.encode() + b"\n", name
    assert slurp(mnt.p("raw", *source.split("/"))) == AEMM[source]


def test_garbage_document_seen_through_raw_first(start_mock, mount_fs):
    """raw/ shows the garbage as served; once IMDS is right again, the very
    next read of region is right (the bad body did not stay behind)."""
    mock = start_mock("aemm")
    mnt = mount_fs(mock)
    warm(mnt)
    mnt.expect_log(r"the body is not valid JSON")
    mock.fault(path=DOC, action="garbage")
    raw = mnt.p("raw", *DOC.split("/"))
    got = timed(slurp, raw)[0]
    assert isinstance(got, bytes) or (isinstance(got, OSError) and got.errno == errno.EIO), got
    assert read_errno(mnt.p("region")) == errno.EIO
    mock.clear_faults()
    got = timed(slurp, mnt.p("region"))[0]
    assert got == b"us-east-1\n", "region after IMDS recovered: %r" % (got,)


LYING_DOCS = [
    # document body, file, errno
    (b"[]", "region", errno.EIO),
    (b'"just a string"', "region", errno.EIO),
    (b'{"region": 5}', "region", errno.EIO),
    (b'{"region": {"name": "x"}}', "region", errno.EIO),
    (b'{"region": "eu-west-1"} trailing', "region", errno.EIO),
    (b'{"accountId": "1"}', "region", errno.EIO),     # a missing member: malformed
    (b'{"region": null}', "region", errno.ENOENT),    # null: the library's None
    (b"{" * 5000, "region", errno.EIO),
    (b"[" * 100000 + b"]" * 100000, "instance_identity_document", errno.EIO),
    (b'{"region": "\xff\xfe"}', "instance_identity_document", None),
]


@pytest.mark.parametrize("body,name,want", LYING_DOCS, ids=[str(i) for i in range(len(LYING_DOCS))])
def test_lying_document(start_mock, mount_fs, body, name, want):
    """JSON of the wrong shape: a clean errno, never a crash; the right
    document is read again (no rm) once IMDS serves it."""
    mock = start_mock("aemm")
    mnt = mount_fs(mock)
    warm(mnt)
    mnt.expect_log(r"dynamic/instance-identity/document: ")
    mock.set(DOC, body)
    got = read_errno(mnt.p(name))
    assert got == want, "%s of %r: %s, want %s" % (name, body[:40], ename(got), ename(want))
    assert_cached_fast(mnt, mock)
    mock.set(DOC, AEMM[DOC])
    if want != errno.EIO:
        # A well-formed document is a value like any other: cached until rm.
        os.unlink(mnt.p("instance_identity_document"))
    # A malformed one was never cached: the next read is right, no rm.
    assert mnt.read(name) == (b"us-east-1\n" if name == "region" else text_file(AEMM[DOC]))


def test_garbage_spot_action(start_mock, mount_fs):
    """The spot action document (volatile): garbage is EIO for action and
    time; the real one reads at once when it is back."""
    mock = start_mock("rich")
    mnt = mount_fs(mock)
    spot = "meta-data/spot/instance-action"
    doc = json.loads(RICH[spot])
    assert mnt.read("spot_instance_action", "action") == doc["action"].encode() + b"\n"
    mnt.expect_log(r"meta-data/spot/instance-action: .*(not valid JSON|not an object|not a string)")
    mock.fault(path=spot, action="garbage")
    for name in ("action", "time"):
        got = read_errno(mnt.p("spot_instance_action", name))
        assert got == errno.EIO, "spot_instance_action/%s: %s" % (name, ename(got))
    mock.clear_faults()
    mock.set(spot, b'{"action": 1, "time": ["x"]}')
    for name in ("action", "time"):
        assert read_errno(mnt.p("spot_instance_action", name)) == errno.EIO
    mock.set(spot, RICH[spot])
    assert mnt.read("spot_instance_action", "action") == doc["action"].encode() + b"\n"
    assert mnt.read("spot_instance_action", "time") == doc["time"].encode() + b"\n"
    assert mnt.alive()


# --- timeouts ----------------------------------------------------------------

def test_hang_bounded_small_timeout(start_mock, mount_fs):
    """timeout=200,retries=2: ETIMEDOUT within 200*3 ms + backoff (100+200)
    + slack, after 3 attempts, with one log line."""
    mock = start_mock("aemm")
    mnt = mount_fs(mock, ["timeout=200", "retries=2"])
    warm(mnt)
    log = r"GET /latest/meta-data/ami-id failed: .*timed out"
    mnt.expect_log(log)
    mock.fault(path=TARGET_SRC, action="hang")
    mock.reset_counts()
    mark = log_mark(mnt)
    got, dt = timed_errno(mnt.p(TARGET))
    assert got == errno.ETIMEDOUT, ename(got)
    assert dt < 1.5, "the reader waited %.2fs" % dt
    assert dt > 0.55, "3 attempts of 200 ms took only %.2fs" % dt
    assert mock.count(TARGET_SRC) == 3
    assert_one_log_line(mnt, mark, log, "hang")
    assert_cached_fast(mnt, mock)
    mock.clear_faults()
    assert mnt.read(TARGET) == text_file(AEMM[TARGET_SRC])


@pytest.mark.parametrize("where", ["file", "everything"])
def test_hang_bounded_defaults(start_mock, mount_fs, where):
    """SPEC: under 5 s with the defaults, never longer."""
    mock = start_mock("aemm")
    mnt = mount_fs(mock)
    warm(mnt)
    log = r"GET /latest/meta-data/ami-id failed: .*timed out"
    mnt.expect_log(log)
    mock.fault(path=TARGET_SRC if where == "file" else "*", action="hang")
    mock.reset_counts()
    mark = log_mark(mnt)
    got, dt = timed_errno(mnt.p(TARGET))
    assert got == errno.ETIMEDOUT, ename(got)
    assert dt < 5.0 + 0.25, "the reader waited %.2fs with the defaults" % dt
    assert mock.count(TARGET_SRC) == R + 1
    assert_one_log_line(mnt, mark, log, "hang")
    assert_cached_fast(mnt, mock)
    mock.clear_faults()
    assert mnt.read(TARGET) == text_file(AEMM[TARGET_SRC])


def test_slow_but_in_time_is_not_a_failure(start_mock, mount_fs):
    """A delay under the per-request timeout is just slow: the value, one
    GET, no log."""
    mock = start_mock("aemm")
    mnt = mount_fs(mock, ["timeout=1000"])
    warm(mnt)
    mock.fault(path=TARGET_SRC, delay_ms=400)
    mock.reset_counts()
    mark = log_mark(mnt)
    assert mnt.read(TARGET) == text_file(AEMM[TARGET_SRC])
    assert mock.count(TARGET_SRC) == 1
    assert_no_log_line(mnt, mark, "a 400 ms delay")


def test_token_put_hangs_fresh_mount(start_mock, mount_fs):
    """No token can be had: ETIMEDOUT in bounded time, and one line that
    points at http-put-response-hop-limit."""
    mock = start_mock("aemm")
    mnt = mount_fs(mock, ["timeout=200", "retries=2"])
    mnt.expect_log(r"http-put-response-hop-limit")
    mock.fault(path="api/token", method="PUT", action="hang")
    mark = log_mark(mnt)
    got, dt = timed_errno(mnt.p(TARGET))
    assert got == errno.ETIMEDOUT, ename(got)
    assert dt < 1.5, "the reader waited %.2fs" % dt
    assert mock.count(TARGET_SRC) == 0
    assert 1 <= mock.puts() <= 3
    assert_one_log_line(mnt, mark, r"PUT /latest/api/token.*timed out.*"
                        r"http-put-response-hop-limit", "token PUT hang")
    assert mnt.alive()
    mock.clear_faults()
    assert mnt.read(TARGET) == text_file(AEMM[TARGET_SRC])


def test_token_put_hangs_after_expiry(start_mock, mount_fs):
    """The token expires while the token PUT hangs: cached values still
    answer at once; the uncached one fails with ETIMEDOUT, bounded."""
    mock = start_mock("aemm")
    mnt = mount_fs(mock, ["timeout=200", "retries=2"])
    warm(mnt)
    mnt.expect_log(r"http-put-response-hop-limit")
    mock.fault(path="api/token", method="PUT", action="hang")
    mock.expire_tokens()
    mark = log_mark(mnt)
    got, dt = timed_errno(mnt.p(TARGET))
    assert got == errno.ETIMEDOUT, ename(got)
    assert dt < 1.5, "the reader waited %.2fs" % dt
    assert_one_log_line(mnt, mark, r"http-put-response-hop-limit", "token PUT hang")
    assert_cached_fast(mnt, mock)
    mock.clear_faults()
    assert mnt.read(TARGET) == text_file(AEMM[TARGET_SRC])


TOKEN_CASES = [
    # rule, errno, PUTs with the defaults (a range where retrying is allowed)
    ({"status": 403}, errno.EACCES, 1, r"api/token.*HTTP 403"),
    ({"status": 400}, errno.EIO, 1, r"api/token.*HTTP 400"),
    ({"status": 503}, errno.EIO, R + 1, r"api/token.*HTTP 503"),
    ({"action": "garbage"}, errno.EIO, (1, R + 1), r"api/token.*(malformed|token)"),
    ({"action": "oversize"}, errno.EIO, (1, R + 1), r"api/token.*(larger|1048576|malformed)"),
    ({"action": "close_before"}, errno.EIO, (1, R + 1), r"api/token"),
]


@pytest.mark.parametrize("rule,want,puts,log", TOKEN_CASES,
                         ids=[str(c[0].get("status", c[0].get("action"))) for c in TOKEN_CASES])
def test_token_put_fails(start_mock, mount_fs, rule, want, puts, log):
    mock = start_mock("aemm")
    mnt = mount_fs(mock)
    mnt.expect_log(log)
    mock.fault(path="api/token", method="PUT", **rule)
    mark = log_mark(mnt)
    got, dt = timed_errno(mnt.p(TARGET))
    assert got == want, "token PUT %r: the reader got %s, want %s" % (rule, ename(got), ename(want))
    n = mock.puts()
    if isinstance(puts, tuple):
        assert puts[0] <= n <= puts[1], "%r: %d PUTs" % (rule, n)
    else:
        assert n == puts, "%r: %d PUTs, want %d" % (rule, n, puts)
    assert mock.count(TARGET_SRC) == 0, "a GET went out without a token"
    assert dt < 1.0 * (R + 1) + 0.7 + 0.5
    assert_one_log_line(mnt, mark, log, "token PUT %r" % rule)
    assert mnt.alive()
    mock.clear_faults()
    mock.reset_counts()
    assert mnt.read(TARGET) == text_file(AEMM[TARGET_SRC])
    assert mock.puts() == 1


def test_token_put_fails_once(start_mock, mount_fs):
    """One 503 on the token PUT: retried, the reader gets its value, and
    nothing is logged (only a final failure is)."""
    mock = start_mock("aemm")
    mnt = mount_fs(mock)
    mock.fault(path="api/token", method="PUT", status=503, count=1)
    mark = log_mark(mnt)
    assert mnt.read(TARGET) == text_file(AEMM[TARGET_SRC])
    assert mock.puts() == 2
    assert_no_log_line(mnt, mark, "one failed token PUT, then success")


def test_unauthorized_forever_is_bounded(start_mock, mount_fs):
    """IMDS answers 401 to every GET (a lying IMDS: a fresh token never
    helps): bounded requests and time, a clean errno, a living daemon."""
    mock = start_mock("aemm")
    mnt = mount_fs(mock)
    warm(mnt)
    mnt.expect_log(r"GET /latest/meta-data/ami-id failed: HTTP 401")
    mock.fault(path=TARGET_SRC, method="GET", status=401)
    mock.reset_counts()
    got, dt = timed_errno(mnt.p(TARGET))
    assert got in (errno.EACCES, errno.EIO), ename(got)
    assert mock.count(TARGET_SRC) <= R + 1
    assert mock.puts() <= R + 1
    assert dt < 5.0
    assert_cached_fast(mnt, mock)
    mock.clear_faults()
    assert mnt.read(TARGET) == text_file(AEMM[TARGET_SRC])


# --- connection refused ----------------------------------------------------

def test_connection_refused(start_mock, mount_fs):
    """Nothing listens at the endpoint: ECONNREFUSED after retries, bounded,
    one log line."""
    mock = start_mock("aemm")
    port = closed_port()
    mnt = mount_fs(mock, endpoint="http://127.0.0.1:%d" % port)
    log = r"(Connection refused|Failed to connect|Couldn't connect)"
    mnt.expect_log(log)
    mark = log_mark(mnt)
    got, dt = timed_errno(mnt.p(TARGET))
    assert got == errno.ECONNREFUSED, ename(got)
    assert dt < 0.1 * (2 ** R) + 0.5, "refused connections took %.2fs" % dt
    assert_one_log_line(mnt, mark, log, "connection refused")
    assert mnt.alive()
    got = read_errno(mnt.p("region"))
    assert got == errno.ECONNREFUSED, ename(got)


def test_connection_refused_then_back(start_mock, mount_fs, gate):
    """IMDS goes away (connections reset, new ones refused) and comes back
    on the same port: cached values answer at once meanwhile, the uncached
    one is ECONNREFUSED, and it reads right once IMDS is back."""
    mock = start_mock("aemm")
    g = gate(mock.port)
    mnt = mount_fs(mock, endpoint="http://127.0.0.1:%d" % g.port)
    warm(mnt)
    log = r"(Connection refused|Failed to connect|Couldn't connect)"
    mnt.expect_log(log)
    g.shut()
    mark = log_mark(mnt)
    got, dt = timed_errno(mnt.p(TARGET))
    assert got == errno.ECONNREFUSED, ename(got)
    assert dt < 0.1 * (2 ** R) + 0.5
    assert_one_log_line(mnt, mark, log, "connection refused")
    assert_cached_fast(mnt)
    g.open()
    mock.reset_counts()
    assert mnt.read(TARGET) == text_file(AEMM[TARGET_SRC])
    assert mock.count(TARGET_SRC) == 1


# --- a slow fetch never blocks others --------------------------------------

def cached_reader(mnt, rounds=5):
    """A thread's work: read every cached value and list the cached
    directories `rounds` times; the slowest operation in seconds."""
    names = list(CACHED)

    def work(i):
        worst = 0.0
        for r in range(rounds):
            rel = names[(i + r) % len(names)]
            got, dt = timed(slurp, mnt.p(rel))
            if got != CACHED[rel]:
                raise AssertionError("%s read %r" % (rel, got))
            worst = max(worst, dt)
            d = CACHED_DIRS[(i + r) % len(CACHED_DIRS)]
            got, dt = timed(os.listdir, mnt.p(d))
            if isinstance(got, OSError):
                raise got
            worst = max(worst, dt)
        return worst
    return work


def start_hanging_readers(mnt, names):
    """Readers of `names` in background threads; [(name, errno, seconds)]."""
    out = []

    def one(name):
        e, dt = timed_errno(mnt.p(name))
        out.append((name, e, dt))
    threads = [threading.Thread(target=one, args=(n,), daemon=True) for n in names]
    for t in threads:
        t.start()
    return threads, out


HANGS = {
    # name: (fault rule, cold files read meanwhile, retries)
    "one-file": ({"path": TARGET_SRC, "action": "hang"}, ["ami_id"], 0),
    "many-files": ({"path": "meta-data/*", "action": "hang"}, sorted(COLD), 0),
    "everything": ({"path": "*", "action": "hang"}, sorted(COLD)[:4] + ["region"], 0),
    # The GET with the expired token gets a 401; the retry asks for a new
    # token, and that PUT hangs.
    "token": ({"path": "api/token", "method": "PUT", "action": "hang"}, sorted(COLD)[:4], 1),
}


@pytest.mark.parametrize("case", sorted(HANGS))
def test_hang_never_blocks_cached_readers(start_mock, mount_fs, case):
    """While requests hang, 16 threads reading cached files and listing a
    cached directory each answer in < 0.2 s: no lock is held across HTTP."""
    rule, cold, retries = HANGS[case]
    mock = start_mock("aemm")
    # Long enough that the hang lasts through the whole check.
    mnt = mount_fs(mock, ["timeout=4000", "retries=%d" % retries])
    warm(mnt)
    # Clearing the fault ends the hangs with a closed connection.
    mnt.expect_log(r"GET /latest/.* failed|token request")
    mock.fault(**rule)
    if case == "token":
        mock.expire_tokens()
    threads, hung = start_hanging_readers(mnt, cold)
    time.sleep(0.3)  # let them reach IMDS and hang
    assert not hung, "a request returned although IMDS hangs: %r" % hung
    t0 = time.monotonic()
    worst = run_threads(16, cached_reader(mnt), timeout=10)
    errors = [w for w in worst if isinstance(w, BaseException)]
    assert not errors, errors[:3]
    assert max(worst) < FAST, "a cached read took %.3fs while %s hung" % (max(worst), case)
    assert time.monotonic() - t0 < 3.0, "the check outlasted the hang"
    assert not hung or all(e == errno.ETIMEDOUT for _, e, _ in hung)
    mock.clear_faults()
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads), "a hanging reader never returned"
    assert mnt.alive()
    for name, e, dt in hung:
        assert e in (errno.ETIMEDOUT, errno.EIO, None), (name, ename(e))
        assert dt < 4.0 * (retries + 1) + 0.1 * retries + 1.0, (name, dt)


def test_many_hanging_readers_never_block_cached_readers(start_mock, mount_fs):
    """80 readers of 80 different uncached files, all hanging in IMDS: more
    than the daemon's 64 worker threads. Cached values must still answer at
    once (a worker must not be parked on a hanging request)."""
    mock = start_mock("aemm")
    for i in range(80):
        mock.set("meta-data/many/f%02d" % i, "value %d" % i)
    mnt = mount_fs(mock, ["timeout=4000", "retries=0"])
    warm(mnt)
    names = ["raw/meta-data/many/" + n for n in mnt.listdir("raw", "meta-data", "many")]
    assert len(names) == 80
    mnt.expect_log(r"GET /latest/meta-data/many/.* failed")
    mock.fault(path="meta-data/many/*", action="hang")
    threads, hung = start_hanging_readers(mnt, names)
    time.sleep(0.5)
    assert not hung, hung[:3]
    worst = run_threads(16, cached_reader(mnt, rounds=2), timeout=10)
    errors = [w for w in worst if isinstance(w, BaseException)]
    assert not errors, errors[:3]
    assert max(worst) < FAST, ("a cached read took %.3fs while 80 readers waited on "
                               "hanging requests" % max(worst))
    mock.clear_faults()
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads)
    assert mnt.alive()


def test_slow_lookup_holds_up_no_neighbour(start_mock, mount_fs):
    """A lookup waiting on a slow IMDS must not hold up a fresh lookup of
    a value that needs no request (account_id, from a document already
    cached) in the same directory. The kernel serializes lookups in a
    directory unless the INIT reply says FUSE_PARALLEL_DIROPS, which
    libfuse 3.14 forgets to send (kernel.c, K9); and a notice for that
    directory, waiting for its lock, would hold up new lookups too."""
    mock = start_mock("rich")
    mnt = mount_fs(mock, ["timeout=5000", "retries=0"])
    doc = json.loads(mnt.read("raw", "dynamic", "instance-identity", "document"))
    mock.fault(path="meta-data/instance-action", delay_ms=2000)
    slow = threading.Thread(target=lambda: mnt.read("instance_action"), daemon=True)
    slow.start()
    time.sleep(0.3)  # the slow lookup is under way
    # A volatile read now: the kernel must be told to drop its name, a
    # notice that would wait for the directory behind the slow lookup, and
    # make every new lookup there wait behind it (kernel.c, send_notices).
    assert mnt.read("autoscaling_target_lifecycle_state")
    time.sleep(0.1)
    got, took = timed(mnt.read, "account_id")
    assert got == doc["accountId"].encode() + b"\n"
    assert took < FAST, "a cached read waited %.2fs behind a slow lookup" % took
    slow.join(10)
    assert not slow.is_alive()


# --- no stale size ------------------------------------------------------------

def test_reopen_after_rm_is_whole_value(start_mock, mount_fs):
    """An inode opened again after `rm` (a reader that looked the name up
    just before the rm, as `cat` racing `rm` does; here /proc/self/fd makes
    the race deterministic): the value it reads is a whole old or new value,
    never the new value cut to the old value's size (SPEC: no stale page or
    size)."""
    mock = start_mock("aemm")
    mnt = mount_fs(mock)
    a, b = b"A" * 1000, b"B" * 5000
    mock.set(TARGET_SRC, a)
    # The kernel learns the size of A from the lookup; nothing is read, so
    # no page of A is cached.
    fd = os.open(mnt.p(TARGET), os.O_RDONLY)
    try:
        assert os.fstat(fd).st_size == len(a) + 1
        mock.set(TARGET_SRC, b)
        os.unlink(mnt.p(TARGET))
        # read(2) only: an fstat (as Python's f.read() does) would refresh
        # the size and hide the problem from this test, not from `cat`.
        fd2 = os.open("/proc/self/fd/%d" % fd, os.O_RDONLY)
        try:
            got = read_fd(fd2, 4096)
        finally:
            os.close(fd2)
    finally:
        os.close(fd)
    assert got in (a + b"\n", b + b"\n"), (
        "reopened after rm: %d bytes %r...%r, want the whole old (%d bytes) or new (%d bytes) "
        "value" % (len(got), got[:4], got[-4:], len(a) + 1, len(b) + 1))
    assert mnt.read(TARGET) == b + b"\n"


@pytest.mark.parametrize("stat", [True, False], ids=["fstat", "no-fstat"])
def test_open_file_keeps_one_value_across_rm(start_mock, mount_fs, stat):
    """A file open while it is rm'd and changes in IMDS: what the open file
    reads from start to end is one whole value (its old one, or the new one
    if the kernel drops everything first), never the old first page and the
    new rest. `cat` does fstat then read(2)s; both orders are checked."""
    mock = start_mock("aemm")
    mnt = mount_fs(mock)
    a, b = b"A" * 6000, b"B" * 9000
    mock.set(TARGET_SRC, a)
    fd = os.open(mnt.p(TARGET), os.O_RDONLY)
    try:
        # No readahead: the rest is read from the daemon after the rm.
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        first = os.read(fd, 4096)
        mock.set(TARGET_SRC, b)
        os.unlink(mnt.p(TARGET))
        if stat:
            os.fstat(fd)
        got = first + read_fd(fd, 4096)
    finally:
        os.close(fd)
    assert got in (a + b"\n", b + b"\n"), (
        "an open file read %d bytes: %d of 'A' then %d of 'B' (old value %d bytes, new %d)"
        % (len(got), got.count(b"A"), got.count(b"B"), len(a) + 1, len(b) + 1))
    assert mnt.read(TARGET) == b + b"\n"


def test_twin_open_across_rm_read_to_its_end(start_mock, mount_fs):
    """A raw/ twin is open while rm of its cleaned-up name clears their
    value. Reading the open file to its end (which asks the daemon for the
    file's attributes) must not make the kernel keep the old inode for the
    twin's name: after close, the name reads the new value, at its size."""
    mock = start_mock("aemm")
    mnt = mount_fs(mock)
    src = "meta-data/instance-id"
    raw = mnt.p("raw", "meta-data", "instance-id")
    old, new = AEMM[src], b"i-0ffffffffffffffffffffffffffff"
    assert slurp(raw) == old
    fd = os.open(raw, os.O_RDONLY)
    try:
        mock.set(src, new)
        os.unlink(mnt.p("instance_id"))
        assert os.pread(fd, 65536, 0) == old  # the open file keeps its value
        assert os.pread(fd, 65536, len(old)) == b""
    finally:
        os.close(fd)
    for _ in range(3):
        assert os.stat(raw).st_size == len(new)
        assert slurp(raw) == new
    assert mnt.read("instance_id") == new + b"\n"


def test_volatile_failure_costs_one_round_of_retries(start_mock, mount_fs):
    """A volatile file is looked up at every open, and when a lookup of a
    name it holds fails, the kernel drops the name and looks it up again at
    once. A failing read must still cost retries + 1 GETs, not twice that
    (nor wait twice SPEC's bound), and the next read must ask again."""
    mock = start_mock("rich")
    mnt = mount_fs(mock)
    src = "meta-data/instance-action"
    p = mnt.p("instance_action")
    first = slurp(p)
    mnt.expect_log(r"GET /latest/%s failed: HTTP 500" % src)
    mock.fault(path=src, status=500)
    for i in range(3):
        mock.reset_counts()
        assert read_errno(p) == errno.EIO, "read %d" % i
        assert mock.count(src) == R + 1, "read %d cost %d GETs" % (i, mock.count(src))
    mock.clear_faults()
    mock.reset_counts()
    assert slurp(p) == first
    assert mock.count(src) == 1
    assert mnt.alive()


def test_failure_of_a_fresh_lookup_is_not_kept(start_mock, mount_fs):
    """The kernel's immediate retry of a failed lookup gets the same
    failure, but nothing else does: with the file held open (so the daemon
    still has its node) and IMDS failing fast, each read asks IMDS, and
    the first read after IMDS recovers gets the value."""
    mock = start_mock("rich")
    mnt = mount_fs(mock, ["retries=0"])
    src = "meta-data/instance-action"
    p = mnt.p("instance_action")
    first = slurp(p)
    mnt.expect_log(r"GET /latest/%s failed: HTTP 500" % src)
    held = os.open(p, os.O_RDONLY)
    try:
        mock.fault(path=src, status=500)
        for i in range(3):
            mock.reset_counts()
            assert read_errno(p) == errno.EIO, "read %d" % i
            assert mock.count(src) == 1, "read %d cost %d GETs" % (i, mock.count(src))
        mock.clear_faults()
        mock.reset_counts()
        assert slurp(p) == first
        assert mock.count(src) == 1
        assert read_fd(held) == first
    finally:
        os.close(held)


def test_lookups_outlast_a_storm_of_rm(start_mock, mount_fs):
    """Every lookup fetches while an rm clears something: each attempt
    sees the clear and starts over, until the last, which answers with
    what it fetched. That answer must be usable (no ESTALE), and fresh the
    next time."""
    mock = start_mock("rich")
    mnt = mount_fs(mock)
    src = "meta-data/instance-action"
    p = mnt.p("instance_action")
    mock.set(src, "none")
    assert mnt.read("ami_id")
    mock.fault(path=src, delay_ms=150)
    stop = threading.Event()
    errors = []

    def storm():
        while not stop.is_set():
            try:
                os.unlink(mnt.p("raw", "meta-data", "ami-id"))
            except OSError as e:
                errors.append(e)
            time.sleep(0.02)

    t = threading.Thread(target=storm, daemon=True)
    t.start()
    try:
        for i in range(3):
            assert slurp(p) == b"none\n", "read %d" % i
            assert os.stat(p).st_size == 5
        mock.set(src, "stop")
        assert slurp(p) == b"stop\n"
    finally:
        stop.set()
        t.join(10)
        mock.clear_faults()
    assert not t.is_alive() and not errors, errors[:3]


@pytest.mark.parametrize("how", ["rm", "rmdir"])
def test_rm_during_reads_keeps_memory_flat(start_mock, mount_fs, how):
    """8 threads read a 100 kB value while another rm's it (or rmdir's its
    directory) every few ms: the daemon's memory must not grow with the
    number of rm's (a value left behind for every detached inode would grow
    it by 100 kB each time)."""
    mock = start_mock("aemm")
    big = b"T" * 100000
    src = "meta-data/tags/instance/Name"
    mock.set(src, big)
    mnt = mount_fs(mock)
    rel = mnt.p("tags", "Name")
    assert slurp(rel) == big + b"\n"
    stop = threading.Event()
    errors = []

    def reader():
        while not stop.is_set():
            try:
                data = slurp(rel)
            except OSError as e:
                # A walk inside a directory that rmdir just removed gets
                # ENOENT from the kernel; a fresh walk must not.
                if e.errno != errno.ENOENT or how != "rmdir":
                    errors.append(e)
                continue
            if data != big + b"\n":
                errors.append("read %d bytes" % len(data))

    def remover():
        while not stop.is_set():
            try:
                os.rmdir(mnt.p("tags")) if how == "rmdir" else os.unlink(rel)
            except OSError as e:
                errors.append(e)
            time.sleep(0.002)

    threads = [threading.Thread(target=reader, daemon=True) for _ in range(8)]
    threads.append(threading.Thread(target=remover, daemon=True))
    pid = mnt.proc.pid
    for t in threads:
        t.start()
    try:
        time.sleep(2)
        base = rss_kb(pid)
        time.sleep(6)
        end = rss_kb(pid)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    assert mnt.alive()
    assert not errors, errors[:5]
    assert slurp(rel) == big + b"\n"
    if not sanitized(pid):
        assert end - base < 10 * 1024, (
            "RSS grew by %d kB in 6 s of %s during reads of a 100 kB value (%d -> %d kB)"
            % (end - base, how, base, end))


# --- stress -----------------------------------------------------------------

STRESS_SECONDS = float(os.environ.get("IMDSFS_STRESS_SECONDS", "30"))

STRESS_FILES = {rel: src for rel, src in COLD.items()}
STRESS_FILES.update({
    "instance_id": "meta-data/instance-id",
    "instance_type": "meta-data/instance-type",
    "tags/Name": "meta-data/tags/instance/Name",
    "tags/Test": "meta-data/tags/instance/Test",
    "network/interfaces/%s/vpc_id" % AEMM_MAC: "meta-data/network/interfaces/macs/%s/vpc-id" % AEMM_MAC,
    "raw/meta-data/ami-launch-index": "meta-data/ami-launch-index",
})


def stress_values(i):
    """Two complete values of different lengths (crossing page sizes)."""
    return b"A" * (700 + 97 * i), b"B" * (4500 + 131 * i)


def test_stress_readers_rm_and_changes(start_mock, mount_fs):
    """16 readers, one thread rm-ing files (and sometimes a directory), one
    changing the values in IMDS between two complete versions: every read
    is a whole old or new value, never a mix; no crash, no hang; RSS stays
    flat after the first seconds."""
    mock = start_mock("aemm")
    files = sorted(STRESS_FILES)
    values = {}
    for i, rel in enumerate(files):
        a, b = stress_values(i)
        values[rel] = (a, b)
        mock.set(STRESS_FILES[rel], a)
    doc = json.loads(AEMM[DOC])
    docs = [json.dumps(dict(doc, region=r * 300), indent=2).encode() for r in "xy"]
    mock.set(DOC, docs[0])
    mnt = mount_fs(mock)

    def allowed(rel):
        if rel == "region":
            return {b"x" * 300 + b"\n", b"y" * 300 + b"\n"}
        if rel == "instance_identity_document":
            return {d + b"\n" for d in docs}
        a, b = values[rel]
        if rel.startswith("raw/"):
            return {a, b}
        return {a + b"\n", b + b"\n"}

    readable = files + ["region", "instance_identity_document"]
    stop = threading.Event()
    problems = []
    reads = [0] * 16
    slowest = [0.0]
    lock = threading.Lock()

    def problem(msg):
        with lock:
            if len(problems) < 20:
                problems.append(msg)

    def reader(i):
        rnd = random.Random(i)
        while not stop.is_set():
            rel = rnd.choice(readable)
            t = time.monotonic()
            try:
                if rnd.random() < 0.5:
                    data = slurp(mnt.p(rel))
                else:
                    fd = os.open(mnt.p(rel), os.O_RDONLY)
                    try:
                        chunks = []
                        while True:
                            c = os.read(fd, rnd.choice([1, 100, 1500, 4096]))
                            if not c:
                                break
                            chunks.append(c)
                        data = b"".join(chunks)
                    finally:
                        os.close(fd)
            except OSError as e:
                # rmdir of tags/ marks the old directory dead in the kernel:
                # a walk already inside it gets ENOENT. A fresh walk must not.
                if not (e.errno == errno.ENOENT and rel.startswith("tags/")):
                    problem("%s: %s" % (rel, e))
                    continue
                try:
                    data = slurp(mnt.p(rel))
                except OSError as e2:
                    problem("%s: %s, and again: %s" % (rel, e, e2))
                    continue
            dt = time.monotonic() - t
            with lock:
                slowest[0] = max(slowest[0], dt)
            if data not in allowed(rel):
                problem("%s: %d bytes, neither value (starts %r, ends %r)"
                        % (rel, len(data), data[:8], data[-8:]))
            reads[i] += 1

    def remover():
        rnd = random.Random(100)
        while not stop.is_set():
            try:
                if rnd.random() < 0.05:
                    os.rmdir(mnt.p("tags"))
                else:
                    os.unlink(mnt.p(rnd.choice(readable)))
            except OSError as e:
                problem("rm: %s" % e)
            time.sleep(0.005)

    def changer():
        rnd = random.Random(200)
        state = {rel: 0 for rel in files}
        d = 0
        while not stop.is_set():
            try:
                if rnd.random() < 0.2:
                    d ^= 1
                    mock.set(DOC, docs[d])
                else:
                    rel = rnd.choice(files)
                    state[rel] ^= 1
                    mock.set(STRESS_FILES[rel], values[rel][state[rel]])
            except OSError as e:
                problem("mock: %s" % e)
            time.sleep(0.01)

    threads = [threading.Thread(target=reader, args=(i,), daemon=True) for i in range(16)]
    threads += [threading.Thread(target=remover, daemon=True),
                threading.Thread(target=changer, daemon=True)]
    pid = mnt.proc.pid
    for t in threads:
        t.start()
    try:
        base_at = min(5.0, STRESS_SECONDS / 3)
        time.sleep(base_at)
        base = rss_kb(pid)
        time.sleep(STRESS_SECONDS - base_at)
        end = rss_kb(pid)
    finally:
        stop.set()
        for t in threads:
            t.join(15)
    stuck = [t for t in threads if t.is_alive()]
    assert not stuck, "%d threads hung (the daemon stopped answering)" % len(stuck)
    assert mnt.alive(), "the daemon died under stress:\n" + mnt.output()[-3000:]
    assert not problems, "\n".join(problems)
    assert min(reads) > 0, "a reader never completed a read: %r" % reads
    assert slowest[0] < 5.5, "a read took %.2fs" % slowest[0]
    if not sanitized(pid):
        assert end <= base * 1.10, "RSS grew from %d kB (at %.0fs) to %d kB" % (
            base, base_at, end)
    # And afterwards everything reads its final value.
    for rel in files:
        os.unlink(mnt.p(rel))
        got = slurp(mnt.p(rel))
        assert got in allowed(rel), rel
        assert got.rstrip(b"\n") == mock._call("GET", "files/" + STRESS_FILES[rel]), rel
