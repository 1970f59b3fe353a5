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

import errno
import json
import mmap
import os
import re
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from conftest import BINARY, IN_CI, Watchdog

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

    def requests(self, mark, everything=False):
        """Requests (not replies, jobs or marks) logged after `mark`; unless
        `everything`, without FORGET, BATCH_FORGET and RELEASEDIR, which
        the kernel sends when it lets go, later than what caused them."""
        late = () if everything else ("FORGET", "BATCH_FORGET", "RELEASEDIR")
        return [e for e in self.since(mark)
                if e["op"] != "MARK" and e["op"] not in late and
                not e["op"].startswith(("reply", "answer", "JOB", "INIT"))]

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
    made = []

    def start(*args):
        pr = Probe(args)
        made.append(pr)
        return pr

    with Watchdog(WATCHDOG_S, made) as dog:
        yield start
    problems = ["watchdog: the test ran over %ss; its probe was killed" % WATCHDOG_S] if dog.fired else []
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

    Measured on 6.18 (a request about another name of the directory held
    1000 ms): while an UNLINK is held, inval_entry returns 0 after 990-1000
    ms, right after the UNLINK's reply; while a fresh LOOKUP is held, the
    same (987-1001 ms); while a revalidating LOOKUP is held, in < 1 ms.
    With FUSE_EXPIRE_ONLY (fuse_lowlevel_notify_expire_entry, flag 1;
    kernel 6.2+, protocol 7.38) exactly the same: only the d_invalidate is
    skipped, the lock is taken all the same.
    Versions (read, not run): inode_lock(parent) (inode_lock_nested(parent,
    I_MUTEX_PARENT) since the flags came) before d_lookup in every copy
    read, from before 6.2 (no flags) to after 6.16; lookup_slow's shared
    lock since 4.7 (parallel lookups). Kernels before 6.2 ignore the
    expire flag (it was padding) and invalidate: libfuse 3.14 sends it
    regardless (3.15+ checks FUSE_CAP_EXPIRE_ONLY and says ENOSYS).
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

    Measured on 6.18: returns 0 in < 1 ms (0.0-0.2) while an UNLINK, a
    fresh LOOKUP or a revalidating LOOKUP in the directory is held 1000
    ms, for a file of that directory and for the directory itself.
    Versions: verified on 6.18; from reading, fuse_reverse_inval_inode has
    taken no inode lock with offset < 0 in every copy read (pre-6.2
    through 6.16+); with offset >= 0 it also invalidates page ranges
    (invalidate_inode_pages2_range: folio locks, so it waits for a READ
    in flight on that file's pages).
    """
    pr = probe()
    d = tree(pr)
    b = pr.ino("d/b")
    for target, ino, situations in (("a file", b, ("unlink", "lookup", "revalidate")),
                                    ("the directory", d, ("unlink", "lookup"))):
        for situation in situations:
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
        # -P: no cwd in sys.path, so imports never look at the mount
        self.proc = subprocess.Popen([sys.executable, "-P", "-c", SHELL_CHILD], cwd=cwd, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        pr.children.append(self.proc)
        self("tid")  # started: nothing it does later is start-up

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
    fails with EINVAL; code 9 (FUSE_NOTIFY_PRUNE) fails with EINVAL bare
    and is accepted with a 16-byte body (count 0): PRUNE exists here. It
    never blocks (< 0.2 ms while UNLINK or a fresh LOOKUP of the directory
    is held). Nothing is sent at the notification: names are touched only
    when walked. Of a name cached before it, the next walk sends exactly
    one LOOKUP, a fresh one (a name rebound meanwhile shows its new node
    after one LOOKUP, not two), from the walker's tid. A directory's
    dentry goes stale like any other: a walk from the root looks up "d"
    then "a" (d_invalidate dropped the unused dentries below d:
    BATCH_FORGET of their inodes). An fd open before it keeps pread,
    fstat and mmap on its inode (the only request: the atime GETATTR,
    see the GETATTR test); a process whose cwd is in such a directory
    keeps working there (getcwd, listdir).
    Versions: 6.16+ (protocol 7.44; read in the patch and uapi header, not
    run on 6.16 itself); unknown codes have been -EINVAL since
    notifications exist (fuse_notify's default case), so a daemon can
    probe support by sending it once: EINVAL = not supported. Later
    kernels (read, patches after 6.18) may also shrink the stale dentries
    from a workqueue when the fuse module's inval_wq is set.
    """
    pr = probe()
    d = tree(pr)
    r = pr.job("notify inc_epoch")
    measured("inc_epoch write rc", r["rc"])
    assert r["rc"] == 16, "FUSE_NOTIFY_INC_EPOCH (8) used to be accepted: write returned %d" % r["rc"]
    r = pr.job("notify raw 99")
    measured("notify code 99 rc", r["rc"])
    assert r["rc"] == -errno.EINVAL, \
        "an unknown notification code (99) used to fail the write with EINVAL: %d" % r["rc"]
    # FUSE_NOTIFY_PRUNE (9): a struct fuse_notify_prune_out (16 bytes) with
    # count 0 prunes nothing; without it, the size check says EINVAL
    prune = {n: pr.job("notify raw 9 %d" % n)["rc"] for n in (0, 16)}
    measured("notify code 9 (PRUNE) rc with a body of 0 / 16 bytes", prune)
    assert prune == {0: -errno.EINVAL, 16: 32}, \
        "FUSE_NOTIFY_PRUNE used to exist here (16-byte header + 16-byte body accepted): %s" % prune
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
    looked up afresh); both LOOKUPs of a pair come from the caller's tid
    (the header's pid is the thread id, not the process id).
    After notify_inval_entry: GETATTR(dir) + exactly 1 LOOKUP.
    Versions: verified on 6.18; from reading, fuse_dentry_revalidate's
    "different nodeid or error -> invalid" and the delete_stale rule are
    the same in copies from before 6.2 through 6.16+ (5.4+ for
    delete_stale).
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
        assert tid != os.getpid()  # a thread of ours, so pid and tid differ
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
    old fd give the old bytes; the only request for them is the atime
    GETATTR of the first fstat after a READ (see the GETATTR test). The
    next open sends one LOOKUP and reads the new node. The FORGET of the
    old node comes once the fd is closed, not before. Versions: verified
    on 6.18; d_invalidate's and struct file's roles are the same in every
    kernel imdsfs targets (read).
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
    pid=T fi=0", stat(path) -> "GETATTR ino=N pid=T fi=0": the same line
    (T: the caller's tid); a read past the cached size -> "GETATTR ino=N
    fi=1"; the first fstat after a READ -> "GETATTR fi=0", the next none.
    So no: a daemon cannot tell fstat's GETATTR from a path walk's.
    Versions: verified on 6.18; fuse_getattr passing file=NULL and
    fuse_invalidate_atime after READ are in every copy read (pre-6.2
    through 6.16+).
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

    Kernel: fs/fuse/file.c fuse_file_open (fuse_do_open before 6.x):
    fc->no_open after the first ENOSYS (FUSE_NO_OPEN_SUPPORT, protocol
    7.23) -> no OPEN, and no RELEASE (the file has no release args);
    fuse_flush: fc->no_flush after the first ENOSYS -> no FLUSH; reads
    from the page cache; the walk's revalidation and permission check are
    answered by the dentry and attribute timeouts.

    Measured on 6.18: the first open+read+close sends OPEN (ENOSYS), READ,
    FLUSH (ENOSYS, as imdsfs answers); then, once the atime GETATTR that
    follows a READ is done, 100 open+read+close of the cached file send 0
    requests. Versions: verified on 6.18; no_open and no_flush are in
    every kernel imdsfs targets (read in pre-6.2 and 6.16+ copies).
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
    got = [e["line"] for e in pr.requests(m, everything=True)]
    measured("no-open: requests of 100 cached open+read+close", len(got))
    assert got == [], "a cached file used to open, read and close with no request: %s" % got


def test_removed_directory_with_a_cwd_inside(probe):
    """What a successful RMDIR (of a non-empty directory: the daemon said
    yes), notify_delete and notify_inval_entry leave to processes whose
    cwd is inside the directory, or inside a subdirectory of it.

    Kernel: fs/namei.c vfs_rmdir: after the filesystem's rmdir, the
    directory's dentry is pruned (shrink_dcache_parent drops its unused
    children), its inode gets S_DEAD, and d_delete unhashes it;
    lookup_slow / lookup_open refuse a lookup in an IS_DEADDIR inode with
    ENOENT without asking the filesystem; fs/readdir.c iterate_dir reads
    nothing from a dead directory. fs/fuse/dir.c fuse_reverse_inval_entry
    with a child nodeid (notify_delete) does the same to a directory
    dentry: shrink_dcache_parent, ENOTEMPTY if a child dentry is still in
    use, else S_DEAD, dont_mount, d_delete; without one (inval_entry) it
    only d_invalidate()s. A dead inode is still the inode of its nodeid:
    fs/fuse/inode.c fuse_iget finds it while anything holds it, so a
    LOOKUP answering the same nodeid brings the dead directory back.

    Measured on 6.18 (directory d with files and a subdirectory s; one
    process with its cwd in d, one in d/s): RMDIR answered 0 -> FORGET of
    the unused children; in d: stat("a") -> ENOENT, no request; listdir(".")
    -> [] (OPENDIR and GETATTR reach the daemon, READDIR does not);
    getcwd -> ENOENT; stat("s") -> still the cached s; in d/s: LOOKUP
    reaches the daemon and works, listdir works, getcwd works. A new
    LOOKUP of d answering the old nodeid gives the dead inode back: empty,
    every name ENOENT. notify_delete of a directory with a cwd inside ->
    0 and the same dead directory; with a subdirectory in use -> ENOTEMPTY.
    notify_inval_entry -> lookups from the cwd still reach the daemon and
    work, listdir works, getcwd fails with ENOENT until a walk from the
    root finds the directory again. Versions: the same in pre-6.2 through
    6.16+ as far as read (vfs_rmdir's S_DEAD, fuse_reverse_inval_entry's
    ENOTEMPTY/S_DEAD); verified on 6.18.
    """
    pr = probe()
    tree(pr)
    pr.ok("dir d/s")
    pr.ok("file d/s/f f-text")
    in_d, in_s = Shell(pr, pr.p("d")), Shell(pr, pr.p("d", "s"))
    assert in_d("stat a")["ok"] and in_s("stat f")["ok"]
    m = pr.mark()
    os.rmdir(pr.p("d"))
    measured("rmdir answered 0: requests", [e["op"] for e in pr.requests(m, everything=True)])

    def check(sh, line, expect, requests, what):
        m = pr.mark()
        got = sh(line)
        ops = [e["op"] for e in pr.requests(m)]
        measured("%s: %s" % (what, line), {"result": got, "requests": ops})
        assert got == expect and requests(ops), "%s, %r used to give %s; now %s, requests:\n%s" % (
            what, line, expect, got, "\n".join(e["line"] for e in pr.since(m)))

    dead = "rmdir'd directory, cwd inside"
    check(in_d, "stat a", {"errno": errno.ENOENT}, lambda ops: ops == [], dead)
    check(in_d, "listdir", {"ok": []}, lambda ops: "READDIR" not in ops and "OPENDIR" in ops, dead)
    check(in_d, "getcwd", {"errno": errno.ENOENT}, lambda ops: ops == [], dead)
    check(in_d, "stat s", {"ok": pr.ino("d/s")}, lambda ops: ops == [], dead)
    below = "rmdir'd directory, cwd in its subdirectory"
    check(in_s, "stat f", {"ok": pr.ino("d/s/f")}, lambda ops: ops == ["LOOKUP"], below)
    check(in_s, "listdir", {"ok": ["f"]}, lambda ops: "READDIR" in ops, below)
    check(in_s, "getcwd", {"ok": pr.p("d", "s")}, lambda ops: True, below)
    # the same nodeid looked up again is the dead inode
    assert os.stat(pr.p("d")).st_ino == pr.ino("d")
    assert os.listdir(pr.p("d")) == [] and not os.path.exists(pr.p("d", "b")), \
        "a LOOKUP answering a removed directory's nodeid used to give back its dead inode"

    for name in "efg":
        pr.ok("dir " + name)
        pr.ok("file %s/a %s-a" % (name, name))
    pr.ok("dir g/s")
    in_e, in_f, in_gs = Shell(pr, pr.p("e")), Shell(pr, pr.p("f")), Shell(pr, pr.p("g", "s"))
    for sh in (in_e, in_f):
        assert sh("stat a")["ok"]
    r = pr.job("notify delete 1 %d e" % pr.ino("e"))
    assert r["rc"] == 0, "notify_delete of a directory with a cwd inside used to succeed: %s" % r
    r = pr.job("notify delete 1 %d g" % pr.ino("g"))
    measured("notify_delete of a directory whose subdirectory is a cwd: rc", r["rc"])
    assert r["rc"] == -errno.ENOTEMPTY, \
        "notify_delete of a directory with a busy subdirectory used to fail with ENOTEMPTY"
    assert pr.job("notify inval_entry 1 f")["rc"] == 0
    deleted = "notify_delete'd directory, cwd inside"
    check(in_e, "stat a", {"errno": errno.ENOENT}, lambda ops: ops == [], deleted)
    check(in_e, "listdir", {"ok": []}, lambda ops: "READDIR" not in ops, deleted)
    inval = "notify_inval_entry'd directory, cwd inside"
    check(in_f, "stat a", {"ok": pr.ino("f/a")}, lambda ops: True, inval)
    check(in_f, "listdir", {"ok": ["a"]}, lambda ops: "READDIR" in ops, inval)
    check(in_f, "getcwd", {"errno": errno.ENOENT}, lambda ops: ops == [], inval)
    os.stat(pr.p("f"))
    check(in_f, "getcwd", {"ok": pr.p("f")}, lambda ops: True, inval + ", after a walk to it")
    check(in_gs, "getcwd", {"ok": pr.p("g", "s")}, lambda ops: True, "cwd below a busy notify_delete")


READERS = {
    # a buffered read of a small file: readahead, a background READ
    "buffered read(2)": "import os, sys\nos.read(os.open(sys.argv[1], os.O_RDONLY), 4096)",
    # O_DIRECT: the reader's own request, waited for in the kernel
    "O_DIRECT read(2)": "import mmap, os, sys\nfd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECT)\n"
                        "os.readv(fd, [mmap.mmap(-1, 4096)])",
    # cat of 1 MiB: large readahead windows
    "cat of 1 MiB": "import os, sys\nos.execvp('cat', ['cat', sys.argv[1]])",
}


def test_forget_never_overtakes_a_read_in_flight(probe):
    """A FORGET for an inode never reaches the daemon before the reply to a
    READ of that inode is sent, even when the reader was killed during the
    READ and the name was unlinked and the caches dropped meanwhile.

    Kernel: fs/fuse/inode.c fuse_evict_inode sends the FORGET (queued by
    fuse_queue_forget) only after truncate_inode_pages_final(), which
    waits for every locked page cache folio, and a READ for the page
    cache (fs/fuse/file.c fuse_readahead / fuse_read_folio) keeps its
    folios locked until its reply has been copied (fuse_readpages_end).
    An O_DIRECT READ is the reader's own request: fs/fuse/dev.c
    request_wait_answer lets a fatal signal end the wait only while the
    request is still queued (FR_PENDING); once the daemon has read it,
    the killed task waits, unkillable, for the reply, and holds its file
    (so the inode) until then.

    Measured on 6.18 (READ held 1000 ms, the reader SIGKILLed during it,
    then unlink (answered 0) and `echo 2 > /proc/sys/vm/drop_caches`): a
    buffered reader and cat die at once, the O_DIRECT reader only after
    the reply; in all three the FORGET of the inode comes after the
    probe sent the READ reply (by 0.1 to 50 ms). So a daemon may free a
    node at FORGET: no worker is still answering a READ from it (other
    than one that already sent the reply and is returning from the
    write). Versions: verified on 6.18; from reading, fuse_evict_inode's
    order and request_wait_answer's rules are the same in every kernel
    imdsfs targets; the read path moved from pages to folios in 6.x
    without changing when they unlock.
    """
    pr = probe()
    tree(pr)
    for i, (kind, code) in enumerate(READERS.items()):
        name = "r%d" % i
        size = 1 << 20 if "1 MiB" in kind else 100
        ino = int(pr.ok("file d/%s z size=%d" % (name, size)))
        os.stat(pr.p("d", name))
        pr.ok("delay READ %d ino=%d" % (HELD_MS, ino))
        m = pr.mark()
        reader = pr.spawn(code, pr.p("d", name))
        pr.wait_for(m, "READ", ino=ino)
        killed = time.monotonic()
        reader.kill()
        reader.wait(HELD_MS / 1000 + 5)
        died_ms = (time.monotonic() - killed) * 1000
        Background(lambda: os.unlink(pr.p("d", name))).join()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("2")
        pr.ok("delay READ 0 ino=%d" % ino)
        reply = pr.wait_for(m, "reply READ", ino=ino, timeout=5)
        forget = pr.wait_for(m, "FORGET", ino=ino, timeout=5)
        early = [e for e in pr.since(m, "FORGET") if e["ino"] == ino and e["t"] < reply["t"]]
        measured("FORGET vs READ, %s: reader died after ms" % kind, round(died_ms))
        measured("FORGET vs READ, %s: FORGET after reply by ms" % kind,
                 round((forget["t"] - reply["t"]) / 1000, 2))
        assert not early and forget["t"] > reply["t"], \
            "%s: a FORGET of the inode used to come only after the READ reply was sent" % kind


# An inotify watcher (ctypes, no package needed) driven through its stdin:
# "watch PATH LABEL MASK" adds a watch, "drain" prints the events queued so
# far as one JSON list of [label, flags, name]. Runs in a child so that it
# can run in another mount namespace too.
WATCHER = r"""
import ctypes, json, os, select, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
FLAGS = {0x1: "ACCESS", 0x2: "MODIFY", 0x4: "ATTRIB", 0x8: "CLOSE_WRITE", 0x10: "CLOSE_NOWRITE",
         0x20: "OPEN", 0x40: "MOVED_FROM", 0x80: "MOVED_TO", 0x100: "CREATE", 0x200: "DELETE",
         0x400: "DELETE_SELF", 0x800: "MOVE_SELF", 0x2000: "UNMOUNT", 0x4000: "Q_OVERFLOW",
         0x8000: "IGNORED", 0x40000000: "ISDIR"}
fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
labels = {}
for line in sys.stdin:
    words = line.split()
    if words[0] == "watch":
        wd = libc.inotify_add_watch(fd, os.fsencode(words[1]), int(words[3], 0))
        labels[wd] = words[2]
        print(json.dumps(wd if wd >= 0 else -ctypes.get_errno()), flush=True)
        continue
    out = []
    while select.select([fd], [], [], 0.02)[0]:
        buf = os.read(fd, 65536)
        i = 0
        while i < len(buf):
            wd, mask, cookie, n = struct.unpack_from("iIII", buf, i)
            name = buf[i + 16:i + 16 + n].rstrip(b"\0").decode()
            flags = "|".join(v for k, v in sorted(FLAGS.items()) if mask & k)
            out.append([labels.get(wd, wd), flags, name])
            i += 16 + n
    print(json.dumps(out), flush=True)
"""

IN_ALL_EVENTS = 0xfff
# systemd's path unit watch on a directory (src/core/path.c)
IN_SYSTEMD_PATH = 0x800 | 0x400 | 0x4 | 0x100 | 0x80


class Watcher:
    def __init__(self, pr, prefix=(), root=None):
        self.root = root or pr.path
        self.proc = subprocess.Popen([*prefix, sys.executable, "-c", WATCHER], text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        pr.children.append(self.proc)

    def _ask(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], 10)
        assert ready, "the inotify watcher hung on %r" % line
        return json.loads(self.proc.stdout.readline())

    def watch(self, rel, label, mask=IN_ALL_EVENTS):
        wd = self._ask("watch %s %s %d" % (os.path.join(self.root, rel), label, mask))
        assert wd >= 0, "inotify_add_watch(%s): %s" % (rel, os.strerror(-wd))

    def drain(self):
        return [tuple(e) for e in self._ask("drain")]


def test_inotify_events(probe):
    """Which inotify events the notifications and real operations on the
    mount produce, for a watcher of the directory and of the file (also
    through a read-only bind mount in another mount namespace, and with
    systemd's path-unit mask on the directory).

    Kernel: notifications: fs/fuse/dir.c fuse_reverse_inval_entry calls no
    fsnotify hook; with a child nodeid (notify_delete) it clears the
    inode's nlink and d_delete()s the dentry, and fs/dcache.c
    dentry_unlink_inode -> fsnotify_inoderemove sends IN_DELETE_SELF (and
    IN_IGNORED) to the inode's watchers, but no IN_DELETE to the
    directory's (libfuse's header says "inotify watchers are informed
    that the dentry has been deleted": only the inode's watchers are).
    inval_inode (fs/fuse/inode.c fuse_reverse_inval_inode)
    and INC_EPOCH touch no dentry and call no hook. Real operations go
    through fs/namei.c vfs_* and include/linux/fsnotify.h hooks:
    fsnotify_create (IN_CREATE), fsnotify_mkdir, fsnotify_link_count
    (IN_ATTRIB on unlink), d_delete_notify -> fsnotify_nameremove
    (IN_DELETE), fs/attr.c notify_change -> fsnotify_change (IN_ATTRIB, to
    the inode and, with the name, to its parent's watchers). inotify
    watches are on inodes, so a bind mount, read-only or in another mount
    namespace, sees the same events. Locks: unlink/rmdir/create/mknod/
    mkdir take the parent's inode lock exclusive (fs/namei.c), utimensat
    only the file's; the daemon's own operation on its mount waits like
    anyone else's for a lookup in flight in that directory (it is answered
    by another worker thread, so it does not deadlock unless the daemon
    makes the LOOKUP's answer wait for it).

    Measured on 6.18: see EXPECTED below; the ro bind mount watcher in
    another mount namespace gets exactly the same events; with systemd's
    mask (IN_MOVE_SELF|IN_DELETE_SELF|IN_ATTRIB|IN_CREATE|IN_MOVED_TO) on
    the directory, only create/mknod/mkdir (IN_CREATE) and utimens of a
    file in it (IN_ATTRIB with the name) or of itself (IN_ATTRIB) wake it:
    no notification ever does. The self thread's unlink waited ~1000 ms
    for a held fresh LOOKUP in the directory, its utimens of a file there
    did not. An inotify watch pins its inode (fsnotify marks hold an
    inode reference), so a watched file is not forgotten while watched.
    Versions: verified on 6.18; from reading, the hooks named give the
    same events in every kernel imdsfs targets (the parent's IN_DELETE
    moved from vfs_unlink into d_delete_notify in 5.17, same events).
    """
    pr = probe()
    d = tree(pr)
    pr.ok("dir d/s")
    for n in "ijk":
        pr.ok("file d/%s %s-text" % (n, n))
    ino = pr.ino
    bind = os.path.join(pr.dir, "ro")
    os.mkdir(bind)
    in_ns = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
             'mount --bind -o ro "$0" "$1" && shift && exec "$@"', pr.path, bind]
    views = {"here": Watcher(pr), "ro bind, other mount ns": Watcher(pr, in_ns, bind),
             "systemd mask": Watcher(pr)}
    EXPECTED = [
        # (step, probe command, watched file or None, events to all events watchers)
        ("notify_inval_entry", "notify inval_entry %d a" % d, "a", []),
        ("notify_inval_entry, expire only", "notify inval_entry %d a expire" % d, "a", []),
        ("notify_inval_inode -1", "notify inval_inode %d -1 0" % ino("d/b"), "b", []),
        ("notify_inval_inode 0 0 (pages)", "notify inval_inode %d 0 0" % ino("d/b"), "b", []),
        ("notify_inc_epoch", "notify inc_epoch", "b", []),
        ("notify_delete of a file", "notify delete %d %d c" % (d, ino("d/c")), "c",
         [("file", "DELETE_SELF", ""), ("file", "IGNORED", "")]),
        ("notify_delete of a directory", "notify delete %d %d s" % (d, ino("d/s")), "s",
         [("file", "DELETE_SELF", ""), ("file", "IGNORED", "")]),
        ("self create", "self create d/new", None,
         [("dir", "CREATE", "new"), ("dir", "OPEN", "new"), ("dir", "CLOSE_NOWRITE", "new")]),
        ("self mknod", "self mknod d/new2", None, [("dir", "CREATE", "new2")]),
        ("self mkdir", "self mkdir d/nd", None, [("dir", "CREATE|ISDIR", "nd")]),
        ("self utimens of a file", "self utimens d/j", "j",
         [("dir", "ATTRIB", "j"), ("file", "ATTRIB", "")]),
        ("self unlink", "self unlink d/k", "k",
         [("file", "ATTRIB", ""), ("file", "DELETE_SELF", ""), ("file", "IGNORED", ""),
          ("dir", "DELETE", "k")]),
        ("self rmdir", "self rmdir d/nd", "nd",
         [("file", "DELETE_SELF", ""), ("file", "IGNORED", ""), ("dir", "DELETE|ISDIR", "nd")]),
        ("self utimens of the directory", "self utimens d", None, [("dir", "ATTRIB|ISDIR", "")]),
    ]
    systemd_events = {}
    for step, line, watched, expected in EXPECTED:
        for name, w in views.items():
            if name == "systemd mask":
                w.watch("d", "dir", IN_SYSTEMD_PATH)
            else:
                w.watch("d", "dir")
                if watched:
                    w.watch(os.path.join("d", watched), "file")
            w.drain()
        r = pr.job(line)
        assert r["rc"] in (0, 16), "%s: %s" % (step, r)
        got = {name: w.drain() for name, w in views.items()}
        measured("inotify: " + step, got["here"])
        systemd_events[step] = got["systemd mask"]
        for name in ("here", "ro bind, other mount ns"):
            assert sorted(got[name]) == sorted(expected), \
                "inotify, %s, watcher %s: used to see %s, now %s" % (step, name, expected, got[name])
    measured("inotify: systemd path mask on the directory", systemd_events)
    woken = sorted(s for s, evs in systemd_events.items() if evs)
    assert woken == sorted(["self create", "self mknod", "self mkdir", "self utimens of a file",
                            "self utimens of the directory"]), \
        "systemd's path-unit mask used to be woken by these steps only: %s" % woken

    # the self thread's operations wait for a lookup in flight like anyone's
    for op, line, waits in (("unlink", "self unlink d/i", True),
                            ("utimens", "self utimens d/j", False)):
        bg, m, held_op, held_name = hold(pr, "lookup", d)
        r = pr.job(line, wait_ms=HELD_MS * 3)
        bg.join()
        pr.ok("delay LOOKUP 0 ino=%d name=%s" % (d, held_name))
        assert "pending" not in r and r["rc"] == 0, "self %s: %s" % (op, r)
        ms = r["us"] / 1000
        measured("self %s while a fresh LOOKUP in the directory is held: ms" % op, round(ms))
        assert (ms >= BLOCKED_MS) == waits, \
            "the daemon's own %s on its mount %s wait for a held LOOKUP in the directory " \
            "(took %d ms)" % (op, "used to" if waits else "used not to", ms)


def test_poll_reaches_the_daemon_and_notify_poll_wakes_the_poller(probe):
    """poll(2) on a file of a no-open mount sends POLL (with fh 0: there
    was no OPEN) and a kernel poll handle; notify_poll with that handle
    wakes the poller, whose poll then sends POLL again and gets POLLIN.

    Kernel: fs/fuse/file.c fuse_file_poll: unless fc->no_poll (set by an
    ENOSYS reply), sends FUSE_POLL with ff->fh (0 under no-open: the file
    was made by fuse_file_open without OPEN) and ff->kh, registers the
    file in fc->polled_files (fuse_register_polled_file) and
    FUSE_POLL_SCHEDULE_NOTIFY; fs/fuse/dev.c fuse_notify_poll ->
    fuse_notify_poll_wakeup finds the file by kh and wakes ff->poll_wait.

    Measured on 6.18: "POLL ino=N fh=0 ph=1"; the poller (5 s timeout)
    returns POLLIN 0.8 ms after notify_poll (rc 0), after a second POLL.
    Versions: verified on 6.18; fuse_file_poll/fuse_notify_poll are the
    same in every kernel imdsfs targets (read).
    """
    pr = probe()
    tree(pr)
    a = pr.ino("d/a")
    fd = os.open(pr.p("d", "a"), os.O_RDONLY)
    try:
        def wait_readable():
            p = select.poll()
            p.register(fd, select.POLLIN)
            t0 = time.monotonic()
            return p.poll(5000), time.monotonic() - t0

        m = pr.mark()
        poller = Background(wait_readable)
        first = pr.wait_for(m, "POLL", ino=a)
        measured("poll: first POLL", first["line"].split(" ", 1)[1])
        assert first["ph"] == 1 and first["fh"] == 0, \
            "POLL used to reach a no-open daemon with fh 0 and a poll handle: %s" % first["line"]
        time.sleep(0.2)
        assert poller.t1 is None, "the poller used to wait (POLL answered 0 revents)"
        sent = time.monotonic()
        r = pr.job("notify poll %d" % a)
        assert r["rc"] == 0, "notify_poll: %s" % r
        events, waited = poller.join(5)
        woke_ms = (poller.t1 - sent) * 1000
        measured("poll: poller woken after notify_poll, ms", round(woke_ms, 1))
        polls = pr.since(m, "POLL")
        measured("poll: POLL requests", len(polls))
        assert events == [(fd, select.POLLIN)] and woke_ms < 1000, \
            "notify_poll used to wake the poller at once with POLLIN: %s after %d ms" % (
                events, woke_ms)
    finally:
        os.close(fd)


def test_libfuse_leaves_lookups_in_a_directory_serialized(probe):
    """K9. Two fresh LOOKUPs of different names in one directory, each held
    1 s by the probe, which wants FUSE_CAP_PARALLEL_DIROPS from libfuse
    3.14 but gets its INIT reply as libfuse writes it: the second LOOKUP
    reaches the daemon only after the first is answered, because libfuse
    3.14 never puts FUSE_PARALLEL_DIROPS in the reply (lib/fuse_lowlevel.c
    do_init; fixed in libfuse 3.17.1, commit c9905341) and without it the
    kernel takes a per-directory mutex around each lookup (fs/fuse/dir.c
    fuse_lookup -> fuse_lock_inode, all versions). imdsfs adds the flag
    itself (src/kernel.c, K9; test_faults.py
    test_slow_lookup_holds_up_no_neighbour). When this test fails, the
    libfuse in use sends the flag: kernel_writev's patch has become a
    no-op and can go. Verified on 6.18 with libfuse 3.14.0."""
    pr = probe()
    d = int(pr.ok("dir d"))
    for name in ("p", "q"):
        pr.ok("file d/%s text" % name)
    os.listdir(pr.p("d"))
    pr.ok("delay LOOKUP %d ino=%d" % (HELD_MS, d))
    m = pr.mark()
    first = Background(lambda: os.stat(pr.p("d", "p")))
    pr.wait_for(m, "LOOKUP", name="p")
    second = Background(lambda: os.stat(pr.p("d", "q")))
    first.join()
    second.join()
    pr.ok("delay LOOKUP 0 ino=%d" % d)
    lookups = [e for e in pr.since(m, "LOOKUP") if e.get("ino") == d]
    replies = [e for e in pr.since(m, "reply LOOKUP") if e.get("ino") == d]
    assert len(lookups) == 2 and replies, pr.output()
    gap_ms = (lookups[1]["t"] - lookups[0]["t"]) / 1000.0
    measured("serialized_lookup_gap_ms", gap_ms)
    assert lookups[1]["t"] >= replies[0]["t"], (
        "the second LOOKUP came %.0f ms after the first, before its reply: lookups "
        "in one directory run in parallel with this libfuse" % gap_ms)

