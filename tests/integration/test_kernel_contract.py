"""The Linux FUSE driver's behaviours that imdsfs's design relies on, pinned.

Each test mounts tests/kernel/probe (a scriptable low-level FUSE filesystem,
no-open like imdsfs), scripts one situation through its control socket,
reads the requests it logged, and asserts what this kernel does. When a
kernel changes one of these behaviours, its test fails with a message that
names the behaviour. Each docstring names the kernel functions involved,
what was measured on 6.18 (libfuse 3.14, Debian 12), and which kernel
versions the behaviour holds in: "verified" means measured here, "read"
means read in the kernel's sources (versions named).

Timing assertions are loose on purpose (a shared 2-core machine): a
notification "blocks" when it took at least 300 ms while the request it
waits for was held for 1 s, and "does not block" when it took less than
300 ms in the same situation.

The probe binary is found beside the imdsfs binary under test: for
$IMDSFS_BINARY=/x/build/imdsfs it is /x/build/tests/kernel/probe (meson
builds tests/kernel/ into the same tree); $IMDSFS_PROBE overrides that.
Set $KERNEL_CONTRACT_REPORT to a file to get the measured numbers as JSON.
"""

import ctypes
import errno
import json
import mmap
import os
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from conftest import BINARY, IN_CI

PROBE = Path(os.environ.get("IMDSFS_PROBE") or BINARY.parent / "tests" / "kernel" / "probe")

# Per test: past this, the probe is killed, which aborts the FUSE connection
# and so ends every request in flight: a hang fails the test, never the run.
WATCHDOG_S = 30

HELD_MS = 1000     # how long the probe holds the request a notification may wait for
BLOCKED_MS = 300   # a notification that took this long was blocked
BAD_OUTPUT = re.compile(r"AddressSanitizer|LeakSanitizer|runtime error|Segmentation|Aborted")

MEASURED = {}


def measured(key, value):
    """Keep a measured number for the report ($KERNEL_CONTRACT_REPORT)."""
    MEASURED[key] = value
    out = os.environ.get("KERNEL_CONTRACT_REPORT")
    if out:
        Path(out).write_text(json.dumps(MEASURED, indent=1, sort_keys=True) + "\n")


def parse(line):
    """A probe log line as a dict: t (µs, CLOCK_MONOTONIC), op, and its k=v."""
    words = line.split()
    if len(words) < 2 or not words[0].isdigit():
        return None
    ev = {"t": int(words[0]), "op": words[1], "line": line}
    rest = words[2:]
    if words[1] in ("reply", "answer", "JOB") and rest:
        ev["op"] = words[1] + " " + rest[0]
        rest = rest[1:]
    for w in rest:
        k, sep, v = w.partition("=")
        if sep:
            ev[k] = int(v) if re.fullmatch(r"-?\d+", v) else v
    return ev


class Probe:
    """A running tests/kernel/probe, its log and its control socket."""

    def __init__(self, extra_args=()):
        self.dir = tempfile.mkdtemp(prefix="kprobe-")
        self.path = os.path.join(self.dir, "mnt")
        os.mkdir(self.path)
        self.ctl = os.path.join(self.dir, "ctl")
        self.log_path = os.path.join(self.dir, "probe.log")
        self.log = open(self.log_path, "w+b")
        self.children = []
        self.marks = 0
        self.proc = subprocess.Popen([str(PROBE), *extra_args, self.ctl, self.path],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while not (os.path.ismount(self.path) and os.path.exists(self.ctl)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the probe did not mount:\n" + self.output())
            time.sleep(0.02)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(15)
        self.sock.connect(self.ctl)
        self.rfile = self.sock.makefile("r")

    def p(self, *parts):
        return os.path.join(self.path, *parts)

    def cmd(self, line):
        self.sock.sendall((line + "\n").encode())
        reply = self.rfile.readline().strip()
        assert reply, "the probe's control socket closed:\n" + self.output()
        return reply

    def ok(self, line):
        reply = self.cmd(line)
        assert reply.startswith("ok"), "probe command %r: %s" % (line, reply)
        return reply[3:]

    def ino(self, path):
        return int(self.ok("ino " + path))

    def job(self, line, wait_ms=3000):
        """Run a notify/self command: {"rc", "us"}, or {"pending": id}."""
        reply = self.cmd("%s wait=%d" % (line, wait_ms))
        if reply.startswith("pending"):
            return {"pending": int(reply.split()[1])}
        m = re.fullmatch(r"ok rc=(-?\d+) us=(\d+)", reply)
        assert m, "probe command %r: %s" % (line, reply)
        return {"rc": int(m.group(1)), "us": int(m.group(2))}

    def result(self, pending, wait_ms=5000):
        return self.job("result %d" % pending["pending"], wait_ms)

    def output(self):
        self.log.flush()
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def events(self):
        return [e for e in map(parse, self.output().splitlines()) if e]

    def mark(self):
        """A point in the log; events(since=...) are those after it."""
        self.marks += 1
        name = "m%d" % self.marks
        self.ok("mark " + name)
        return name

    def since(self, mark, op=None):
        evs = self.events()
        for i, e in enumerate(evs):
            if e["op"] == "MARK" and e["line"].endswith(" " + mark):
                evs = evs[i + 1:]
                break
        else:
            raise AssertionError("mark %s not in the log" % mark)
        return [e for e in evs if op is None or e["op"] == op]

    def wait_for(self, mark, op, timeout=5, **match):
        """The first event `op` after `mark` whose fields match."""
        deadline = time.monotonic() + timeout
        while True:
            for e in self.since(mark, op):
                if all(e.get(k) == v for k, v in match.items()):
                    return e
            if time.monotonic() > deadline:
                raise AssertionError("no %s %s within %ss; log:\n%s"
                                     % (op, match, timeout, self.output()))
            time.sleep(0.01)

    def requests(self, mark):
        """Requests (not replies, jobs or marks) logged after `mark`."""
        return [e for e in self.since(mark)
                if e["op"] not in ("MARK",) and not e["op"].startswith(("reply", "answer", "JOB", "INIT"))]

    def spawn(self, code, *args, cwd=None):
        """A Python child running `code` (killed at teardown)."""
        proc = subprocess.Popen([sys.executable, "-c", code, *map(str, args)], cwd=cwd,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.children.append(proc)
        return proc

    def kill_children(self):
        for c in self.children:
            if c.poll() is None:
                c.kill()
        for c in self.children:
            try:
                c.wait(5)
            except subprocess.TimeoutExpired:
                pass

    def umount(self):
        subprocess.run(["fusermount3", "-u", self.path], check=True, timeout=10)
        rc = self.proc.wait(timeout=10)
        assert rc == 0, "probe exited %s:\n%s" % (rc, self.output())

    def cleanup(self):
        self.kill_children()
        try:
            self.rfile.close()
            self.sock.close()
        except OSError:
            pass
        if os.path.ismount(self.path):
            subprocess.run(["fusermount3", "-u", "-z", self.path], timeout=10,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def probe(request):
    """probe(*args) -> Probe; unmounted (also on failure) at teardown."""
    if not PROBE.exists():
        why = "kernel probe not found at %s (build first, or set IMDSFS_PROBE)" % PROBE
        if IN_CI:
            pytest.fail(why)
        pytest.skip(why)
    made, fired = [], []

    def start(*args):
        pr = Probe(args)
        made.append(pr)
        return pr

    def fire():
        fired.append(True)
        for pr in made:
            if pr.proc.poll() is None:
                pr.proc.kill()

    timer = threading.Timer(WATCHDOG_S, fire)
    timer.daemon = True
    timer.start()
    yield start
    timer.cancel()
    problems = ["watchdog: the test ran over %ss; its probe was killed" % WATCHDOG_S] if fired else []
    for pr in made:
        pr.kill_children()
        try:
            if pr.proc.poll() is None and os.path.ismount(pr.path):
                pr.umount()
        except Exception as e:
            problems.append("unmount of %s failed: %s" % (pr.path, e))
        bad = [l for l in pr.output().splitlines() if BAD_OUTPUT.search(l)]
        if bad:
            problems.append("probe output:\n" + "\n".join(bad))
        pr.cleanup()
    if problems:
        pytest.fail("\n".join(problems))


class Background:
    """fn() in a thread; join() re-raises its exception, and never hangs."""

    def __init__(self, fn):
        self.result, self.error, self.t0 = None, None, time.monotonic()
        self.t1 = None
        self.thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self.thread.start()

    def _run(self, fn):
        try:
            self.result = fn()
        except BaseException as e:  # reported by join()
            self.error = e
        self.t1 = time.monotonic()

    def join(self, timeout=10):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "a background file operation hung"
        if self.error:
            raise self.error
        return self.result


def held_request(pr, mark, op, start, **match):
    """Start a file operation whose request `op` the probe holds; return it
    once the request has reached the probe."""
    bg = Background(start)
    pr.wait_for(mark, op, **match)
    return bg


def blocked_ms(pr, job_line, situation):
    """How long `job_line` (a notification) took while `situation` (a held
    request) was in flight, and whether it ended only after that request's
    reply. Returns (ms, ended_after_reply)."""
    r = pr.job(job_line, wait_ms=HELD_MS * 3)
    assert "pending" not in r, "%s: still blocked %d ms after the held request" % (
        job_line, HELD_MS * 3)
    situation.join()
    return r["us"] / 1000.0, r


def tree(pr):
    """d/ with files a, b (cached: a day), c (entry timeout 0)."""
    d = int(pr.ok("dir d"))
    for name in "ab":
        pr.ok("file d/%s %s-text" % (name, name))
    pr.ok("file d/c c-text entry=0")
    for name in "abc":
        os.stat(pr.p("d", name))
    return d


def hold(pr, situation, d):
    """Start the file operation of `situation` in d/ and return once the
    probe holds its request: "unlink" (UNLINK d/a, answered 0), "lookup"
    (a fresh LOOKUP of d/x, a name the kernel has never seen: lookup_slow)
    or "revalidate" (the LOOKUP that revalidates d/c, whose entry timeout
    is 0: lookup_fast, d_revalidate). Returns (Background, mark)."""
    fresh = "x%d" % (pr.marks + 1)  # a name never looked up before
    name, op, fn = {
        "unlink": ("a", "UNLINK", lambda: os.unlink(pr.p("d", "a"))),
        "lookup": (fresh, "LOOKUP", lambda: os.stat(pr.p("d", fresh))),
        "revalidate": ("c", "LOOKUP", lambda: os.stat(pr.p("d", "c"))),
    }[situation]
    if situation == "lookup":
        pr.ok("file d/%s x-text" % fresh)
    pr.ok("delay %s %d ino=%d name=%s" % (op, HELD_MS, d, name))
    m = pr.mark()
    bg = Background(fn)
    pr.wait_for(m, op, name=name)
    return bg, m, op, name


def notify_while_held(pr, d, situation, line):
    """Send notification `line` while `situation`'s request is held; return
    (ms it took, whether it ended only after the held request's reply)."""
    for name in "abc":
        os.stat(pr.p("d", name))  # cached again (a was unlinked last time)
    bg, m, op, name = hold(pr, situation, d)
    r = pr.job(line, wait_ms=HELD_MS * 3)
    assert "pending" not in r, "%r still blocked %d ms after %s was held" % (
        line, HELD_MS * 3, situation)
    bg.join()
    pr.ok("delay %s 0 ino=%d name=%s" % (op, d, name))
    reply = pr.wait_for(m, "reply " + op, name=name)
    done = pr.wait_for(m, "JOB done")
    return r["us"] / 1000.0, done["t"] >= reply["t"], r["rc"]


def test_inval_entry_takes_the_directory_lock(probe):
    """notify_inval_entry(parent, name) waits for the parent's inode lock.

    Kernel: fs/fuse/dev.c fuse_notify_inval_entry -> fs/fuse/dir.c
    fuse_reverse_inval_entry, which takes inode_lock(parent) (exclusive)
    before it d_lookup()s the name; fs/namei.c: do_unlinkat holds the
    parent's lock exclusive across vfs_unlink (so across the UNLINK
    request), lookup_slow holds it shared across a fresh LOOKUP (with
    parallel dirops FUSE takes no lock of its own, fuse_lock_inode), and
    lookup_fast -> d_revalidate (fuse_dentry_revalidate) holds none.

    Measured on 6.18 (UNLINK / fresh LOOKUP / revalidating LOOKUP of
    another name held 1000 ms): see MEASURED and the report; with
    FUSE_EXPIRE_ONLY (fuse_lowlevel_notify_expire_entry, flag 1) the same.
    Versions: the inode_lock(parent) in fuse_reverse_inval_entry is there
    in every version read (5.10, 6.1, 6.8, 6.12, mainline).
    """
    pr = probe()
    d = tree(pr)
    for flag in ("", " expire"):
        for situation in ("unlink", "lookup", "revalidate"):
            ms, after, rc = notify_while_held(pr, d, situation,
                                              "notify inval_entry %d b%s" % (d, flag))
            measured("inval_entry%s while %s held: ms" % (flag.replace(" ", "+"), situation),
                     round(ms))
            what = "notify_inval_entry%s while %s of another name in the directory is held %d ms" % (
                flag and " (expire only)", situation, HELD_MS)
            assert rc == 0, what + ": returned %d" % rc
            if situation == "revalidate":
                assert ms < BLOCKED_MS, what + \
                    ": took %d ms; it used not to wait (d_revalidate holds no lock)" % ms
            else:
                assert ms >= BLOCKED_MS and after, what + \
                    ": took %d ms; it used to wait for the directory lock until the reply" % ms


def test_inval_inode_takes_no_directory_lock(probe):
    """notify_inval_inode(ino, -1, 0) never waits for a directory lock.

    Kernel: fs/fuse/dev.c fuse_notify_inval_inode -> fs/fuse/inode.c
    fuse_reverse_inval_inode: fuse_ilookup, then under fi->lock bump the
    attribute version and mark the attributes stale
    (fuse_invalidate_attr); with offset < 0 no page is touched (no
    invalidate_inode_pages2_range, so no folio lock either). No inode_lock
    of the inode or of its parent.

    Measured on 6.18: returns 0 in well under a millisecond while an
    UNLINK, a fresh LOOKUP or a revalidating LOOKUP in the directory is
    held 1000 ms, for a file of that directory and for the directory
    itself. Versions: the same code path in every version read (5.10,
    6.1, 6.8, 6.12, mainline); verified here on 6.18.
    """
    pr = probe()
    d = tree(pr)
    b = pr.ino("d/b")
    for target, ino in (("a file", b), ("the directory", d)):
        for situation in ("unlink", "lookup", "revalidate"):
            ms, after, rc = notify_while_held(pr, d, situation,
                                              "notify inval_inode %d -1 0" % ino)
            measured("inval_inode(%s) while %s held: ms" % (target, situation), round(ms, 1))
            what = "notify_inval_inode(%s, -1, 0) while %s in its directory is held %d ms" % (
                target, situation, HELD_MS)
            assert rc == 0, what + ": returned %d" % rc
            assert ms < BLOCKED_MS, what + ": took %d ms; it used to take no directory lock" % ms


# A child that runs os calls sent on its stdin ("stat NAME", "listdir",
# "getcwd", "tid") relative to its cwd, and prints one JSON answer each.
SHELL_CHILD = r"""
import json, os, sys, threading
for line in sys.stdin:
    op, _, arg = line.strip().partition(" ")
    try:
        if op == "stat":
            out = os.stat(arg).st_ino
        elif op == "listdir":
            out = sorted(os.listdir(arg or "."))
        elif op == "getcwd":
            out = os.getcwd()
        elif op == "tid":
            out = threading.get_native_id()
        elif op == "read":
            with open(arg, "rb") as f:
                out = f.read().decode()
        res = {"ok": out}
    except OSError as e:
        res = {"errno": e.errno}
    print(json.dumps(res), flush=True)
"""


class Shell:
    """A child process with its cwd somewhere in the mount."""

    def __init__(self, pr, cwd):
        self.proc = subprocess.Popen([sys.executable, "-c", SHELL_CHILD], cwd=cwd, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        pr.children.append(self.proc)

    def __call__(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], 10)
        assert ready, "the child hung on %r" % line
        return json.loads(self.proc.stdout.readline())


def lookups(pr, mark, name=None):
    return [e for e in pr.since(mark, "LOOKUP") if name is None or e["name"] == name]


def test_inc_epoch(probe):
    """FUSE_NOTIFY_INC_EPOCH: every dentry made before it fails its next
    d_revalidate without a request, so that name is looked up afresh.

    Kernel (read, mainline 6.16+, protocol 7.44): fs/fuse/dev.c
    fuse_notify_inc_epoch does atomic_inc(&fc->epoch), no lock;
    fs/fuse/dir.c fuse_dentry_revalidate compares the dentry's epoch
    (stored at lookup) with fc->epoch first and returns 0 (invalid) on a
    mismatch, before any LOOKUP; fs/namei.c lookup_fast then
    d_invalidate()s it and lookup_slow sends one fresh LOOKUP.
    Unknown codes: fuse_notify's default case returns -EINVAL, so the
    write(2) of the notification fails with EINVAL on kernels before 6.16
    (read: 5.10, 6.1, 6.8, 6.12 have no case 8).

    Measured on 6.18 (protocol 7.45): the 16-byte write returns 16; code 99
    (and 9: no FUSE_NOTIFY_PRUNE here) fails with EINVAL. It never blocks
    (< 1 ms while UNLINK or a fresh LOOKUP of the directory is held). Of
    a name cached before it, the next walk sends exactly one LOOKUP,
    a fresh one (a name rebound meanwhile shows its new node after one
    LOOKUP, not two). A directory's dentry is invalidated like any other
    (d_invalidate drops the unused dentries below it: BATCH_FORGET); an
    fd open before it keeps reading and fstat'ing its old inode; a
    process whose cwd is in such a directory keeps working there. Names
    are touched only when walked: nothing is sent at the notification.
    """
    pr = probe()
    d = tree(pr)
    r = pr.job("notify inc_epoch")
    measured("inc_epoch write rc", r["rc"])
    assert r["rc"] == 16, "FUSE_NOTIFY_INC_EPOCH (8) used to be accepted: write returned %d" % r["rc"]
    for code in (99, 9):
        r = pr.job("notify raw %d" % code)
        measured("notify code %d rc" % code, r["rc"])
        assert r["rc"] == -errno.EINVAL, \
            "an unknown notification code (%d) used to fail the write with EINVAL: %d" % (code, r["rc"])
    for situation in ("unlink", "lookup"):
        ms, after, rc = notify_while_held(pr, d, situation, "notify inc_epoch")
        measured("inc_epoch while %s held: ms" % situation, round(ms, 1))
        assert rc == 16 and ms < BLOCKED_MS, \
            "FUSE_NOTIFY_INC_EPOCH while %s in the directory is held took %d ms (rc %d); " \
            "it used not to block" % (situation, ms, rc)

    tree(pr)  # every name cached again, after the epochs above
    fd = os.open(pr.p("d", "a"), os.O_RDONLY)
    assert os.pread(fd, 100, 0) == b"a-text"
    sh = Shell(pr, pr.p("d"))
    assert sh("stat b")["ok"] == pr.ino("d/b")
    old_b = pr.ino("d/b")
    new_b = int(pr.ok("file d/b b-new"))
    m = pr.mark()
    pr.job("notify inc_epoch")
    time.sleep(0.1)
    assert pr.requests(m) == [], "FUSE_NOTIFY_INC_EPOCH used to send nothing by itself"

    m = pr.mark()
    assert os.pread(fd, 100, 0) == b"a-text" and os.fstat(fd).st_ino == pr.ino("d/a"), \
        "an fd opened before FUSE_NOTIFY_INC_EPOCH used to keep reading its inode"
    with mmap.mmap(fd, 6, prot=mmap.PROT_READ) as mm:
        assert mm[:] == b"a-text"
    measured("inc_epoch: requests for pread+fstat+mmap of an open fd",
             [e["op"] for e in pr.requests(m)])
    assert not lookups(pr, m), "the fd's own operations used to look nothing up"
    os.close(fd)

    m = pr.mark()
    got = sh("stat b")
    measured("inc_epoch: LOOKUPs of a rebound cached name (cwd-relative)",
             [(e["name"], e["pid"]) for e in lookups(pr, m)])
    assert got == {"ok": new_b} and len(lookups(pr, m, "b")) == 1, \
        "after FUSE_NOTIFY_INC_EPOCH a cached name used to be looked up once, afresh, " \
        "and show its new node: got %s (old %d, new %d), lookups %s" % (
            got, old_b, new_b, [e["line"] for e in lookups(pr, m)])

    m = pr.mark()
    assert os.stat(pr.p("d", "a")).st_ino == pr.ino("d/a")
    names = [e["name"] for e in lookups(pr, m)]
    measured("inc_epoch: LOOKUPs of stat d/a from the root", names)
    assert names == ["d", "a"], \
        "after FUSE_NOTIFY_INC_EPOCH a walk used to look up each stale name once: %s" % names
    listing = sh("listdir")
    measured("inc_epoch: listdir in a cwd below a stale dentry", listing)
    assert sh("getcwd")["ok"] == pr.p("d") and "a" in listing.get("ok", []), \
        "a process whose cwd is in a directory whose dentry went stale used to keep working"
    m = pr.mark()
    assert os.stat(pr.p("d", "a")).st_ino == pr.ino("d/a")
    assert not lookups(pr, m), "names looked up after the epoch used to be cached again"


def stat_in_thread(path):
    """os.stat(path) from a new thread: (st_ino or -errno, the thread's tid)."""
    out = {}

    def run():
        out["tid"] = threading.get_native_id()
        try:
            out["ino"] = os.stat(path).st_ino
        except OSError as e:
            out["ino"] = -e.errno

    Background(run).join()
    return out["ino"], out["tid"]


def test_zero_entry_timeout_dentries(probe):
    """A name answered with entry timeout 0 keeps its dentry; each walk
    revalidates it with one LOOKUP, and a revalidation that fails or shows
    another node is followed at once by a fresh LOOKUP from the same thread.

    Kernel: fs/fuse/dir.c fuse_dentry_settime: DCACHE_OP_DELETE (so
    fuse_dentry_delete, dropping the dentry at its last dput) only when
    the time is 0 *and* fc->delete_stale, which only virtiofs sets
    (fs/fuse/virtio_fs.c; /dev/fuse mounts never: read in 5.10 through
    mainline; the option came with 5.4's "fuse: delete dentry if timeout
    is zero"). fuse_dentry_revalidate sends LOOKUP when the entry time has
    passed; a different nodeid (it queues a FORGET for the new one) or an
    error returns 0; fs/namei.c lookup_fast then d_invalidate()s and
    lookup_slow sends a fresh LOOKUP, in the same task (request header pid
    = the thread's tid). notify_inval_entry unhashes the dentry
    (fuse_reverse_inval_entry -> d_invalidate) and marks the parent's
    attributes stale (fuse_dir_changed), so the next walk sends GETATTR
    of the directory (permission check) and one fresh LOOKUP.

    Measured on 6.18: after close, stat sends 1 LOOKUP (the dentry was
    kept); rebound: 2 LOOKUPs (FORGET n=1 of the new node between them),
    caller gets the new node; failing with EIO: 2 LOOKUPs, caller gets EIO,
    then 1 LOOKUP at the next stat (no dentry was kept); failing with
    ENOENT: 2 LOOKUPs, then 1 per stat (negative dentries are always
    looked up afresh); both LOOKUPs of a pair come from the caller's tid.
    After notify_inval_entry: GETATTR(dir) + exactly 1 LOOKUP. Versions:
    the same code in 5.10, 6.1, 6.8, 6.12 and mainline (read); verified
    on 6.18.
    """
    pr = probe()
    d = tree(pr)
    c = pr.p("d", "c")
    fd = os.open(c, os.O_RDONLY)
    os.close(fd)

    def walk(label, expect_ino, expect_lookups):
        m = pr.mark()
        ino, tid = stat_in_thread(c)
        got = lookups(pr, m, "c")
        measured("entry timeout 0: %s: LOOKUPs" % label, len(got))
        assert ino == expect_ino, "entry timeout 0, %s: stat gave %s, expected %s" % (
            label, ino, expect_ino)
        assert len(got) == expect_lookups, \
            "entry timeout 0, %s: a stat used to send %d LOOKUP(s), now %d:\n%s" % (
                label, expect_lookups, len(got), "\n".join(e["line"] for e in pr.since(m)))
        assert all(e["pid"] == tid for e in got), \
            "entry timeout 0, %s: every LOOKUP used to come from the caller's thread " \
            "(tid %d): %s" % (label, tid, [e["pid"] for e in got])
        return m

    walk("same node, after close", pr.ino("d/c"), 1)
    walk("rebound", int(pr.ok("file d/c c-2 entry=0")), 2)
    pr.ok("fail d/c %d" % errno.EIO)
    walk("revalidation fails with EIO", -errno.EIO, 2)
    walk("after a failed one", -errno.EIO, 1)
    walk("bound again", int(pr.ok("file d/c c-3 entry=0")), 1)
    pr.ok("absent d/c")
    walk("now absent (ENOENT)", -errno.ENOENT, 2)
    walk("still absent", -errno.ENOENT, 1)
    ino = int(pr.ok("file d/c c-4 entry=0"))
    walk("bound again", ino, 1)
    r = pr.job("notify inval_entry %d c" % d)
    assert r["rc"] == 0
    m = walk("after notify_inval_entry", ino, 1)
    assert [e["op"] for e in pr.requests(m)][:2] == ["GETATTR", "LOOKUP"], \
        "after notify_inval_entry the walk used to ask GETATTR of the directory, then LOOKUP"


def test_inval_entry_spares_open_files(probe):
    """notify_inval_entry of a cached name whose file is open: the open fd
    keeps working on its inode; a new open of the path looks the name up
    and gets the name's new node.

    Kernel: fs/fuse/dir.c fuse_reverse_inval_entry -> d_invalidate: the
    dentry is unhashed, not freed; an open file holds its own reference
    to the dentry and inode (struct file f_path), so read (page cache or
    READ), pread, fstat (fuse_getattr) and mmap go on; the unhashed
    dentry is never found by a walk again (fs/namei.c lookup_fast), so
    the next open does lookup_slow -> LOOKUP.

    Measured on 6.18 (no-open, pages cached): read/pread/fstat/mmap of the
    old fd give the old bytes with no request; the next open sends one
    LOOKUP and reads the new node. The FORGET of the old node comes only
    once the fd is closed. Versions: same in 5.10 through mainline (read);
    verified on 6.18.
    """
    pr = probe()
    d = tree(pr)
    old = pr.ino("d/a")
    with open(pr.p("d", "a"), "rb") as f:
        assert f.read() == b"a-text"
        new = int(pr.ok("file d/a a-new"))
        m = pr.mark()
        assert pr.job("notify inval_entry %d a" % d)["rc"] == 0
        fd = f.fileno()
        assert os.pread(fd, 100, 0) == b"a-text" and os.fstat(fd).st_ino == old
        f.seek(0)
        assert f.read() == b"a-text"
        with mmap.mmap(fd, 6, prot=mmap.PROT_READ) as mm:
            assert mm[:] == b"a-text", "an open fd used to keep its inode's bytes"
        measured("inval_entry of an open file: requests for its fd's reads/fstat/mmap",
                 [e["op"] for e in pr.requests(m)])
        m2 = pr.mark()
        with open(pr.p("d", "a"), "rb") as f2:
            assert f2.read() == b"a-new" and os.fstat(f2.fileno()).st_ino == new, \
                "a new open after notify_inval_entry used to find the name's new node"
        assert len(lookups(pr, m2, "a")) == 1, "a new open used to send one LOOKUP"
        forgot = [e for e in pr.since(m, "FORGET") if e["ino"] == old]
        assert not forgot, "the old node used to be kept while an fd is open on it"
        m = pr.mark()
    # the inode goes with its last fd (its dentry is unhashed)
    pr.wait_for(m, "FORGET", ino=old, timeout=5)


def test_getattr_of_fstat_and_of_a_path_walk_look_alike(probe):
    """With no-open, fstat's GETATTR carries no file handle: it looks
    exactly like the GETATTR of a path walk's permission check.

    Kernel: fs/stat.c vfs_fstat -> vfs_getattr(&file->f_path) -> fs/fuse/
    dir.c fuse_getattr -> fuse_update_get_attr(inode, file=NULL): no
    FUSE_GETATTR_FH. The walk's permission check (default_permissions):
    fuse_permission -> fuse_perm_getattr -> fuse_do_getattr(inode, NULL,
    NULL). The only GETATTR with a handle is from a read that reaches past
    the cached size (fs/fuse/file.c fuse_cache_read_iter ->
    fuse_update_attributes(inode, file)), which sends fh 0 under no-open.
    And after any READ request, fuse_invalidate_atime marks the atime
    stale (not on a read-only mount), so the next stat or fstat sends one
    GETATTR although the attribute timeout has not passed.

    Measured on 6.18: after notify_inval_inode, fstat -> "GETATTR ino=N
    fi=0", stat(path) -> "GETATTR ino=N fi=0" (same pid field: the
    caller's tid); a read after the size changed -> "GETATTR ino=N fi=1";
    the first fstat after a READ -> "GETATTR fi=0". Versions: fuse_getattr
    has passed file=NULL since 4.x (read: 5.10, 6.1, 6.8, 6.12, mainline);
    verified on 6.18.
    """
    pr = probe()
    tree(pr)
    a = pr.ino("d/a")
    fd = os.open(pr.p("d", "a"), os.O_RDONLY)
    try:
        lines = {}
        for how, call in (("fstat", lambda: os.fstat(fd)),
                          ("stat(path)", lambda: os.stat(pr.p("d", "a")))):
            assert pr.job("notify inval_inode %d -1 0" % a)["rc"] == 0
            m = pr.mark()
            call()
            got = [e for e in pr.requests(m) if e["op"] == "GETATTR" and e["ino"] == a]
            assert len(got) == 1, "%s after notify_inval_inode used to send one GETATTR: %s" % (
                how, [e["line"] for e in pr.requests(m)])
            lines[how] = got[0]["line"].split(" ", 1)[1]
        measured("GETATTR lines: fstat vs stat(path)", lines)
        assert lines["fstat"] == lines["stat(path)"], \
            "fstat's GETATTR used to be indistinguishable from a path walk's: %s" % lines
        assert "fi=0" in lines["fstat"]

        m = pr.mark()
        assert os.pread(fd, 100, 0) == b"a-text"
        assert [e["op"] for e in pr.requests(m)] == ["READ"]
        m = pr.mark()
        os.fstat(fd)
        got = [e["line"].split(" ", 1)[1] for e in pr.requests(m)]
        measured("first fstat after a READ", got)
        assert len(got) == 1 and got[0].startswith("GETATTR") and "fi=0" in got[0], \
            "the first fstat after a READ used to send one GETATTR (atime): %s" % got
        m = pr.mark()
        os.fstat(fd)
        assert pr.requests(m) == [], "a second fstat used to be answered from the cache"

        # a read past the cached size: the only GETATTR that carries the file
        assert pr.job("notify inval_inode %d -1 0" % a)["rc"] == 0
        m = pr.mark()
        os.pread(fd, 100, 4096)
        got = [e["line"].split(" ", 1)[1] for e in pr.requests(m) if e["op"] == "GETATTR"]
        measured("GETATTR of a read past the cached size", got)
        assert got and all("fi=1" in l for l in got), \
            "a read past EOF used to refresh the size with the file's handle (fi=1): %s" % got
    finally:
        os.close(fd)


def test_no_open_cached_file_costs_no_request(probe):
    """With no-open, once OPEN got ENOSYS (and FLUSH got ENOSYS), opening,
    reading and closing a file whose attributes and pages are cached sends
    no request at all.

    Kernel: fs/fuse/file.c fuse_file_open: fc->no_open after the first
    ENOSYS (FUSE_NO_OPEN_SUPPORT, 4.19+... protocol 7.23) -> no OPEN, and
    no RELEASE (fuse_file_put sends none when no_open made the file);
    fuse_flush: fc->no_flush after the first ENOSYS -> no FLUSH; reads
    from the page cache; the walk's revalidation and permission check are
    answered by the dentry and attribute timeouts.

    Measured on 6.18: the first open sends OPEN (ENOSYS), the first close
    FLUSH (ENOSYS, the probe answers as imdsfs does); from then on 100
    open+read+close of the cached file send 0 requests. Versions: no_open
    since 4.19 (read); verified on 6.18.
    """
    pr = probe()
    tree(pr)
    m = pr.mark()
    with open(pr.p("d", "a"), "rb") as f:
        assert f.read() == b"a-text"
    first = [e["op"] for e in pr.requests(m)]
    measured("no-open: requests of the first open+read+close", first)
    assert "OPEN" in first and "READ" in first
    os.stat(pr.p("d", "a"))  # the atime GETATTR after the READ (see above)
    m = pr.mark()
    for _ in range(100):
        with open(pr.p("d", "a"), "rb") as f:
            assert f.read() == b"a-text"
    got = [e["line"] for e in pr.requests(m)]
    measured("no-open: requests of 100 cached open+read+close", len(got))
    assert got == [], "a cached file used to open, read and close with no request: %s" % got
