"""Issue 6: options, environment, daemonizing and signals (SPEC.md, "Command line").

- Every SPEC option works as `-o name=value`; AWS_EC2_METADATA_SERVICE_ENDPOINT,
  AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE and AWS_EC2_METADATA_DISABLED work
  as the environment, with the precedence of imdsfs(8).
- Bad values stop imdsfs before it mounts: one line on stderr, exit 1,
  nothing mounted.
- Without -f, the command returns 0 only once the mount answers, and
  non-zero with a reason when mounting fails; the daemon leaves the caller's
  stdio and logs to syslog.
- SIGTERM and SIGINT unmount and exit 0; -d never logs a secret.

The IPv6 endpoint (fd00:ec2::254) is only ever checked in the daemon's
start-up log line: no file is read in those tests, so no request is made
(and the private network namespace has no route to it anyway). Real IPv6
operation is tested against the mock on [::1].

Daemons started without -f are not our children: they are found by their
command line (which holds the test's unique temporary directory), and the
`sandbox` fixture unmounts and kills whatever a test left behind.
"""

import ctypes
import errno
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time

import pytest

from conftest import imdsfs_pids, BINARY, BAD_OUTPUT, Mount, _check_fuse, load_instance

RUN_TIMEOUT = 20
IPV6_URL = "http://[fd00:ec2::254]"
IPV4_URL = "http://169.254.169.254"
ENV_VARS = ("AWS_EC2_METADATA_SERVICE_ENDPOINT", "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE",
            "AWS_EC2_METADATA_DISABLED")
NOBODY = 65534

_, AEMM = load_instance("aemm")
_, RICH = load_instance("rich")


def clean_env(extra=None):
    """os.environ without the AWS_EC2_METADATA_* variables, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS and k != "NOTIFY_SOCKET"}
    env.update(extra or {})
    return env


def text_file(body):
    return body if body == b"" or body.endswith(b"\n") else body + b"\n"


def mounts_under(top):
    """Mount points at or under `top`, deepest first (from /proc/self/mountinfo)."""
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mnt = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4])
            if mnt == top or mnt.startswith(top.rstrip("/") + "/"):
                found.append(mnt)
    return sorted(set(found), key=len, reverse=True)


def gone(pid):
    """Whether `pid` has exited (a zombie counts: it no longer serves)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def wait_gone(pid, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if gone(pid):
            return True
        time.sleep(0.02)
    return False


class Sandbox:
    """A temporary directory for mount points of daemons we did not fork."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="imdsfs-opts-")
        os.chmod(self.dir, 0o755)
        # In every daemon's command line, also with a relative mount point.
        self.marker = os.path.basename(self.dir)

    def mnt(self, name="mnt"):
        path = os.path.join(self.dir, name)
        os.mkdir(path)
        return path

    def daemon(self):
        """The one daemon serving a mount in here."""
        pids = imdsfs_pids(self.marker)
        assert len(pids) == 1, "expected one imdsfs daemon, found %s" % pids
        return pids[0]

    def cleanup(self):
        for mnt in mounts_under(self.dir):
            subprocess.run(["umount", "-l", mnt], timeout=10,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for pid in imdsfs_pids(self.marker):
            try:
                os.kill(pid, signal.SIGTERM)
                if not wait_gone(pid, 5):
                    os.kill(pid, signal.SIGKILL)
                    wait_gone(pid, 5)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def sandbox():
    _check_fuse()
    box = Sandbox()
    yield box
    box.cleanup()
    assert not mounts_under(box.dir), "a mount was left behind"


def run(args, env=None, timeout=RUN_TIMEOUT, **kw):
    """Run imdsfs (not -f) to completion; stdout and stderr captured.

    The pipes stay open for as long as any process holds them, so this
    returning at all shows that the daemon let go of the caller's stdio."""
    return subprocess.run([str(BINARY), *args], env=clean_env(env), timeout=timeout,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


class Foreground(Mount):
    """`imdsfs -f ARGS MOUNTPOINT` with exactly these arguments and environment."""

    def __init__(self, args, env=None, preexec_fn=None):
        self.dir = tempfile.mkdtemp(prefix="imdsfs-fg-")
        self.path = os.path.join(self.dir, "mnt")
        os.mkdir(self.path)
        self.expected = []
        self.log_path = os.path.join(self.dir, "imdsfs.log")
        self.log = open(self.log_path, "w+b")
        self.proc = subprocess.Popen([str(BINARY), "-f", *args, self.path],
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     env=clean_env(env), preexec_fn=preexec_fn)


@pytest.fixture
def foreground(request):
    """foreground(args, env=None) -> Foreground, mounted; checked at teardown
    like conftest's mount_fs (clean unmount, no unexpected output)."""
    _check_fuse()
    started = []

    def start(args, env=None, preexec_fn=None):
        m = Foreground(args, env, preexec_fn)
        started.append(m)
        m.wait_for_mount()
        return m

    yield start
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    problems = []
    for m in started:
        try:
            if m.alive() and os.path.ismount(m.path):
                m.umount()
        except Exception as e:
            problems.append("unmount of %s failed: %s" % (m.path, e))
        bad = m.unexpected_output()
        if bad and not failed:
            problems.append("unexpected daemon output:\n" + "\n".join(bad))
        m.cleanup()
    if problems:
        pytest.fail("\n".join(problems))


def wait_for_log(m, pattern, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(pattern, m.output())
        if found:
            return found
        time.sleep(0.02)
    raise AssertionError("no %r in the daemon's output:\n%s" % (pattern, m.output()))


def serving_url(m):
    return wait_for_log(m, r"serving \S+ from (\S+) ").group(1)


def one_line(stderr):
    lines = stderr.decode(errors="replace").splitlines()
    assert len(lines) == 1 and lines[0].strip(), "want one line on stderr, got %r" % lines
    return lines[0]


# --- bad values: refused before mounting --------------------------------------

BAD_OPTIONS = [
    ("token_ttl=0", "token_ttl"),
    ("token_ttl=21601", "token_ttl"),
    ("token_ttl=abc", "token_ttl"),
    ("token_ttl=", "token_ttl"),
    ("token_ttl=+5", "token_ttl"),
    ("timeout=abc", "timeout"),
    ("timeout=0", "timeout"),
    ("timeout=1.5", "timeout"),
    ("retries=-1", "retries"),
    ("retries=11", "retries"),
    ("retries=x", "retries"),
    ("endpoint=https://x", "endpoint"),
    ("endpoint=http://h/path", "endpoint"),
    ("endpoint=ftp://h", "endpoint"),
    ("endpoint=http://", "endpoint"),
    ("endpoint=", "endpoint"),
    ("endpoint=http://h:0", "endpoint"),
    ("endpoint=http://h:65536", "endpoint"),
    ("endpoint=http://user@h", "endpoint"),
    ("endpoint=http://h?x=1", "endpoint"),
    ("endpoint=http://[zz::1]", "endpoint"),
    ("endpoint_mode=ipv5", "endpoint_mode"),
    ("endpoint_mode=", "endpoint_mode"),
]


@pytest.mark.parametrize("option,name", BAD_OPTIONS, ids=[o for o, _ in BAD_OPTIONS])
@pytest.mark.parametrize("foreground_flag", [[], ["-f"]], ids=["daemon", "foreground"])
def test_bad_option_refused_before_mounting(option, name, foreground_flag, sandbox):
    mnt = sandbox.mnt()
    r = run([*foreground_flag, "-o", option, mnt])
    assert r.returncode == 1
    line = one_line(r.stderr)
    assert name in line and line.startswith("imdsfs: "), line
    assert r.stdout == b""
    assert not os.path.ismount(mnt)
    assert imdsfs_pids(sandbox.marker) == []


BAD_ENV = [
    ({"AWS_EC2_METADATA_SERVICE_ENDPOINT": "https://x"}, "AWS_EC2_METADATA_SERVICE_ENDPOINT"),
    ({"AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://h/latest"},
     "AWS_EC2_METADATA_SERVICE_ENDPOINT"),
    ({"AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE": "IPv7"},
     "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE"),
]


@pytest.mark.parametrize("env,name", BAD_ENV, ids=["https", "path", "mode"])
def test_bad_environment_refused_even_when_overridden(env, name, sandbox, start_mock):
    """A bad variable is refused even when an option would override it: a
    typo never passes silently."""
    mock = start_mock("minimal")
    mnt = sandbox.mnt()
    r = run(["-o", "endpoint=" + mock.url, mnt], env=env)
    assert r.returncode == 1
    assert name in one_line(r.stderr)
    assert not os.path.ismount(mnt)


def test_unknown_option_refused(sandbox, start_mock):
    mock = start_mock("minimal")
    mnt = sandbox.mnt()
    r = run(["-o", "endpoint=%s,no_such_option" % mock.url, mnt])
    assert r.returncode == 1
    assert b"no_such_option" in r.stderr
    assert len(r.stderr.splitlines()) <= 2, r.stderr
    assert not os.path.ismount(mnt)


@pytest.mark.parametrize("value", ["true", "TRUE", "True"])
def test_metadata_disabled_refuses_to_start(value, sandbox, start_mock):
    mock = start_mock("minimal")
    mnt = sandbox.mnt()
    r = run(["-o", "endpoint=" + mock.url, mnt], env={"AWS_EC2_METADATA_DISABLED": value})
    assert r.returncode == 1
    line = one_line(r.stderr)
    assert "AWS_EC2_METADATA_DISABLED" in line and "disabled" in line, line
    assert not os.path.ismount(mnt)
    assert mock.counts() == {}


@pytest.mark.parametrize("value", ["false", "", "0"])
def test_metadata_not_disabled(value, foreground, start_mock):
    mock = start_mock("minimal")
    m = foreground(["-o", "endpoint=" + mock.url], env={"AWS_EC2_METADATA_DISABLED": value})
    assert m.read("instance_id").strip()


def test_no_mountpoint(sandbox):
    r = run([])
    assert r.returncode == 1
    assert "mount point" in one_line(r.stderr)


def test_too_many_arguments(sandbox):
    r = run(["a", "b", sandbox.mnt()])
    assert r.returncode == 1
    assert "'" + sandbox.dir in one_line(r.stderr)


# --- mounting fails: a reason and a non-zero exit ------------------------------

def test_mountpoint_missing(sandbox, start_mock):
    mock = start_mock("minimal")
    missing = os.path.join(sandbox.dir, "missing")
    r = run(["-o", "endpoint=" + mock.url, missing])
    assert r.returncode == 1
    line = one_line(r.stderr)
    assert missing in line and os.strerror(errno.ENOENT) in line, line


def test_mountpoint_not_a_directory(sandbox, start_mock):
    mock = start_mock("minimal")
    path = os.path.join(sandbox.dir, "file")
    open(path, "w").close()
    r = run(["-o", "endpoint=" + mock.url, path])
    assert r.returncode == 1
    assert os.strerror(errno.ENOTDIR) in one_line(r.stderr)
    assert not os.path.ismount(path)


def test_mount_not_permitted(sandbox, start_mock):
    """An unprivileged user may not mount on root's directory: fusermount3
    says why, imdsfs exits non-zero, nothing is mounted."""
    if not shutil.which("setpriv"):
        pytest.skip("setpriv (util-linux) is missing")
    mock = start_mock("minimal")
    mnt = sandbox.mnt()
    os.chmod(mnt, 0o755)
    r = subprocess.run(["setpriv", "--reuid=%d" % NOBODY, "--regid=%d" % NOBODY,
                        "--clear-groups", str(BINARY), "-o", "endpoint=" + mock.url, mnt],
                       env=clean_env(), timeout=RUN_TIMEOUT, cwd="/",
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert r.returncode != 0
    err = r.stderr.decode(errors="replace")
    assert err.strip(), "no reason given"
    assert mnt in err and ("permission" in err.lower() or "not permitted" in err.lower()), err
    assert not os.path.ismount(mnt)
    assert imdsfs_pids(sandbox.marker) == []


# /dev/fuse missing is not tested: it cannot be faked here without hiding the
# device from every other test (libfuse then reports "fuse: device not found"
# and imdsfs exits 1, the same path as the cases above).


def test_already_mounted_refused(sandbox, start_mock):
    """FUSE would stack a second imdsfs on the first and hide it; imdsfs
    refuses instead, and the first mount keeps working."""
    mock = start_mock("aemm")
    mnt = sandbox.mnt()
    assert run(["-o", "endpoint=" + mock.url, mnt]).returncode == 0
    first = sandbox.daemon()
    r = run(["-o", "endpoint=" + mock.url, mnt])
    assert r.returncode == 1
    line = one_line(r.stderr)
    assert "already mounted" in line, line
    assert imdsfs_pids(sandbox.marker) == [first]
    with open(os.path.join(mnt, "instance_id"), "rb") as f:
        assert f.read() == text_file(AEMM["meta-data/instance-id"])
    r = run(["-f", "-o", "endpoint=" + mock.url, mnt + "/"])
    assert r.returncode == 1 and "already mounted" in one_line(r.stderr)
    subprocess.run(["fusermount3", "-u", mnt], check=True, timeout=10)
    assert wait_gone(first)


def test_dead_mount_is_replaced(sandbox, foreground, start_mock):
    """A daemon killed with SIGKILL leaves a dead mount ("Transport endpoint
    is not connected"); the next imdsfs detaches it and mounts (a restart
    after a crash, Restart=on-failure)."""
    mock = start_mock("aemm")
    m = foreground(["-o", "endpoint=" + mock.url])
    m.proc.kill()
    m.proc.wait(10)
    with pytest.raises(OSError) as e:
        os.statvfs(m.path)  # a stat may still come from the kernel's cache
    assert e.value.errno == errno.ENOTCONN
    r = run(["-o", "endpoint=" + mock.url, m.path])
    assert r.returncode == 0, r.stderr
    assert os.path.ismount(m.path)
    with open(os.path.join(m.path, "instance_id"), "rb") as f:
        assert f.read() == text_file(AEMM["meta-data/instance-id"])
    daemons = imdsfs_pids(m.dir)
    assert len(daemons) == 1
    assert len(mounts_under(m.path)) == 1, "the dead mount is still stacked underneath"
    subprocess.run(["fusermount3", "-u", m.path], check=True, timeout=10)
    assert wait_gone(daemons[0])
    assert not os.path.ismount(m.path)


def test_dead_foreign_fuse_mount_not_touched(sandbox, start_mock):
    """A dead FUSE mount of another file system is left alone, with a reason."""
    mock = start_mock("minimal")
    mnt = sandbox.mnt()
    # A FUSE mount nobody serves: mount(2) with a /dev/fuse fd, then close it.
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open("/dev/fuse", os.O_RDWR)
    try:
        data = b"fd=%d,rootmode=40000,user_id=0,group_id=0" % fd
        if libc.mount(b"other", mnt.encode(), b"fuse.other", 0, data) != 0:
            pytest.fail("mount(2) of a bare FUSE connection failed: %s"
                        % os.strerror(ctypes.get_errno()))
    finally:
        os.close(fd)
    with pytest.raises(OSError) as e:
        os.stat(mnt)
    assert e.value.errno == errno.ENOTCONN
    r = run(["-o", "endpoint=" + mock.url, mnt])
    assert r.returncode == 1
    line = one_line(r.stderr)
    assert "dead" in line and "fusermount3 -u -z" in line, line
    assert mounts_under(mnt) == [mnt], "the other file system's mount was touched"


# --- daemonizing -------------------------------------------------------------

def test_daemon_returns_once_the_mount_answers(sandbox, start_mock):
    mock = start_mock("aemm")
    mnt = sandbox.mnt()
    r = run(["-o", "endpoint=" + mock.url, mnt])
    # At once, no waiting: the mount is there and answers.
    assert os.path.ismount(mnt)
    st = os.stat(mnt)
    assert stat.S_ISDIR(st.st_mode)
    assert r.returncode == 0
    assert r.stdout == b"" and r.stderr == b"", "the daemon logs to syslog, not stderr"
    with open(os.path.join(mnt, "instance_id"), "rb") as f:
        assert f.read() == text_file(AEMM["meta-data/instance-id"])
    pid = sandbox.daemon()
    assert os.getsid(pid) == pid, "the daemon should lead its own session"
    assert os.readlink("/proc/%d/cwd" % pid) == "/"
    for fd in (0, 1, 2):
        assert os.readlink("/proc/%d/fd/%d" % (pid, fd)) == "/dev/null"
    subprocess.run(["fusermount3", "-u", mnt], check=True, timeout=10)
    assert wait_gone(pid), "the daemon did not exit after the unmount"
    assert not os.path.ismount(mnt)


def test_daemon_with_source_argument(sandbox, start_mock):
    """The form mount.fuse3 uses: imdsfs SOURCE MOUNTPOINT -o OPTIONS."""
    mock = start_mock("minimal")
    mnt = sandbox.mnt()
    r = run(["imdsfs", mnt, "-o", "rw,endpoint=%s,dev,suid" % mock.url])
    assert r.returncode == 0, r.stderr
    assert os.path.ismount(mnt)
    pid = sandbox.daemon()
    subprocess.run(["umount", mnt], check=True, timeout=10)
    assert wait_gone(pid)


def test_daemon_relative_mountpoint_sigterm(sandbox, start_mock):
    """The daemon changes to /; SIGTERM must still unmount the right place."""
    mock = start_mock("minimal")
    rel = sandbox.marker + "-rel"
    mnt = sandbox.mnt(rel)
    r = run(["-o", "endpoint=" + mock.url, rel], cwd=sandbox.dir)
    assert r.returncode == 0, r.stderr
    assert os.path.ismount(mnt)
    pid = sandbox.daemon()
    os.kill(pid, signal.SIGTERM)
    assert wait_gone(pid), "the daemon did not exit on SIGTERM"
    assert not os.path.ismount(mnt), "SIGTERM left the mount behind"


def test_daemon_sigint(sandbox, start_mock):
    mock = start_mock("minimal")
    mnt = sandbox.mnt()
    assert run(["-o", "endpoint=" + mock.url, mnt]).returncode == 0
    pid = sandbox.daemon()
    os.kill(pid, signal.SIGINT)
    assert wait_gone(pid)
    assert not os.path.ismount(mnt)


# --- signals in the foreground ----------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_unmounts_and_exits_0(sig, foreground, start_mock):
    mock = start_mock("aemm")
    m = foreground(["-o", "endpoint=" + mock.url])
    assert m.read("instance_id") == text_file(AEMM["meta-data/instance-id"])
    m.proc.send_signal(sig)
    assert m.proc.wait(10) == 0, m.output()
    assert not os.path.ismount(m.path)
    assert "unmounting" in m.output()


def _ignore_term_and_int():
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_works_even_if_ignored_by_parent(sig, foreground, start_mock):
    """A shell starts `imdsfs -f ... &` with SIGINT ignored; it must still
    unmount cleanly on it."""
    mock = start_mock("minimal")
    m = foreground(["-o", "endpoint=" + mock.url], preexec_fn=_ignore_term_and_int)
    m.proc.send_signal(sig)
    assert m.proc.wait(10) == 0, m.output()
    assert not os.path.ismount(m.path)


def test_sighup_does_not_exit(foreground, start_mock):
    mock = start_mock("aemm")
    m = foreground(["-o", "endpoint=" + mock.url])
    m.proc.send_signal(signal.SIGHUP)
    time.sleep(0.3)
    assert m.alive() and os.path.ismount(m.path)
    assert m.read("instance_id") == text_file(AEMM["meta-data/instance-id"])


def test_systemd_notify(foreground, start_mock, tmp_path):
    """Type=notify: READY=1 once mounted, STOPPING=1 on the way out."""
    mock = start_mock("minimal")
    sock_path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(sock_path)
        sock.settimeout(10)
        m = foreground(["-o", "endpoint=" + mock.url], env={"NOTIFY_SOCKET": sock_path})
        assert sock.recv(4096) == b"READY=1"
        assert os.path.ismount(m.path)
        m.proc.send_signal(signal.SIGTERM)
        assert sock.recv(4096) == b"STOPPING=1"
        assert m.proc.wait(10) == 0
    finally:
        sock.close()


# --- every option as -o name=value, and the environment ----------------------

def test_endpoint_from_environment(foreground, start_mock):
    mock = start_mock("aemm")
    m = foreground([], env={"AWS_EC2_METADATA_SERVICE_ENDPOINT": mock.url + "/"})
    assert serving_url(m) == mock.url
    assert m.read("instance_id") == text_file(AEMM["meta-data/instance-id"])


def test_endpoint_option_beats_environment(foreground, start_mock):
    mock = start_mock("aemm")
    m = foreground(["-o", "endpoint=" + mock.url],
                   env={"AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.0.0.1:9"})
    assert serving_url(m) == mock.url
    assert m.read("instance_id") == text_file(AEMM["meta-data/instance-id"])


# Which endpoint each combination chooses (imdsfs(8), ENVIRONMENT). Nothing
# is read in these mounts: the chosen URL is only checked in the log.
ENDPOINT_CHOICES = [
    ([], {}, IPV4_URL),
    (["-o", "endpoint_mode=ipv6"], {}, IPV6_URL),
    (["-o", "endpoint_mode=IPv6"], {}, IPV6_URL),
    (["-o", "endpoint_mode=ipv4"], {}, IPV4_URL),
    ([], {"AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE": "IPv6"}, IPV6_URL),
    ([], {"AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE": "ipv6"}, IPV6_URL),
    ([], {"AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE": "IPv4"}, IPV4_URL),
    (["-o", "endpoint_mode=ipv4"], {"AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE": "IPv6"}, IPV4_URL),
    (["-o", "endpoint_mode=ipv6"], {"AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.0.0.1:9"},
     IPV6_URL),
    ([], {"AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.0.0.1:9",
          "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE": "IPv6"}, "http://127.0.0.1:9"),
    (["-o", "endpoint=http://127.0.0.2:9,endpoint_mode=ipv6"], {}, "http://127.0.0.2:9"),
    (["-o", "endpoint=http://[::1]:9/"], {"AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE": "IPv6"},
     "http://[::1]:9"),
]


@pytest.mark.parametrize("args,env,url", ENDPOINT_CHOICES,
                         ids=["default", "opt-ipv6", "opt-IPv6", "opt-ipv4", "env-IPv6",
                              "env-ipv6", "env-IPv4", "opt-beats-env-mode",
                              "opt-mode-beats-env-endpoint", "env-endpoint-beats-env-mode",
                              "endpoint-beats-mode", "opt-endpoint-beats-env-mode"])
def test_endpoint_choice_logged(args, env, url, foreground):
    m = foreground(["-d", *args], env=env)
    assert serving_url(m) == url
    # Mounted, never read: not one request was made (-d logs each one).
    assert not re.search(r"\b(GET|PUT) /latest/", m.output()), m.output()


def test_ipv6_endpoint_for_real(foreground, start_mock):
    try:
        mock = start_mock("aemm", host="::1")
    except RuntimeError as e:
        pytest.skip("no IPv6 loopback here: %s" % e)
    m = foreground(["-o", "endpoint=" + mock.url])
    assert mock.url.startswith("http://[::1]:")
    assert m.read("instance_id") == text_file(AEMM["meta-data/instance-id"])
    assert m.read("region").strip()
    assert mock.puts() == 1


def test_ipv6_endpoint_from_environment(foreground, start_mock):
    try:
        mock = start_mock("aemm", host="::1")
    except RuntimeError as e:
        pytest.skip("no IPv6 loopback here: %s" % e)
    m = foreground([], env={"AWS_EC2_METADATA_SERVICE_ENDPOINT": mock.url})
    assert m.read("instance_id") == text_file(AEMM["meta-data/instance-id"])


def test_token_ttl_option(foreground, start_mock):
    mock = start_mock("aemm")
    m = foreground(["-o", "endpoint=%s,token_ttl=300" % mock.url])
    m.read("instance_id")
    assert mock.tokens()["last_ttl"] == 300
    assert "token_ttl=300s" in m.output()


def test_token_ttl_default(foreground, start_mock):
    mock = start_mock("aemm")
    m = foreground(["-o", "endpoint=" + mock.url])
    m.read("instance_id")
    assert mock.tokens()["last_ttl"] == 21600


def test_retries_option(foreground, start_mock):
    """retries=N: a transient failure is tried N more times, then EIO."""
    mock = start_mock("aemm")
    m = foreground(["-o", "endpoint=%s,retries=2,timeout=2000" % mock.url])
    m.expect_log(r"ami-id|ami_id|503|HTTP|error")
    m.read("instance_id")
    mock.fault(path="meta-data/ami-id", status=503)
    mock.reset_counts()
    with pytest.raises(OSError) as e:
        m.read("ami_id")
    assert e.value.errno == errno.EIO
    assert mock.count("meta-data/ami-id") == 3


def test_retries_zero(foreground, start_mock):
    mock = start_mock("aemm")
    m = foreground(["-o", "endpoint=%s,retries=0" % mock.url])
    m.expect_log(r"ami-id|ami_id|503|HTTP|error")
    m.read("instance_id")
    mock.fault(path="meta-data/ami-id", status=503)
    mock.reset_counts()
    with pytest.raises(OSError):
        m.read("ami_id")
    assert mock.count("meta-data/ami-id") == 1


def test_timeout_option(foreground, start_mock):
    """timeout=MS bounds each request: a hanging IMDS gives ETIMEDOUT after
    about timeout x (retries + 1)."""
    mock = start_mock("aemm")
    m = foreground(["-o", "endpoint=%s,timeout=300,retries=0" % mock.url])
    m.expect_log(r"ami-id|ami_id|time|error")
    m.read("instance_id")
    mock.fault(path="meta-data/ami-id", action="hang")
    start = time.monotonic()
    with pytest.raises(OSError) as e:
        m.read("ami_id")
    elapsed = time.monotonic() - start
    mock.clear_faults()
    assert e.value.errno == errno.ETIMEDOUT
    assert 0.25 <= elapsed < 2.0, elapsed


def test_hide_sensitive_option(foreground, start_mock):
    mock = start_mock("rich")
    m = foreground(["-o", "endpoint=%s,hide_sensitive" % mock.url])
    names = os.listdir(m.path)
    assert "user_data" not in names and "iam_security_credentials" not in names
    assert "iam_info" in names
    assert "hide_sensitive" in m.output()


def test_fuse_options_pass_through(foreground, start_mock):
    mock = start_mock("minimal")
    m = foreground(["-o", "endpoint=%s,allow_other,ro,nosuid,nodev" % mock.url])
    line = [l for l in open("/proc/self/mounts") if l.split()[1] == m.path]
    assert len(line) == 1
    opts = line[0].split()[3].split(",")
    for opt in ("ro", "nosuid", "nodev", "allow_other", "default_permissions"):
        assert opt in opts, line
    assert line[0].split()[2] == "fuse.imdsfs" and line[0].split()[0] == "imdsfs"


# --- logging -----------------------------------------------------------------

def test_debug_logs_never_secrets(foreground, start_mock):
    mock = start_mock("rich")
    m = foreground(["-d", "-o", "endpoint=" + mock.url])
    creds = m.read("iam_security_credentials")
    user_data = m.read("user_data")
    raw_user = m.read("raw", "user-data")
    role = [k for k in RICH if k.startswith("meta-data/iam/security-credentials/")][0]
    m.read("raw", *role.split("/"))
    assert user_data == RICH["user-data"] == raw_user
    out = m.output()
    assert "debug" in out, "-d logged nothing"
    secrets = [t for t in mock.tokens()["values"]]
    doc = json.loads(creds)
    secrets += [doc["SecretAccessKey"], doc["Token"], doc["AccessKeyId"]]
    secrets += [l for l in user_data.decode(errors="replace").splitlines() if len(l) >= 6]
    assert secrets
    for s in secrets:
        assert s not in out, "a secret is in the debug log: %r" % s[:12]


def test_debug_option_spelling(foreground, start_mock):
    mock = start_mock("minimal")
    m = foreground(["-o", "debug,endpoint=" + mock.url])
    m.read("instance_id")
    assert "debug" in m.output()


def test_foreground_logs_to_stderr(foreground, start_mock):
    mock = start_mock("minimal")
    m = foreground(["-o", "endpoint=" + mock.url])
    assert "serving %s from %s" % (m.path, mock.url) in m.output()


# Run inside `unshare --mount --propagation private` as root; argv: binary,
# work dir, mock URL. /dev is replaced (in this namespace only) by a tmpfs
# holding /dev/fuse, /dev/null and a /dev/log socket we read, then the daemon
# is started without -f. Prints one JSON object.
SYSLOG_PROBE = r'''
import json, os, signal, socket, subprocess, sys, time

binary, work, url = sys.argv[1:4]
out = {}
real = os.path.join(work, "realdev")
os.mkdir(real)
subprocess.run(["mount", "--rbind", "/dev", real], check=True, timeout=10)
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=755", "probe-dev", "/dev"],
               check=True, timeout=10)
for name in ("fuse", "null"):
    open("/dev/" + name, "w").close()
    subprocess.run(["mount", "--bind", os.path.join(real, name), "/dev/" + name],
                   check=True, timeout=10)
log = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
log.bind("/dev/log")
os.chmod("/dev/log", 0o666)
log.settimeout(0.2)
mnt = os.path.join(work, "mnt")
os.mkdir(mnt)
pids = []

def daemons():
    found = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                argv = open("/proc/%s/cmdline" % d, "rb").read().split(b"\0")
            except OSError:
                continue
            if argv and os.path.basename(argv[0]) == b"imdsfs" and mnt.encode() in argv:
                found.append(int(d))
    return found

def drain(until):
    msgs = []
    while time.monotonic() < until:
        try:
            msgs.append(log.recv(4096).decode(errors="replace"))
        except socket.timeout:
            if msgs:
                break
    return msgs

try:
    r = subprocess.run([binary, "-o", "endpoint=%s,retries=0" % url, mnt],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    out["rc"] = r.returncode
    out["stderr"] = r.stderr.decode(errors="replace")
    out["messages"] = drain(time.monotonic() + 5)
    pids = daemons()
    out["instance_id"] = open(os.path.join(mnt, "instance_id")).read()
    try:
        open(os.path.join(mnt, "public_ipv4")).read()
    except OSError as e:
        out["public_ipv4"] = e.strerror
    out["messages"] += drain(time.monotonic() + 2)
    subprocess.run(["umount", mnt], timeout=10)
    deadline = time.monotonic() + 10
    while daemons() and time.monotonic() < deadline:
        time.sleep(0.02)
    out["messages"] += drain(time.monotonic() + 2)
    out["exited"] = not daemons()
finally:
    if os.path.ismount(mnt):
        subprocess.run(["umount", "-l", mnt], timeout=10)
    for pid in daemons():
        os.kill(pid, signal.SIGKILL)
    print(json.dumps(out))
'''


def test_daemon_logs_to_syslog(sandbox, start_mock):
    """Without -f, log lines go to syslog (/dev/log), tagged imdsfs[PID]."""
    mock = start_mock("aemm")
    mock.fault(path="meta-data/public-ipv4", status=400)
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", "/usr/bin/python3",
                        "-c", SYSLOG_PROBE, str(BINARY), sandbox.dir, mock.url],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=90,
                       env=clean_env())
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    out = json.loads(r.stdout)
    assert out["rc"] == 0 and out["stderr"] == "", out
    assert out["instance_id"].encode() == text_file(AEMM["meta-data/instance-id"])
    msgs = out["messages"]
    assert any(re.search(r"imdsfs\[\d+\]: serving \S+ from %s" % re.escape(mock.url), m)
               for m in msgs), msgs
    # The failed read is logged there, at warning or error priority (facility daemon).
    failed = [m for m in msgs if "public-ipv4" in m]
    assert failed, msgs
    assert int(re.match(r"<(\d+)>", failed[0]).group(1)) in (3 << 3 | 3, 3 << 3 | 4), failed
    assert any("unmounting" in m for m in msgs), msgs
    assert out["exited"]
