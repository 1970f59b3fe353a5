"""Containers and secrets: share the instance's identity, never its credentials
(SPEC.md, "Permissions", "Command line" hide_sensitive, "The raw tree").

The container view is built from real kernel objects, without Docker: a
private mount namespace (`unshare --mount --propagation private`) in which
the imdsfs mount is bind-mounted and remounted read-only, as
`docker run -v /run/ec2:/run/ec2:ro` does, and a process that drops to
uid/gid 65534 with no groups and no capabilities (`setpriv`). What that
process sees is measured by a small probe script (PROBE below) that prints
JSON, so that every assertion stays here in pytest.

Cache clearing is observed through the mock's request counters: after root
has read the whole tree, any GET of a non-volatile path means some cache was
cleared (an `rm` that reached the daemon).

Everything that can block has a limit: subprocesses run in their own process
group and are killed with it on timeout, HTTP calls have timeouts, and a
watchdog kills a test's daemons after WATCHDOG_S seconds so that a hung FUSE
request turns into ENOTCONN and a failure instead of a hung run. Every bind
mount is made inside a private mount namespace that dies with the test's
subprocess, and is unmounted there explicitly too; the one test that needs a
shared mount on the host unmounts it in a `finally`.
"""

import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
import urllib.parse

import pytest

from conftest import read_errno

WATCHDOG_S = 60
RUN_TIMEOUT_S = 30
NOBODY = 65534
REFUSED = {"EACCES", "EROFS", "EPERM"}
REFUSED_TEXT = ("Permission denied", "Read-only file system", "Operation not permitted")
SETPRIV = ["setpriv", "--reuid=%d" % NOBODY, "--regid=%d" % NOBODY, "--clear-groups"]
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}

ROLE = "web-app-role"
CREDS = "meta-data/iam/security-credentials/" + ROLE

# The sensitive files of tests/data/rich.json, each by name in the mount
# (SPEC.md, "Permissions"): 0400, and absent with hide_sensitive.
SENSITIVE_RICH = {
    "iam_security_credentials",
    "user_data",
    "raw/user-data",
    "raw/meta-data/iam/security-credentials/" + ROLE,
    "raw/meta-data/identity-credentials/ec2/info",
    "raw/meta-data/identity-credentials/ec2/security-credentials/ec2-instance",
}
# raw/ directories that hold only sensitive files: absent with hide_sensitive.
SENSITIVE_RAW_DIRS = ("raw/meta-data/iam/security-credentials",
                      "raw/meta-data/identity-credentials")

# SPEC.md, "Caching": volatile subtrees of IMDS, fetched on every open.
VOLATILE_ROOTS = ("meta-data/instance-action", "meta-data/spot", "meta-data/events",
                  "meta-data/autoscaling", "meta-data/iam/security-credentials")

# What an unprivileged reader may read, by name in the mount.
PUBLIC = ["region", "instance_id", "tags/Name", "availability_zone", "account_id",
          "instance_identity_document", "iam_info", "raw/meta-data/instance-id",
          "raw/dynamic/instance-identity/document"]
SECRET = ["iam_security_credentials", "user_data", "raw/user-data",
          "raw/meta-data/iam/security-credentials/" + ROLE,
          "raw/meta-data/identity-credentials/ec2/info",
          "raw/meta-data/identity-credentials/ec2/security-credentials/ec2-instance"]


# --- the probe: runs as the unprivileged user, prints JSON ----------------------

PROBE = r'''
import errno, json, os, subprocess, sys

def name(e):
    return errno.errorcode.get(e.errno, str(e.errno))

def open_close(path, flags):
    fd = os.open(path, flags, 0o644)
    os.close(fd)

def mountinfo(path):
    with open("/proc/self/mountinfo") as f:
        for line in f:
            head, _, tail = line.partition(" - ")
            fields, more = head.split(), tail.split()
            if fields[4] == path:
                return {"ok": True, "options": fields[5].split(","), "fstype": more[0],
                        "super": more[2].split(",")}
    return {"ok": False, "errno": "not a mount point"}

def whoami():
    with open("/proc/self/status") as f:
        caps = [l.split()[1] for l in f if l.startswith("CapEff:")]
    return {"ok": True, "uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(),
            "groups": os.getgroups(), "capeff": int(caps[0], 16)}

def one(op):
    kind, a = op[0], op[1:]
    try:
        if kind == "whoami":
            return whoami()
        if kind == "mountinfo":
            return mountinfo(a[0])
        if kind == "read":
            with open(a[0], "rb") as f:
                return {"ok": True, "data": f.read().hex()}
        if kind == "stat":
            st = os.lstat(a[0])
            return {"ok": True, "mode": st.st_mode, "uid": st.st_uid, "gid": st.st_gid}
        if kind == "listdir":
            return {"ok": True, "names": sorted(os.listdir(a[0]))}
        if kind == "open":
            flags = 0
            for f in a[1]:
                flags |= getattr(os, f)
            open_close(a[0], flags)
            return {"ok": True}
        if kind == "sh":
            p = subprocess.run(["/bin/sh", "-c", a[0], "sh"] + list(a[1:]),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20)
            return {"ok": p.returncode == 0, "rc": p.returncode,
                    "stderr": p.stderr.decode(errors="replace")}
        if kind == "unlink":
            os.unlink(a[0])
        elif kind == "rmdir":
            os.rmdir(a[0])
        elif kind == "mkdir":
            os.mkdir(a[0])
        elif kind == "mkfifo":
            os.mkfifo(a[0])
        elif kind == "chmod":
            os.chmod(a[0], a[1])
        elif kind == "chown":
            os.chown(a[0], a[1], a[2])
        elif kind == "truncate":
            os.truncate(a[0], a[1])
        elif kind == "utime_now":
            os.utime(a[0], None)
        elif kind == "utime_set":
            os.utime(a[0], (0, 0))
        elif kind == "setxattr":
            os.setxattr(a[0], "user.imdsfs", b"x")
        elif kind == "link":
            os.link(a[0], a[1])
        elif kind == "symlink":
            os.symlink(a[0], a[1])
        elif kind == "rename":
            os.rename(a[0], a[1])
        else:
            return {"ok": False, "errno": "unknown op " + kind}
        return {"ok": True}
    except OSError as e:
        return {"ok": False, "errno": name(e)}

with open(sys.argv[1]) as f:
    ops = json.load(f)
print(json.dumps([dict(one(op), op=op) for op in ops]))
'''

# A "container": bind MOUNT on TARGET, make the bind read-only, run the
# command, unmount. All of it inside the private mount namespace that
# `unshare --mount --propagation private` gives this shell, so the host never
# sees the bind mount (and it dies with the namespace in any case).
CONTAINER_SH = r'''
set -u
target=$1 source=$2
shift 2
mount --bind "$source" "$target" || exit 90
if ! mount -o remount,bind,ro "$target"; then umount "$target"; exit 91; fi
cd /
"$@"
rc=$?
umount "$target" || rc=92
exit $rc
'''


# --- helpers -----------------------------------------------------------------------

@pytest.fixture
def world():
    """A temporary directory every user can traverse and read (0755): the
    probe script lives there, and so does a container's /run/ec2."""
    d = tempfile.mkdtemp(prefix="imdsfs-containers-")
    os.chmod(d, 0o755)
    yield d
    leftover = [line.split()[1] for line in open("/proc/mounts")
                if line.split()[1].startswith(d + "/")]
    for point in reversed(leftover):  # never descend into a mount while removing
        subprocess.run(["umount", "-l", point], timeout=10, stderr=subprocess.DEVNULL)
    assert not leftover, "mounts left under %s: %s" % (d, leftover)
    shutil.rmtree(d, ignore_errors=True)


def run(cmd, timeout=RUN_TIMEOUT_S, env=ENV, cwd="/"):
    """Run cmd in its own process group; on timeout kill the whole group
    (a namespace lives as long as any process in it)."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                         cwd=cwd, start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate(timeout=10)
        raise AssertionError("%s timed out after %ss; stderr:\n%s"
                             % (cmd, timeout, err.decode(errors="replace")))
    return p.returncode, out.decode(errors="replace"), err.decode(errors="replace")


def probe(world, ops, as_nobody=True, container=None):
    """Run PROBE with `ops`; returns its results in order.

    container=(target, source): inside a private mount namespace, through a
    read-only bind of `source` on `target` (see CONTAINER_SH)."""
    script = os.path.join(world, "probe.py")
    with open(script, "w") as f:
        f.write(PROBE)
    os.chmod(script, 0o644)
    fd, ops_file = tempfile.mkstemp(dir=world, suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(ops, f)
    os.chmod(ops_file, 0o644)
    cmd = (SETPRIV if as_nobody else []) + ["/usr/bin/python3", "-I", "-B", script, ops_file]
    if container:
        cmd = ["unshare", "--mount", "--propagation", "private", "--",
               "/bin/sh", "-c", CONTAINER_SH, "sh", container[0], container[1]] + cmd
    rc, out, err = run(cmd)
    os.unlink(ops_file)
    assert rc == 0, "probe exited %d\nstdout: %s\nstderr: %s" % (rc, out, err)
    results = json.loads(out)
    assert len(results) == len(ops)
    return results


def make_target(world):
    """An empty directory standing for a container's /run/ec2."""
    target = os.path.join(world, "run", "ec2")
    os.makedirs(target)
    os.chmod(os.path.join(world, "run"), 0o755)
    os.chmod(target, 0o755)
    return target


def is_volatile(imds_path):
    return any(imds_path == r or imds_path.startswith(r + "/") for r in VOLATILE_ROOTS)


def served(mock, rel):
    """Whether the mock answers GET /latest/<rel> with 200 (its data file,
    which these tests do not change): a 404 is never cached, so asking for
    an absent value again says nothing about clearing."""
    doc = json.loads(open(mock.data).read())
    names = set(doc["files"]) | set(doc.get("listings", {}))
    d = rel.rstrip("/") + "/"
    return rel in doc["files"] or d in names or any(n.startswith(d) for n in names)


def cached_gets(mock):
    """GETs of present, non-volatile IMDS paths since the counts were last
    reset: after a full read, each of them means a cache was cleared."""
    got = {}
    for key, n in mock.counts().items():
        method, _, path = key.partition(" ")
        if method != "GET" or not path.startswith("/latest/"):
            continue
        rel = urllib.parse.unquote(path[len("/latest/"):])
        if not is_volatile(rel) and served(mock, rel):
            got[rel] = n
    return got


def walk(root):
    """{rel: os.stat_result} of everything below root, root itself as "."."""
    found = {".": os.lstat(root)}

    def fail(e):
        raise e

    for d, dnames, fnames in os.walk(root, onerror=fail):
        for n in dnames + fnames:
            p = os.path.join(d, n)
            found[os.path.relpath(p, root)] = os.lstat(p)
    return found


def read_all(root):
    """{rel: bytes} of every file below root (read as the caller)."""
    out = {}
    for rel, st in walk(root).items():
        if stat.S_ISREG(st.st_mode):
            with open(os.path.join(root, rel), "rb") as f:
                out[rel] = f.read()
    return out


def snapshot(root):
    """Names, types, modes, owners and bytes of the whole tree."""
    shot = {}
    for rel, st in walk(root).items():
        entry = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
        if stat.S_ISREG(st.st_mode):
            with open(os.path.join(root, rel), "rb") as f:
                entry += (f.read(),)
        shot[rel] = entry
    return shot


def secret_bytes(mock):
    """Each secret the mock can serve (credential values, token values,
    user-data lines), as bytes."""
    return {s.encode("latin-1") if all(ord(c) < 256 for c in s) else s.encode()
            for s in mock.secrets()}


def mount_line(m):
    """The fields of m's line in /proc/mounts."""
    for line in open("/proc/mounts"):
        fields = line.split()
        if fields[1] == m.path:
            return fields
    raise AssertionError("%s is not in /proc/mounts" % m.path)


def open_to_world(m):
    """Let other users reach the mount point (mkdtemp makes its parent 0700),
    so that what they get is the filesystem's answer, not the parent's."""
    os.chmod(m.dir, 0o755)


# --- 1: modes, owner, and nothing sensitive under another name ------------------

def test_modes_owner_and_sensitive_set(start_mock, mnt):
    mock = start_mock("rich")
    m = mnt(mock)
    uid, gid = os.getuid(), os.getgid()
    problems = []
    sensitive = set()
    for rel, st in walk(m.path).items():
        if st.st_uid != uid or st.st_gid != gid:
            problems.append("%s: owner %d:%d, expected %d:%d"
                            % (rel, st.st_uid, st.st_gid, uid, gid))
        if stat.S_ISDIR(st.st_mode):
            if stat.S_IMODE(st.st_mode) != 0o755:
                problems.append("dir %s: mode %o" % (rel, st.st_mode))
        elif stat.S_ISREG(st.st_mode):
            mode = stat.S_IMODE(st.st_mode)
            if mode == 0o400:
                sensitive.add(rel)
            elif mode != 0o444:
                problems.append("file %s: mode %o" % (rel, st.st_mode))
        else:
            problems.append("%s: neither a file nor a directory (mode %o)" % (rel, st.st_mode))
    assert not problems, "\n".join(problems)
    assert sensitive == SENSITIVE_RICH, ("0400 files differ: extra %s, missing %s"
                                        % (sorted(sensitive - SENSITIVE_RICH),
                                           sorted(SENSITIVE_RICH - sensitive)))


def test_nothing_sensitive_under_another_name(start_mock, mnt):
    """No file outside the 0400 set holds a credential, a token or the user
    data: not as its whole content, not as a part of it."""
    mock = start_mock("rich")
    m = mnt(mock)
    contents = read_all(m.path)
    stats = walk(m.path)
    secret_files = {rel: data for rel, data in contents.items()
                    if stat.S_IMODE(stats[rel].st_mode) == 0o400}
    assert set(secret_files) == SENSITIVE_RICH
    user_data = secret_files["user_data"]
    creds = secret_files["iam_security_credentials"]
    assert user_data == secret_files["raw/user-data"]
    assert creds.rstrip(b"\n") == secret_files["raw/meta-data/iam/security-credentials/" + ROLE]
    assert json.loads(creds)["SecretAccessKey"]  # what the check below looks for
    needles = secret_bytes(mock) | {user_data, creds.rstrip(b"\n")}
    needles |= {data.rstrip(b"\n") for data in secret_files.values() if len(data) >= 8}
    leaks = []
    for rel, data in contents.items():
        if rel in secret_files:
            continue
        for s in needles:
            if s and s in data:
                leaks.append("%s holds %r" % (rel, s[:40]))
    assert not leaks, "sensitive bytes readable by a non-0400 name:\n" + "\n".join(leaks)
    # No other name is the same inode (a hard link in all but name).
    inodes = {stats[rel].st_ino: rel for rel in secret_files}
    shared = ["%s and %s" % (inodes[st.st_ino], rel) for rel, st in stats.items()
              if rel not in secret_files and st.st_ino in inodes]
    assert not shared, "sensitive inodes shared with: %s" % shared


# --- 2: default_permissions is always on ---------------------------------------

@pytest.mark.parametrize("options", [(), ("allow_other",), ("default_permissions",),
                                     ("allow_other", "default_permissions")],
                         ids=["nothing", "allow_other", "explicit", "both"])
def test_default_permissions_always_on(options, start_mock, mnt):
    mock = start_mock("aemm")
    m = mnt(mock, options=options)
    fields = mount_line(m)
    assert fields[2] == "fuse.imdsfs", fields
    opts = fields[3].split(",")
    assert "default_permissions" in opts, fields
    assert ("allow_other" in opts) == ("allow_other" in options), fields
    assert m.read("instance_id")


# --- 3: hide_sensitive --------------------------------------------------------------

def hidden_rel(rel):
    return rel in SENSITIVE_RICH or any(rel == d or rel.startswith(d + "/")
                                        for d in SENSITIVE_RAW_DIRS)


def test_hide_sensitive(start_mock, mnt):
    plain_mock, hide_mock = start_mock("rich"), start_mock("rich")
    plain = mnt(plain_mock)
    hide = mnt(hide_mock, options=("hide_sensitive",))
    full = snapshot(plain.path)
    for rel in list(SENSITIVE_RICH) + list(SENSITIVE_RAW_DIRS):
        assert rel in full, "the rich instance should have %s" % rel
    shown = snapshot(hide.path)
    expected = {rel: v for rel, v in full.items() if not hidden_rel(rel)}
    extra = sorted(set(shown) - set(expected))
    missing = sorted(set(expected) - set(shown))
    changed = sorted(rel for rel in set(shown) & set(expected) if shown[rel] != expected[rel])
    assert not (extra or missing or changed), (
        "hide_sensitive tree: extra %s, missing %s, changed %s" % (extra, missing, changed))

    # Absent by name too, and below the hidden directories.
    deep = ["raw/meta-data/iam/security-credentials/" + ROLE,
            "raw/meta-data/identity-credentials/ec2",
            "raw/meta-data/identity-credentials/ec2/info",
            "raw/meta-data/identity-credentials/ec2/security-credentials/ec2-instance"]
    for rel in sorted(SENSITIVE_RICH) + list(SENSITIVE_RAW_DIRS) + deep:
        with pytest.raises(FileNotFoundError):
            os.stat(hide.p(rel))
        assert read_errno(hide.p(rel)) == errno.ENOENT, rel
        parent, name = os.path.split(rel)
        if os.path.isdir(hide.p(parent)):
            assert name not in hide.listdir(parent), rel
    # raw/meta-data/iam/ holds info, which is not sensitive: it stays.
    assert hide.listdir("raw", "meta-data", "iam") == ["info"]
    assert hide.read("raw", "meta-data", "iam", "info") == plain.read(
        "raw", "meta-data", "iam", "info")
    assert "identity-credentials" not in hide.listdir("raw", "meta-data")
    assert not any(v[1] == 0o400 for v in shown.values())

    # Left out entirely: never asked of IMDS, so never in the daemon's memory.
    asked = [k for k in hide_mock.counts() if k.startswith("GET ")
             and hidden_rel("raw/" + urllib.parse.unquote(k[len("GET /latest/"):]).rstrip("/"))]
    assert not asked, "hide_sensitive fetched %s" % asked


# --- 4: the container view -------------------------------------------------------------

def warm(m):
    """Root reads the whole tree, so that every non-volatile value is cached;
    then the mock's counts start from zero."""
    contents = read_all(m.path)
    m.mock.reset_counts()
    return contents


def refusals(root):
    """Operations an unprivileged reader must be refused, relative to root."""
    p = lambda *parts: os.path.join(root, *parts)  # noqa: E731
    return [
        ["unlink", p("region")],
        ["unlink", p("tags", "Name")],
        ["unlink", p("user_data")],
        ["unlink", p("raw", "meta-data", "instance-id")],
        ["unlink", p("raw", "dynamic", "instance-identity", "document")],
        ["rmdir", p("tags")],
        ["rmdir", p("raw", "meta-data")],
        ["rmdir", p("raw")],
        ["sh", 'rm -f "$1"', p("region")],
        ["sh", 'rm -f "$1"', p("instance_id")],
        ["sh", 'rm -rf "$1"', p("tags")],
        ["sh", 'rm -rf "$1"', p("raw", "dynamic")],
        ["open", p("region"), ["O_WRONLY"]],
        ["open", p("region"), ["O_RDWR"]],
        ["open", p("region"), ["O_WRONLY", "O_APPEND"]],
        ["open", p("region"), ["O_WRONLY", "O_TRUNC"]],
        ["open", p("region"), ["O_RDONLY", "O_TRUNC"]],
        ["open", p("new-file"), ["O_WRONLY", "O_CREAT", "O_EXCL"]],
        ["open", p("tags", "NewTag"), ["O_WRONLY", "O_CREAT"]],
        ["sh", 'echo eu-north-1 > "$1"', p("region")],
        ["sh", 'echo more >> "$1"', p("region")],
        ["sh", ': > "$1"', p("tags", "Name")],
        ["sh", 'echo x > "$1"', p("new-file")],
        ["truncate", p("region"), 0],
        ["chmod", p("region"), 0o666],
        ["chmod", p("iam_security_credentials"), 0o444],
        ["chmod", p("user_data"), 0o444],
        ["chmod", p("tags"), 0o777],
        ["sh", 'chmod a+r "$1"', p("raw", "user-data")],
        ["chown", p("region"), NOBODY, NOBODY],
        ["utime_now", p("region")],
        ["utime_set", p("region")],
        ["setxattr", p("region")],
        ["mkdir", p("new-dir")],
        ["mkdir", p("tags", "new-dir")],
        ["mkfifo", p("new-fifo")],
        ["link", p("region"), p("region-link")],
        ["link", p("iam_security_credentials"), p("creds-link")],
        ["symlink", "user_data", p("user-data-link")],
        ["sh", 'ln "$1" "$2"', p("region"), p("ln-hard")],
        ["sh", 'ln -s "$1" "$2"', p("region"), p("ln-soft")],
        ["rename", p("region"), p("region2")],
        ["rename", p("region"), p("ami_id")],
        ["rename", p("tags", "Name"), p("tags", "Other")],
        ["rename", p("tags"), p("tags2")],
        ["sh", 'mv "$1" "$2"', p("instance_id"), p("instance_id2")],
        ["sh", 'mv "$1" "$2"', p("tags", "Name"), p("tags", "Renamed")],
    ]


def reads(root):
    p = lambda rel: os.path.join(root, rel)  # noqa: E731
    return ([["read", p(rel)] for rel in PUBLIC] + [["read", p(rel)] for rel in SECRET]
            + [["listdir", root], ["listdir", p("tags")], ["stat", p("user_data")]])


def check_reads(results, root, contents, uid, problems):
    """The reads of reads(root): PUBLIC byte-exact, SECRET EACCES."""
    by_path = {r["op"][1]: r for r in results if r["op"][0] == "read"}
    for rel in PUBLIC:
        r = by_path[os.path.join(root, rel)]
        if not r["ok"]:
            problems.append("read %s: %s" % (rel, r["errno"]))
        elif bytes.fromhex(r["data"]) != contents[rel]:
            problems.append("read %s: %r, expected %r"
                            % (rel, bytes.fromhex(r["data"])[:60], contents[rel][:60]))
    for rel in SECRET:
        r = by_path[os.path.join(root, rel)]
        if r["ok"]:
            problems.append("read %s: succeeded, expected EACCES" % rel)
        elif r["errno"] != "EACCES":
            problems.append("read %s: %s, expected EACCES" % (rel, r["errno"]))
    listings = {r["op"][1]: r for r in results if r["op"][0] == "listdir"}
    top = listings[root]
    if not top["ok"] or not {"region", "instance_id", "raw", "tags"} <= set(top["names"]):
        problems.append("listdir /: %s" % top)
    st = [r for r in results if r["op"][0] == "stat"][0]
    if not st["ok"] or stat.S_IMODE(st["mode"]) != 0o400 or st["uid"] != uid:
        problems.append("stat user_data: %s" % st)


def check_refused(results, problems):
    for r in results:
        what = " ".join(str(a) for a in r["op"])
        if r["ok"]:
            problems.append("%s: succeeded" % what)
        elif r["op"][0] == "sh":
            if not any(t in r["stderr"] for t in REFUSED_TEXT):
                problems.append("%s: exit %d, stderr %r" % (what, r["rc"], r["stderr"]))
        elif r["errno"] not in REFUSED:
            problems.append("%s: %s, expected one of %s" % (what, r["errno"], sorted(REFUSED)))


def unprivileged_session(world, m, root, container=None):
    """As uid 65534: read, try every change, read again. Returns the
    results of (whoami, reads before, refusals, reads after)."""
    before = reads(root)
    tries = refusals(root)
    ops = [["whoami"]] + before + tries + reads(root)
    if container:
        ops.insert(1, ["mountinfo", root])
    results = probe(world, ops, container=container)
    who = results.pop(0)
    info = results.pop(0) if container else None
    n, k = len(before), len(tries)
    return who, info, results[:n], results[n:n + k], results[n + k:]


def assert_unprivileged(who):
    assert (who["uid"], who["euid"], who["gid"]) == (NOBODY, NOBODY, NOBODY), who
    assert who["groups"] == [] and who["capeff"] == 0, who


def assert_nothing_changed(m, contents, mock):
    """Root sees the same tree and bytes, and nothing was fetched again: no
    cache was cleared by anything the unprivileged user did."""
    assert cached_gets(mock) == {}, "a cache was cleared: %s" % cached_gets(mock)
    again = read_all(m.path)
    assert again == contents
    assert cached_gets(mock) == {}, "a cache was cleared: %s" % cached_gets(mock)
    st = os.stat(m.p("region"))
    assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o444, os.getuid())
    for rel in ("region-link", "new-file", "new-dir", "region2", "tags2", "ln-soft"):
        assert not os.path.lexists(m.p(rel)), rel


def test_container_read_only_bind(start_mock, mnt, world):
    """docker run -v /run/ec2:/run/ec2:ro ... --user 65534, made of kernel
    objects: a private mount namespace, a read-only bind, setpriv."""
    mock = start_mock("rich")
    m = mnt(mock, options=("allow_other",))
    target = make_target(world)
    contents = warm(m)

    who, info, first, tried, second = unprivileged_session(world, m, target,
                                                           container=(target, m.path))
    assert_unprivileged(who)
    assert info["ok"] and "ro" in info["options"], info
    assert info["fstype"] == "fuse.imdsfs", info
    assert {"default_permissions", "allow_other"} <= set(info["super"]), info
    problems = []
    check_reads(first, target, contents, os.getuid(), problems)
    check_refused(tried, problems)
    check_reads(second, target, contents, os.getuid(), problems)
    assert not problems, "in the container:\n  " + "\n  ".join(problems)
    # The read-only bind refuses changes to names before they reach imdsfs
    # (for opens for writing the kernel checks the mode first: EACCES).
    erofs = [r for r in tried if r.get("errno") != "EROFS" and r["op"][0] in (
        "unlink", "rmdir", "mkdir", "mkfifo", "link", "symlink", "rename")]
    assert not erofs, "expected EROFS through a read-only bind: %s" % erofs
    assert_nothing_changed(m, contents, mock)
    # The bind lived in the namespace only.
    assert not os.path.ismount(target)
    assert target not in open("/proc/mounts").read()
    assert m.alive()


def test_container_root_cannot_clear_through_read_only_bind(start_mock, mnt, world):
    """A container running as root still has a read-only bind: rm is EROFS
    and clears nothing. (It can read the 0400 files: root passes mode
    checks. hide_sensitive, or a non-root container user, keeps them out.)"""
    mock = start_mock("rich")
    m = mnt(mock, options=("allow_other",))
    target = make_target(world)
    contents = warm(m)
    p = lambda *parts: os.path.join(target, *parts)  # noqa: E731
    ops = [["unlink", p("region")], ["unlink", p("iam_security_credentials")],
           ["rmdir", p("tags")], ["sh", 'rm -rf "$1"/*', target],
           ["read", p("region")], ["read", p("iam_security_credentials")]]
    results = probe(world, ops, as_nobody=False, container=(target, m.path))
    problems = []
    check_refused(results[:4], problems)
    assert not problems, "\n".join(problems)
    assert [r["errno"] for r in results[:3]] == ["EROFS"] * 3
    assert bytes.fromhex(results[4]["data"]) == contents["region"]
    assert json.loads(bytes.fromhex(results[5]["data"]))["Code"] == "Success"
    assert_nothing_changed(m, contents, mock)


def test_container_hide_sensitive(start_mock, mnt, world):
    """With hide_sensitive even a root container finds no secret anywhere."""
    mock = start_mock("rich")
    m = mnt(mock, options=("allow_other", "hide_sensitive"))
    target = make_target(world)
    dump = os.path.join(world, "dump")
    os.mkdir(dump)
    # Root in the container copies everything it can read out of the tree.
    results = probe(world, [["sh", 'cp -r "$1"/. "$2"', target, dump],
                            ["stat", os.path.join(target, "user_data")],
                            ["stat", os.path.join(target, "iam_security_credentials")]],
                    as_nobody=False, container=(target, m.path))
    assert results[0]["ok"], results[0]
    assert [r["errno"] for r in results[1:]] == ["ENOENT", "ENOENT"]
    copied = read_all(dump)
    assert "region" in copied and "raw/meta-data/iam/info" in copied
    needles = secret_bytes(mock)
    leaks = sorted((rel, s[:30]) for rel, data in copied.items() for s in needles if s in data)
    assert not leaks, leaks
    assert not any(hidden_rel(rel) for rel in copied)


def test_container_without_allow_other(start_mock, mnt, world):
    """Without allow_other nobody but the mounter gets in, container or not."""
    mock = start_mock("rich")
    m = mnt(mock)
    target = make_target(world)
    ops = [["whoami"], ["stat", target], ["listdir", target],
           ["read", os.path.join(target, "region")]]
    results = probe(world, ops, container=(target, m.path))
    assert_unprivileged(results[0])
    assert [r.get("errno") for r in results[1:]] == ["EACCES"] * 3, results


# --- 5: the same on the host, without a namespace --------------------------------------

def test_host_unprivileged_user(start_mock, mnt, world):
    mock = start_mock("rich")
    m = mnt(mock, options=("allow_other",))
    open_to_world(m)
    contents = warm(m)

    who, _, first, tried, second = unprivileged_session(world, m, m.path)
    assert_unprivileged(who)
    problems = []
    check_reads(first, m.path, contents, os.getuid(), problems)
    check_refused(tried, problems)
    check_reads(second, m.path, contents, os.getuid(), problems)
    assert not problems, "on the host:\n  " + "\n  ".join(problems)
    assert_nothing_changed(m, contents, mock)
    assert m.alive()

    # The control: root's rm does reach imdsfs and clears (SPEC.md,
    # "Caching"), so the counts above would have seen a clearing.
    os.unlink(m.p("region"))
    assert m.read("region") == contents["region"]
    assert cached_gets(mock).get("dynamic/instance-identity/document") == 1


def test_host_without_allow_other(start_mock, mnt, world):
    mock = start_mock("rich")
    m = mnt(mock)
    open_to_world(m)
    ops = [["whoami"], ["stat", m.dir], ["stat", m.path], ["listdir", m.path],
           ["read", m.p("region")], ["unlink", m.p("region")],
           ["sh", 'cat "$1"', m.p("instance_id")]]
    results = probe(world, ops)
    assert_unprivileged(results[0])
    assert results[1]["ok"], results[1]  # the parent is open: the refusal is FUSE's
    assert [r.get("errno") for r in results[2:6]] == ["EACCES"] * 4, results
    assert not results[6]["ok"] and "Permission denied" in results[6]["stderr"]
    assert m.read("region") == b"eu-west-1\n"  # the mounter still reads


# --- 5b: a non-root mounter ---------------------------------------------------------

OWNER = 12345

# A non-root user mounts, as on a host where /dev/fuse is 0666 and fusermount3
# is setuid. This machine's /dev/fuse is 0600, so a private mount namespace
# gets a 0666 node of the same device bound over /dev/fuse, a fuse.conf of
# the test's choosing over /etc/fuse.conf, and an /etc/passwd that names
# OWNER (fusermount3 wants a user name). The daemon, its mount and the binds
# live and die in that namespace.
NON_ROOT_SH = r"""
set -u
w=$1 bin=$2 url=$3 opts=$4 then=$5
mount --bind "$w/fuse" /dev/fuse || exit 90
mount --bind "$w/fuse.conf" /etc/fuse.conf || exit 91
mount --bind "$w/passwd" /etc/passwd || exit 92
setpriv --reuid=$OWNER --regid=$OWNER --clear-groups \
    "$bin" -f -d -o "endpoint=$url$opts" "$w/m" >"$w/daemon.log" 2>&1 &
pid=$!
i=0
until grep -q " $w/m .* - fuse" /proc/self/mountinfo; do
    if ! kill -0 $pid 2>/dev/null; then
        wait $pid
        echo "daemon-exit $?"
        exit 0
    fi
    i=$((i + 1))
    if [ $i -gt 200 ]; then kill $pid; wait $pid; exit 93; fi
    sleep 0.05
done
sh -c "$then"
rc=$?
fusermount3 -u "$w/m" || { rc=94; kill $pid; }
wait $pid
echo "daemon-exit $?"
exit $rc
"""


def non_root_mount(mock, world, opts, conf, ops_by_uid):
    """Mount as uid OWNER with `opts` and /etc/fuse.conf = `conf`, run the
    probe once per (uid, ops), unmount. Returns (results per uid, daemon
    exit status, daemon output)."""
    from conftest import BINARY
    os.mknod(os.path.join(world, "fuse"), stat.S_IFCHR | 0o666, os.makedev(10, 229))
    os.chmod(os.path.join(world, "fuse"), 0o666)
    with open(os.path.join(world, "fuse.conf"), "w") as f:
        f.write(conf)
    with open("/etc/passwd") as f:
        passwd = f.read()
    with open(os.path.join(world, "passwd"), "w") as f:
        f.write(passwd.rstrip("\n") + "\nimdsfs-test:x:%d:%d::/nonexistent:/usr/sbin/nologin\n"
                % (OWNER, OWNER))
    os.chmod(os.path.join(world, "passwd"), 0o644)
    os.mkdir(os.path.join(world, "m"))
    os.chown(os.path.join(world, "m"), OWNER, OWNER)
    script = os.path.join(world, "probe.py")
    with open(script, "w") as f:
        f.write(PROBE)
    os.chmod(script, 0o644)
    steps = []
    for i, (uid, ops) in enumerate(ops_by_uid):
        ops_file = os.path.join(world, "ops%d.json" % i)
        with open(ops_file, "w") as f:
            json.dump(ops, f)
        os.chmod(ops_file, 0o644)
        steps.append("setpriv --reuid=%d --regid=%d --clear-groups /usr/bin/python3 -I -B %s %s"
                     % (uid, uid, script, ops_file))
    env = dict(ENV, OWNER=str(OWNER))
    rc, out, err = run(["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c",
                        NON_ROOT_SH, "sh", world, str(BINARY), mock.url, opts,
                        " && ".join(steps) or "true"], env=env)
    log = open(os.path.join(world, "daemon.log"), "rb").read().decode(errors="replace")
    lines = out.splitlines()
    assert lines and lines[-1].startswith("daemon-exit "), (rc, out, err, log)
    assert rc == 0, (rc, out, err, log)
    results = [json.loads(line) for line in lines[:-1]]
    assert len(results) == len(ops_by_uid), (out, err, log)
    leaked = sorted(s for s in mock.secrets() if s in log)
    assert not leaked, "the daemon's output holds secrets: %s" % leaked
    return results, int(lines[-1].split()[1]), log


def test_non_root_mounter(start_mock, world):
    """Files belong to the user who mounted; with allow_other (allowed by
    user_allow_other) another user reads the identity, not the secrets; the
    owner can read them and rm to clear a cache; the other user cannot."""
    mock = start_mock("rich")
    m = os.path.join(world, "m")
    p = lambda *parts: os.path.join(m, *parts)  # noqa: E731
    other = [["whoami"], ["stat", m], ["stat", p("region")], ["stat", p("user_data")],
             ["read", p("region")], ["read", p("user_data")],
             ["read", p("iam_security_credentials")], ["unlink", p("region")]]
    owner = [["read", p("user_data")], ["read", p("iam_security_credentials")],
             ["unlink", p("region")], ["read", p("region")]]
    (theirs, mine), status, log = non_root_mount(
        mock, world, ",allow_other", "user_allow_other\n", [(NOBODY, other), (OWNER, owner)])
    assert status == 0, log
    assert theirs[0]["uid"] == NOBODY
    for r in theirs[1:4]:
        assert r["ok"] and (r["uid"], r["gid"]) == (OWNER, OWNER), r
    assert stat.S_IMODE(theirs[1]["mode"]) == 0o755
    assert stat.S_IMODE(theirs[2]["mode"]) == 0o444
    assert stat.S_IMODE(theirs[3]["mode"]) == 0o400
    assert bytes.fromhex(theirs[4]["data"]) == b"eu-west-1\n"
    assert [r.get("errno") for r in theirs[5:]] == ["EACCES"] * 3, theirs[5:]
    assert all(r["ok"] for r in mine), mine
    assert bytes.fromhex(mine[3]["data"]) == b"eu-west-1\n"
    assert json.loads(bytes.fromhex(mine[1]["data"]))["AccessKeyId"]
    # Only the owner's rm reached imdsfs: the document was fetched twice.
    assert mock.count("dynamic/instance-identity/document") == 2


@pytest.mark.parametrize("conf", ["", "#user_allow_other\n"], ids=["empty", "commented"])
def test_non_root_allow_other_needs_user_allow_other(conf, start_mock, world):
    mock = start_mock("rich")
    results, status, log = non_root_mount(mock, world, ",allow_other", conf, [])
    assert results == []
    assert status != 0, log
    assert "user_allow_other" in log, log


def test_non_root_without_allow_other(start_mock, world):
    mock = start_mock("rich")
    m = os.path.join(world, "m")
    (theirs, mine), status, log = non_root_mount(
        mock, world, "", "", [(NOBODY, [["stat", m], ["read", os.path.join(m, "region")]]),
                              (OWNER, [["read", os.path.join(m, "user_data")]])])
    assert status == 0, log
    assert [r.get("errno") for r in theirs] == ["EACCES", "EACCES"], theirs
    assert mine[0]["ok"], mine


# --- 6: mount propagation, as README.md tells it ---------------------------------------

CONTAINER_WAIT_SH = r'''
set -u
host=$1 target=$2 ready=$3 go=$4 propagation=$5
mount --rbind "$host" "$target" || exit 90
mount --make-r$propagation "$target" || { umount -l "$target"; exit 91; }
: > "$ready"
i=0
while [ ! -e "$go" ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i + 1)); done
if [ -r "$target/ec2/region" ]; then cat "$target/ec2/region"; else echo absent; fi
umount -l "$target"
'''


@pytest.mark.parametrize("propagation", ["slave", "private"])
def test_mount_after_container_start(propagation, start_mock, mnt, world):
    """A container started before imdsfs mounted sees the mount only when its
    bind is a slave of the host's (rslave, Kubernetes HostToContainer)."""
    mock = start_mock("rich")
    m = mnt(mock, options=("allow_other",))
    host = os.path.join(world, "host")       # the host's /run, shared
    target = make_target(world)               # the container's /run/ec2... parent
    ready, go = os.path.join(world, "ready"), os.path.join(world, "go")
    os.makedirs(os.path.join(host, "ec2"))
    rc, _, err = run(["mount", "--bind", host, host])
    assert rc == 0, err
    proc = None
    try:
        rc, _, err = run(["mount", "--make-shared", host])
        assert rc == 0, err
        proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "slave", "--", "/bin/sh", "-c",
             CONTAINER_WAIT_SH, "sh", host, target, ready, go, propagation],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV, cwd="/",
            start_new_session=True)
        deadline = time.monotonic() + 10
        while not os.path.exists(ready):
            assert proc.poll() is None, proc.communicate(timeout=5)
            assert time.monotonic() < deadline, "the container did not start"
            time.sleep(0.02)
        # imdsfs appears on the host after the container started.
        rc, _, err = run(["mount", "--bind", m.path, os.path.join(host, "ec2")])
        assert rc == 0, err
        open(go, "w").close()
        out, err = proc.communicate(timeout=RUN_TIMEOUT_S)
        assert proc.returncode == 0, err
        seen = out.decode().strip()
        assert seen == ("eu-west-1" if propagation == "slave" else "absent"), (seen, err)
    finally:
        if proc and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=10)
        if os.path.ismount(os.path.join(host, "ec2")):
            run(["umount", os.path.join(host, "ec2")])
        run(["umount", host])
    assert not os.path.ismount(host)


# --- 7: no secret reaches a log -------------------------------------------------------

def test_no_secret_in_debug_log(start_mock, mnt):
    """Read every file of the rich instance as root with -d, renew the token,
    fail a parse of the credentials: the output holds no token, no credential
    value, no user data."""
    mock = start_mock("rich")
    m = mnt(mock)  # -d: the fixtures mount with debug logging
    contents = read_all(m.path)
    assert {"user_data", "iam_security_credentials"} <= set(contents)
    mock.expire_tokens()  # a 401, then a new token
    contents.update(read_all(m.path))
    os.kill(m.proc.pid, signal.SIGHUP)  # every cache and the token dropped
    time.sleep(0.3)
    contents.update(read_all(m.path))
    # A credentials body that does not parse: EIO, logged, and still no secret.
    good = json.loads(contents["iam_security_credentials"])
    broken = json.dumps(good)[:-20]
    mock.set(CREDS, broken)
    m.expect_log(r"security-credentials/%s.*(json|parse)" % ROLE)
    assert read_errno(m.p("iam_security_credentials")) == errno.EIO
    assert m.alive()

    out = open(m.log_path, "rb").read()
    assert b"debug: GET /latest/" + CREDS.encode() in out, "-d should log each request"
    tokens = mock.tokens()["values"]
    assert len(tokens) >= 3, tokens
    creds = [good, json.loads(contents["raw/meta-data/identity-credentials/ec2/"
                                       "security-credentials/ec2-instance"])]
    needles = {t.encode() for t in tokens}
    needles |= {c[k].encode() for c in creds for k in ("AccessKeyId", "SecretAccessKey", "Token")}
    user_data = contents["user_data"]
    needles |= {user_data} | {line for line in user_data.split(b"\n") if len(line) >= 8}
    needles |= secret_bytes(mock)
    found = sorted(n[:24] for n in needles if n in out)
    assert not found, "the daemon's output holds secrets: %s" % found


# --- 8: names from IMDS cannot escape or shadow ---------------------------------------

LONG_OK = "y" * 255
PCT = "%2e%2e%2f..%2fiam%2fsecurity-credentials"

HOSTILE = {
    "tags": dict(
        listing="meta-data/tags/instance/",
        body=b"\n".join([b"Name", b"..", b".", b"a/b", b"", b"x" * 256, LONG_OK.encode(),
                         b"Name", PCT.encode(), b"ev\x00il", b"app.tier"]),
        files={"meta-data/tags/instance/" + LONG_OK: "long", "meta-data/tags/instance/" + PCT:
               "percent"},
        expected={"tags/Name": b"web-7\n", "tags/app.tier": b"frontend\n",
                  "tags/" + LONG_OK: b"long\n", "tags/" + PCT: b"percent\n"},
        mapping="tags", raw="raw/meta-data/tags/instance"),
    "macs": dict(
        listing="meta-data/network/interfaces/macs/",
        body=b"\n".join([b"06:1a:2b:3c:4d:01/", b"../", b"./", b"/", b"a/b/", b"",
                         b"m" * 256 + b"/", b"06:1a:2b:3c:4d:01/", b"06:1a:2b:3c:4d:01",
                         b"..", b"06:1a:2b:3c:4d:02/"]),
        files={},
        expected={"network/interfaces/06:1a:2b:3c:4d:01/vpc_id": b"vpc-0a4a4a4a4a4a4a4a4\n",
                  "network/interfaces/06:1a:2b:3c:4d:02/device_number": b"1\n",
                  "network/interfaces/06:1a:2b:3c:4d:01/device_number": b"0\n"},
        mapping="network/interfaces", raw="raw/meta-data/network/interfaces/macs"),
    "public_keys": dict(
        listing="meta-data/public-keys/",
        body=b"\n".join([b"0=alice", b"2=..", b"3=.", b"4=a/b", b"5=", b"6=" + b"k" * 256,
                         b"7=alice", b"x=bad", b"=nokey", b"..", b"1=bob",
                         b"8=" + LONG_OK.encode()]),
        files={"meta-data/public-keys/7/openssh-key": "ssh-ed25519 SHADOW mallory",
               "meta-data/public-keys/8/openssh-key": "ssh-ed25519 LONG long"},
        expected={"public_keys/alice/openssh_key":
                  b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExampleAliceKeyNotRealxxxxxxxxxxxx"
                  b"xxxxxxxxx alice\n",
                  "public_keys/bob/openssh_key":
                  b"ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQExampleBobKeyNotReal bob\n",
                  "public_keys/%s/openssh_key" % LONG_OK: b"ssh-ed25519 LONG long\n"},
        mapping="public_keys", raw=None),
}


def readdir(path):
    """Every name readdir gives, "." and ".." included, sorted."""
    rc, out, err = run(["ls", "-1", "-f", "--", path], env=ENV)
    assert rc == 0, err
    return sorted(out.splitlines())


def valid_name(name):
    return name not in ("", ".", "..") and "/" not in name and "\0" not in name \
        and len(os.fsencode(name)) <= 255


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_names(case, start_mock, mnt):
    c = HOSTILE[case]
    mock = start_mock("rich")
    mock.set_listing(c["listing"], c["body"])
    for path, value in c["files"].items():
        mock.set(path, value)
    m = mnt(mock)
    m.expect_log("skipped")
    mapping = c["mapping"]
    listed = m.listdir(mapping)
    want = sorted({rel[len(mapping) + 1:].split("/")[0] for rel in c["expected"]})
    assert listed == want, "%s/ lists %s" % (mapping, listed)
    for rel, data in c["expected"].items():
        assert m.read(rel) == data, rel
    # A line is skipped whole: no part of it becomes a name.
    for name in ("a", "ev", "il", "x", "bad", "nokey", "2", "7"):
        with pytest.raises(FileNotFoundError):
            os.lstat(m.p(mapping, name))
    with pytest.raises(OSError) as e:
        os.lstat(m.p(mapping, "x" * 256))
    assert e.value.errno in (errno.ENOENT, errno.ENAMETOOLONG)
    if c["raw"]:
        assert m.listdir(c["raw"]) == want, c["raw"]
    # os.listdir hides "." and ".." whatever readdir says; ls -f does not.
    for d in [mapping] + ([c["raw"]] if c["raw"] else []):
        assert readdir(m.p(d)) == sorted([".", ".."] + want), d
    # The whole tree: only files and directories, every name a valid one,
    # every path inside the mount. (raw/ mirrors the hostile listing as
    # served: "x=bad" is a file there, "2=.." the directory 2, and both 404.)
    for d, dnames, fnames in os.walk(m.path):
        for name in dnames + fnames:
            path = os.path.join(d, name)
            rel = os.path.relpath(path, m.path)
            assert valid_name(name), rel
            assert os.path.realpath(path).startswith(m.path + os.sep), rel
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                assert rel.startswith("raw/meta-data/public-keys/"), rel
                continue
            assert stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode), rel
    # The daemon never asked IMDS for a path with a hostile segment.
    for key in mock.counts():
        path = urllib.parse.unquote(key.partition(" ")[2])
        parts = path[len("/latest/"):].rstrip("/").split("/")
        assert path.startswith("/latest/"), key
        assert all(p not in ("", ".", "..") and len(p.encode()) <= 255
                   and "\0" not in p for p in parts) or path == "/latest/", key
    assert "skipped" in m.output()
    assert m.alive()
