"""Issue 11: open files behave like files.

SPEC.md, "Caching": an open file keeps the value it was opened with, whole,
whatever happens meanwhile (rm, SIGHUP, a volatile value changing): read,
pread, mmap and fstat on it keep working and agree. Only a new open shows a
new value; after `rm FILE` returns, a new open of FILE and of each of its
twins (its raw/ twin, values derived from the same document) shows the new
value. Many readers of one volatile value share a request, and a burst of
readers leaves no fds or threads behind.

The kernel behaviour each of these rests on is written in src/kernel.c;
test_kernel_contract.py pins it on a probe file system.
"""

import errno
import json
import mmap
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from conftest import load_instance, read_fd, run_threads
from test_cache import sighup, slurp

WATCHDOG_S = 120

DOC = "dynamic/instance-identity/document"
AMI = "meta-data/ami-id"
NAME = "meta-data/tags/instance/Name"
AEMM_MAC = "0e:49:61:0f:c3:11"
_, AEMM = load_instance("aemm")


def has_epoch(mnt):
    """Whether the daemon invalidates names by epoch (Linux >= 6.16): then
    rm's guarantee holds for every twin the moment rm returns."""
    return "names are invalidated by epoch" in mnt.output()


def new_doc(region, account):
    doc = json.loads(AEMM[DOC])
    doc.update(region=region, accountId=account)
    return json.dumps(doc, indent=2).encode()


# Old and new bytes per IMDS path, of different lengths, the tag value
# longer than a page so that an open file reads part of it from the daemon
# after the change.
OLD = {DOC: new_doc("eu-west-1", "111111111111"), AMI: b"ami-0old",
       NAME: b"n" * 6000}
NEW = {DOC: new_doc("ap-southeast-2", "2222222222223333"), AMI: b"ami-0000000000new",
       NAME: b"N" * 9100}


def shown(rel, values):
    """What file `rel` holds when IMDS serves `values`."""
    doc = json.loads(values[DOC])
    return {
        "region": doc["region"].encode() + b"\n",
        "account_id": doc["accountId"].encode() + b"\n",
        "instance_identity_document": values[DOC] + b"\n",
        "raw/" + DOC: values[DOC],
        "ami_id": values[AMI] + b"\n",
        "raw/" + AMI: values[AMI],
        "tags/Name": values[NAME] + b"\n",
        "raw/" + NAME: values[NAME],
    }[rel]


def rm(rel):
    return lambda mnt: os.unlink(mnt.p(rel))


def rmdir(rel):
    return lambda mnt: os.rmdir(mnt.p(rel))


# id: (file held open, what clears it, names that must show the new value
# at once when that returns)
CASES = {
    "sighup": ("region", sighup, ["region", "account_id", "raw/" + DOC, "ami_id"]),
    "rm-cleaned-name-of-raw-twin": ("raw/" + AMI, rm("ami_id"), ["raw/" + AMI, "ami_id"]),
    "rm-raw-twin": ("ami_id", rm("raw/" + AMI), ["ami_id", "raw/" + AMI]),
    "rm-value-of-same-document": (
        "account_id", rm("region"),
        ["account_id", "instance_identity_document", "raw/" + DOC, "region"]),
    "rm-raw-document": ("region", rm("raw/" + DOC),
                        ["region", "account_id", "instance_identity_document"]),
    "rmdir-parent": ("tags/Name", rmdir("tags"), ["tags/Name", "raw/" + NAME]),
    "rmdir-raw-parent": ("raw/" + AMI, rmdir("raw/meta-data"), ["ami_id", "raw/" + AMI]),
}


def assert_keeps(fd, old, head):
    """An fd opened on `old`, of which `head` was read: fstat, pread, the
    rest of read(2) and mmap all give the old value, whole."""
    st = os.fstat(fd)
    assert st.st_size == len(old), "fstat: size %d, the value opened was %d" % (
        st.st_size, len(old))
    assert os.pread(fd, len(old) + 100, 0) == old, "pread"
    rest = read_fd(fd, 1000)
    assert head + rest == old, "read(2) to the end: %d bytes, want %d" % (
        len(head + rest), len(old))
    if old:
        with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as m:
            assert m[:] == old, "mmap"


# The kernel's epoch in use, and not (IMDSFS_EPOCH=0: the path of kernels
# before 6.16, taken on this one).
EPOCH = [pytest.param({}, id="epoch"), pytest.param({"IMDSFS_EPOCH": "0"}, id="no-epoch")]


@pytest.mark.parametrize("env", EPOCH)
@pytest.mark.parametrize("case", sorted(CASES))
def test_open_file_keeps_its_value(start_mock, mnt, case, env):
    """An fd held across the clear keeps its value (fstat, pread, read,
    mmap agree); after the clear returns, a new open of the file and of
    each of its twins shows the new value (at once with the epoch,
    otherwise within the window of the man page's CAVEATS)."""
    held, clear, twins = CASES[case]
    mock = start_mock("aemm")
    for path, value in OLD.items():
        mock.set(path, value)
    m = mnt(mock, env=env)
    assert has_epoch(m) == (not env), m.output()
    for rel in twins + [held]:
        assert slurp(m.p(rel)) == shown(rel, OLD), rel  # cached, in the kernel too
    fd = os.open(m.p(held), os.O_RDONLY)
    try:
        # No readahead: what is not read yet is asked of the daemon later.
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        head = os.read(fd, 4096)
        for path, value in NEW.items():
            mock.set(path, value)
        clear(m)
        assert_keeps(fd, shown(held, OLD), head)
        deadline = time.monotonic() + (0 if has_epoch(m) else 1.0)
        for rel in twins:
            while True:
                got = slurp(m.p(rel))
                if got == shown(rel, NEW) or time.monotonic() >= deadline:
                    break
                time.sleep(0.005)
            assert got == shown(rel, NEW), "%s after %s: %r..." % (rel, case, got[:40])
            assert os.stat(m.p(rel)).st_size == len(shown(rel, NEW)), rel
        # The open file still reads its own value after all that.
        os.lseek(fd, 0, os.SEEK_SET)
        assert_keeps(fd, shown(held, OLD), b"")
    finally:
        os.close(fd)
    assert slurp(m.p(held)) == shown(held, NEW)


def test_open_volatile_file_keeps_its_value(start_mock, mnt):
    """A volatile value changes under an open file: the fd keeps the value
    it was opened with; the next open shows the new one."""
    mock = start_mock("rich")
    src = "meta-data/instance-action"
    old, new = b"a" * 5000, b"b" * 7000
    mock.set(src, old)
    m = mnt(mock)
    p = m.p("instance_action")
    fd = os.open(p, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        head = os.read(fd, 4096)
        mock.set(src, new)
        assert slurp(p) == new + b"\n"
        sighup(m)
        assert_keeps(fd, old + b"\n", head)
    finally:
        os.close(fd)


def test_fstat_after_many_sighups(start_mock, mnt):
    """What `tail -f` and Python's mmap do: fstat an open file again and
    again while SIGHUPs clear everything. Every fstat works."""
    mock = start_mock("aemm")
    m = mnt(mock)
    fds = [os.open(m.p(rel), os.O_RDONLY) for rel in ("region", "raw/" + DOC, "tags/Name")]
    try:
        sizes = [os.fstat(fd).st_size for fd in fds]
        for i in range(5):
            mock.set(NAME, "v%d" % i * (i + 1))
            sighup(m)
            assert [os.fstat(fd).st_size for fd in fds] == sizes
            for fd in fds:
                with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as mm:
                    assert len(mm) == os.fstat(fd).st_size
    finally:
        for fd in fds:
            os.close(fd)


def test_tail_f_survives_sighups(start_mock, mnt):
    """`tail -f` polls fstat on its fd (on FUSE it does not trust inotify);
    SIGHUPs every 0.2 s for 2 s must not end it, nor make it complain."""
    tail = shutil.which("tail")
    assert tail, "coreutils tail is missing"
    mock = start_mock("aemm")
    m = mnt(mock)
    want = slurp(m.p("region"))
    proc = subprocess.Popen([tail, "-f", "-s", "0.05", m.p("region")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for i in range(10):
            time.sleep(0.2)
            m.proc.send_signal(signal.SIGHUP)
            assert proc.poll() is None, "tail -f ended after %d SIGHUPs: %s" % (
                i, proc.stderr.read().decode(errors="replace"))
        time.sleep(0.3)
        assert proc.poll() is None, "tail -f ended: %s" % proc.stderr.read().decode()
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=10)
    assert out == want, out
    assert err == b"", err


# --- a cwd inside the tree ----------------------------------------------------

CHILD = r"""
import os, sys
os.chdir(sys.argv[1])
for line in sys.stdin:
    cmd = line.split()
    try:
        if cmd[0] == "read":
            with open(cmd[1], "rb") as f:
                out = f.read().decode(errors="replace").strip()
        else:
            out = " ".join(sorted(os.listdir(".")))
        print("ok " + out, flush=True)
    except OSError as e:
        print("err %d" % e.errno, flush=True)
"""


class CwdProcess:
    """A process whose cwd is `path`, reading names relative to it."""

    def __init__(self, path):
        self.proc = subprocess.Popen([sys.executable, "-c", CHILD, path], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)

    def ask(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(10)


@pytest.mark.parametrize("clear", ["sighup", "rmdir-above", "rm-r-sibling"])
def test_cwd_inside_a_cleared_directory(start_mock, mnt, clear):
    """A shell whose cwd is network/interfaces/<mac> goes on reading
    relative names, and sees new values, after SIGHUP, after `rmdir
    network` (imdsfs clears the subtree and keeps its names) and after
    `rm -r` of a neighbouring directory."""
    mock = start_mock("aemm")
    m = mnt(mock)
    src = "meta-data/network/interfaces/macs/%s/vpc-id" % AEMM_MAC
    cwd = m.p("network", "interfaces", AEMM_MAC)
    child = CwdProcess(cwd)
    try:
        assert child.ask("read vpc_id") == "ok " + AEMM[src].decode()
        listing = child.ask("list")
        assert "vpc_id" in listing
        mock.set(src, "vpc-new")
        if clear == "sighup":
            sighup(m)
        elif clear == "rmdir-above":
            os.rmdir(m.p("network"))
        else:
            subprocess.run(["rm", "-r", m.p("tags")], check=True, timeout=10)
            os.unlink(os.path.join(cwd, "vpc_id"))
        assert child.ask("read vpc_id") == "ok vpc-new"
        assert child.ask("list") == listing
        assert child.ask("read subnet_id").startswith("ok subnet-")
    finally:
        child.close()
    assert m.read("network", "interfaces", AEMM_MAC, "vpc_id") == b"vpc-new\n"


def test_cwd_inside_the_removed_directory_is_empty(start_mock, mnt):
    """The one case the kernel decides (kernel.c, K6; man page CAVEATS): a
    cwd *in* the directory that rmdir removed sees nothing there any more,
    and a fresh walk sees everything."""
    mock = start_mock("aemm")
    m = mnt(mock)
    child = CwdProcess(m.p("tags"))
    try:
        assert child.ask("read Name") == "ok test-instance"
        os.rmdir(m.p("tags"))
        assert child.ask("read Name") == "err %d" % errno.ENOENT
        assert child.ask("list") in ("err %d" % errno.ENOENT, "ok")
    finally:
        child.close()
    assert m.read("tags", "Name") == b"test-instance\n"


# --- many readers ---------------------------------------------------------------

def test_thousand_volatile_readers_share_requests(start_mock, mnt):
    """1,000 readers of instance_action at once, IMDS answering in 2 s:
    they share the request in flight. The kernel itself lets one of them
    look the name up and the others wait for it; those then revalidate the
    name (its entry timeout is 0) and share a second request. So two GETs,
    where the daemon used to make one per reader (64 at a time, 31 s).
    (2 s: a worker thread per waiting reader is started one at a time, and
    all of them must be in the daemon before the second request ends.)"""
    mock = start_mock("rich")
    src = "meta-data/instance-action"
    m = mnt(mock, options=["timeout=5000"])
    p = m.p("instance_action")
    want = slurp(p)
    mock.fault(path=src, delay_ms=2000)
    mock.reset_counts()
    t0 = time.monotonic()
    results = run_threads(1000, lambda i: slurp(p), 60, at_once=True)
    took = time.monotonic() - t0
    bad = [r for r in results if r != want]
    assert not bad, bad[:3]
    assert mock.count(src) <= 2, "1,000 readers cost %d GETs" % mock.count(src)
    assert took < 12.0, "1,000 readers took %.1f s" % took


def counts(pid):
    fds = len(os.listdir("/proc/%d/fd" % pid))
    threads = len(os.listdir("/proc/%d/task" % pid))
    return fds, threads


def test_burst_leaves_no_fds_or_threads(start_mock, mnt):
    """After 1,000 readers of 100 different cold values and of a volatile
    one (IMDS slow, so many requests are in flight at once), the daemon's
    fds and threads go back to what they were after two readers at once."""
    mock = start_mock("rich")
    for i in range(100):
        mock.set("meta-data/tags/instance/t%03d" % i, "v%d" % i)
    m = mnt(mock, options=["timeout=5000"])
    pid = m.proc.pid
    names = m.listdir("tags")
    # Two requests at once (IMDS slow): the daemon's steady state.
    mock.fault(path="meta-data/tags/instance/*", delay_ms=200)
    run_threads(2, lambda i: slurp(m.p("tags", "t%03d" % (98 + i))), 60, at_once=True)
    time.sleep(0.5)
    before = counts(pid)
    mock.fault(path="meta-data/instance-action", delay_ms=200)
    results = run_threads(1000, lambda i: slurp(
        m.p("tags", names[i % len(names)]) if i % 2 else m.p("instance_action")), 60,
        at_once=True)
    assert not [r for r in results if isinstance(r, BaseException)]
    mock.clear_faults()
    # Idle worker threads exit as they finish their last request; idle
    # connections are closed when handed back: nothing to wait for but the
    # stragglers.
    deadline = time.monotonic() + 10
    after = counts(pid)
    while (after[0] > before[0] or after[1] > before[1]) and time.monotonic() < deadline:
        time.sleep(0.1)
        after = counts(pid)
    assert after[0] <= before[0] and after[1] <= before[1], (
        "fds, threads: %s before the burst, %s after" % (before, after))
