"""Issue 13: the Debian package, built, linted, installed, used and purged.

- `dpkg-buildpackage -us -uc -b` builds imdsfs_VERSION_ARCH.deb in a scratch
  copy of the tree (the files git knows, committed or not; never the
  repository or its build directories), running the `unit` suite and only
  it, with no warning in the log. The version is meson.build's.
- lintian, on the .changes (the .deb, its -dbgsym and the .buildinfo), has
  no error and no warning.
- `apt-get install ./imdsfs_*.deb` puts down exactly the expected files
  (nothing in /usr/local, no /run/ec2) and enables imdsfs.service, through
  the maintainer scripts that must cope with a machine where systemd is not
  PID 1. Example units under scripts/ are shipped in the docs when the tree
  has them, and never enabled.
- The installed /usr/bin/imdsfs mounts through mount(8) and mount.fuse3
  (`mount -t fuse.imdsfs`), in a private mount and network namespace,
  against scripts/imds-mock on 127.0.0.1, and serves the mock's values.
- `apt-get purge imdsfs` leaves nothing: no file, no enablement symlink, no
  deb-systemd-helper state, no dpkg record.

Not checked here: this machine (and CI) has no systemd as PID 1, so the unit
is never started, neither by the postinst nor at boot; the test says so in a
warning. On a machine where systemd is PID 1 the install would start
imdsfs.service against the real metadata service: the test refuses to run
there rather than touch it. It also refuses when imdsfs is already installed
(it would purge someone's package).

scripts/test runs this module once, as root inside `unshare --net`, after
the Build-Depends are installed: nothing here needs the network. It uses
scripts/imds-mock through its documented command line only (no import of
the integration tests' conftest). Every step has a timeout, and the module's
teardown purges the package, unmounts and kills what it started, also after
a failure.
"""

import gzip
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[2]
IN_CI = bool(os.environ.get("CI"))
PACKAGE = "imdsfs"
BUILD_TIMEOUT = 600
LINTIAN_TIMEOUT = 300
APT_TIMEOUT = 300
APT_LOCK_WAIT = 120  # another apt may be running; wait for its lock
PROBE_TIMEOUT = 120
UNIT = "imdsfs.service"
UNIT_EXEC = "/usr/bin/imdsfs -f -o allow_other /run/ec2"
# Example units another change installs into share/doc/imdsfs/examples.
EXAMPLE_UNIT = re.compile(r"imdsfs-.+\.(path|service|timer|socket)$")
SYSTEMD_STATE = ["/var/lib/systemd/deb-systemd-helper-enabled",
                 "/var/lib/systemd/deb-systemd-helper-masked"]
TOOLS = ["dpkg-buildpackage", "dpkg-checkbuilddeps", "dpkg-deb", "dpkg", "dpkg-query",
         "apt-get", "lintian", "unshare", "mount", "umount", "ip"]


class NotCheckedHere(UserWarning):
    """A part of the package's life this machine cannot show."""


def cannot_run(why):
    """Fail in CI (a test that cannot run must never pass silently there)."""
    if IN_CI:
        pytest.fail(why)
    pytest.skip(why)


def run(cmd, timeout, check=True, env=None, cwd=None):
    """Run cmd in its own process group, killed whole at the timeout.
    Returns (status, output with stderr merged)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    full_env = {k: v for k, v in full_env.items() if v is not None}
    p = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                         env=full_env, cwd=cwd, start_new_session=True)
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, _ = p.communicate()
        pytest.fail("timed out after %ss: %s\n%s" % (timeout, " ".join(map(str, cmd)),
                                                     out.decode(errors="replace")[-4000:]))
    out = out.decode(errors="replace")
    if check and p.returncode != 0:
        pytest.fail("%s exited %d:\n%s" % (" ".join(map(str, cmd)), p.returncode, out[-8000:]))
    return p.returncode, out


def dpkg_status():
    """imdsfs's dpkg status word: installed, config-files, ... or None."""
    r = subprocess.run(["dpkg-query", "-W", "-f", "${db:Status-Status}", PACKAGE],
                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=60)
    if r.returncode != 0:  # dpkg has never heard of it, or forgot it at purge
        return None
    return r.stdout.decode().strip() or None


def apt_get(*args, cwd=None, check=True):
    return run(["apt-get", "-y", "-o", "DPkg::Lock::Timeout=%d" % APT_LOCK_WAIT, *args],
               APT_TIMEOUT, env={"DEBIAN_FRONTEND": "noninteractive"}, cwd=cwd, check=check)


def meson_version():
    found = re.search(r"version\s*:\s*'([^']+)'", (REPO / "meson.build").read_text())
    assert found, "no version in meson.build"
    return found.group(1)


def example_units():
    """Example units in scripts/ (shipped as docs, never enabled)."""
    return sorted(p.name for p in (REPO / "scripts").iterdir() if EXAMPLE_UNIT.match(p.name))


def unit_dir():
    """Where imdsfs.service lands: systemd.pc's unit directory, as meson reads it."""
    r = subprocess.run(["pkg-config", "--variable=systemdsystemunitdir", "systemd"],
                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=30)
    return r.stdout.decode().strip() or "/usr/lib/systemd/system"


def processes(marker):
    """Live processes whose command line mentions marker."""
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            with open("/proc/%s/cmdline" % d, "rb") as f:
                argv = f.read()
        except OSError:
            continue
        if marker.encode() in argv:
            pids.append(int(d))
    return pids


def exe(pid):
    try:
        return os.readlink("/proc/%d/exe" % pid)
    except OSError:
        return None


def kill_all(marker):
    for pid in processes(marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    while processes(marker) and time.monotonic() < deadline:
        time.sleep(0.05)


def imdsfs_mounts(top):
    """imdsfs mounts here under top, or on /run/ec2 (other tests on this
    machine may have mounts of their own elsewhere)."""
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4]
            if " fuse.imdsfs " in line and (point.startswith(str(top) + "/") or
                                            point == "/run/ec2"):
                found.append(line)
    return found


# --- preconditions ---------------------------------------------------------------

@pytest.fixture(scope="module", autouse=True)
def preconditions():
    if os.geteuid() != 0:
        cannot_run("needs root (apt-get install, mount)")
    missing = [t for t in TOOLS if not shutil.which(t)]
    if missing:
        cannot_run("not installed: %s (scripts/test installs them)" % " ".join(missing))
    if not os.path.exists("/dev/fuse") or not os.path.exists("/sbin/mount.fuse3"):
        cannot_run("FUSE is not available (/dev/fuse or mount.fuse3 missing)")
    # /proc/net/dev is per network namespace: only lo means nothing here can
    # reach 169.254.169.254 or any other host, whatever a step does.
    with open("/proc/net/dev") as f:
        nets = sorted(line.split(":")[0].strip() for line in f.readlines()[2:])
    if nets != ["lo"]:
        pytest.fail("run this in a private network namespace (scripts/test does: "
                    "unshare --net); found interfaces %s" % nets)
    if os.path.isdir("/run/systemd/system"):
        cannot_run("systemd is PID 1 here: installing would start imdsfs.service against "
                   "the real metadata service; run this in a container or chroot")
    status = dpkg_status()
    if status not in (None, "not-installed"):
        pytest.fail("imdsfs is already known to dpkg (%s); this test installs and purges "
                    "it, so remove it first: apt-get purge imdsfs" % status)


# --- the source -------------------------------------------------------------------

def test_debian_directory():
    version = meson_version()
    first = (REPO / "debian" / "changelog").read_text().splitlines()[0]
    assert re.match(r"imdsfs \(%s\) \S+; urgency=\w+$" % re.escape(version), first), \
        "debian/changelog's version must be meson.build's %s: %s" % (version, first)
    assert (REPO / "debian" / "source" / "format").read_text() == "3.0 (native)\n"
    assert os.access(REPO / "debian" / "rules", os.X_OK)
    control = (REPO / "debian" / "control").read_text()
    assert "debhelper-compat (= 13)" in control
    assert "Rules-Requires-Root: no" in control
    copyright = (REPO / "debian" / "copyright").read_text()
    assert copyright.startswith("Format: https://www.debian.org/doc/packaging-manuals/"
                                "copyright-format/1.0/")
    assert "Files: tests/data/aemm.json" in copyright


# --- the build --------------------------------------------------------------------

def copy_tree(dest):
    """The files of the working tree that git knows or would add (so build*/
    and other ignored files stay out), or everything but build*/ and .git
    when this is not a git checkout."""
    if (REPO / ".git").exists() and shutil.which("git"):
        _, out = run(["git", "-C", REPO, "ls-files", "-z", "-co", "--exclude-standard"], 60)
        names = [n for n in out.split("\0") if n]
    else:
        names = []
        for d, dirs, files in os.walk(REPO):
            rel = os.path.relpath(d, REPO)
            dirs[:] = [x for x in dirs if not (rel == "." and (x.startswith("build") or
                                                               x == ".git"))
                       and x != "__pycache__"]
            names += [os.path.normpath(os.path.join(rel, f)) for f in files]
    for name in names:
        src, dst = REPO / name, dest / name
        if not os.path.lexists(src):  # deleted, not yet committed
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            os.symlink(os.readlink(src), dst)
        else:
            shutil.copy2(src, dst)


def git_state():
    if not ((REPO / ".git").exists() and shutil.which("git")):
        return None
    return run(["git", "-C", REPO, "status", "--porcelain", "--ignored"], 60)[1]


@pytest.fixture(scope="module")
def built():
    b = SimpleNamespace()
    b.version = meson_version()
    b.arch = run(["dpkg", "--print-architecture"], 30)[1].strip()
    b.top = Path(tempfile.mkdtemp(prefix="imdsfs-deb-"))
    os.chmod(b.top, 0o755)  # apt's _apt user reads the .deb from here
    try:
        b.repo_before = git_state()
        b.src = b.top / ("imdsfs-" + b.version)
        copy_tree(b.src)
        # No inherited nocheck: the unit suite must run.
        _, b.log = run(["dpkg-buildpackage", "-us", "-uc", "-b", "-jauto"], BUILD_TIMEOUT,
                       cwd=b.src, env={"DEB_BUILD_OPTIONS": None, "DEB_BUILD_PROFILES": None})
        b.repo_after = git_state()
        b.deb = b.top / ("imdsfs_%s_%s.deb" % (b.version, b.arch))
        b.changes = b.top / ("imdsfs_%s_%s.changes" % (b.version, b.arch))
        yield b
    finally:
        shutil.rmtree(b.top, ignore_errors=True)


def test_build(built):
    assert built.deb.is_file(), os.listdir(built.top)
    assert built.changes.is_file(), os.listdir(built.top)
    log = built.log
    # dh_auto_test ran the unit suite, and only it.
    assert re.search(r"^\s*cd \S+ && .*meson test --suite unit\s*$", log, re.M), log[-4000:]
    ran = re.findall(r"^\s*\d+/\d+ (.+?)\s+(OK|FAIL|SKIP|EXPECTEDFAIL|UNEXPECTEDPASS|"
                     r"TIMEOUT|ERROR)\b", log, re.M)
    assert ran and all(status == "OK" for _, status in ran), ran
    assert all(name.startswith("imdsfs:unit / ") for name, _ in ran), ran
    assert re.search(r"^Ok:\s+[1-9]", log, re.M) and re.search(r"^Fail:\s+0\s*$", log, re.M)
    # Warning-clean without -Werror: compiler, meson, dpkg and debhelper.
    warned = [line for line in log.splitlines() if re.search(r"\bwarning\b", line, re.I)]
    assert not warned, "\n".join(warned)


def test_build_leaves_the_repository_alone(built):
    if built.repo_before is None:
        pytest.skip("not a git checkout: nothing to compare")
    assert built.repo_after == built.repo_before


def test_package_fields(built):
    def field(name):
        return run(["dpkg-deb", "-f", built.deb, name], 30)[1].strip()

    assert field("Package") == PACKAGE
    assert field("Version") == built.version
    depends = [d.strip().split()[0] for d in field("Depends").split(",")]
    # fuse3 carries fusermount3 and mount.fuse3, which no library dependency finds.
    for needed in ("fuse3", "libfuse3-3", "libcjson1", "libc6"):
        assert needed in depends, depends
    assert [d for d in depends if d.startswith("libcurl")], depends
    description = field("Description").splitlines()
    assert len(description) > 3, "the long description is missing"
    _, listing = run(["dpkg-deb", "-c", built.deb], 30)
    paths = [line.split()[5] for line in listing.splitlines()]
    assert not [p for p in paths if p.startswith(("./usr/local", "./run", "./var/run"))], paths


def test_lintian_clean(built):
    status, out = run(["lintian", "--fail-on", "error,warning", built.changes], LINTIAN_TIMEOUT,
                      check=False)
    tags = [line for line in out.splitlines() if re.match(r"[EW]: ", line)]
    assert status == 0 and not tags, out


# --- install ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def installed(request, built):
    """The package installed with apt-get; purged at the end of the module,
    whatever happened. test_purge purges first and records what it saw."""
    inst = SimpleNamespace()
    inst.build = built
    inst.marker = built.top.name
    _, listing = run(["dpkg-deb", "-c", built.deb], 30)
    inst.shipped = [os.path.normpath("/" + line.split()[5])
                    for line in listing.splitlines()]
    inst.existed_before = {p for p in inst.shipped if os.path.lexists(p)}
    inst.run_ec2_before = os.path.lexists("/run/ec2")

    def purge():
        kill_all(inst.marker)
        if dpkg_status() not in (None, "not-installed"):
            status, _ = apt_get("purge", PACKAGE, check=False)
            if status != 0:
                run(["dpkg", "--purge", PACKAGE], APT_TIMEOUT, check=False)

    request.addfinalizer(purge)
    # apt-get takes an argument for a file when it starts with ./ or /.
    _, inst.apt_log = apt_get("install", "./" + built.deb.name, cwd=built.top)
    _, out = run(["dpkg", "-L", PACKAGE], 30)
    inst.files = sorted(set(out.splitlines()))
    return inst


def expected_paths():
    unitdir = unit_dir()
    files = ["/usr/bin/imdsfs", "/usr/share/man/man8/imdsfs.8.gz", unitdir + "/" + UNIT,
             "/usr/share/doc/imdsfs/copyright", "/usr/share/doc/imdsfs/changelog.gz"]
    files += ["/usr/share/doc/imdsfs/examples/" + name for name in example_units()]
    dirs = {"/."}
    for f in files:
        d = os.path.dirname(f)
        while d != "/":
            dirs.add(d)
            d = os.path.dirname(d)
    return set(files), dirs


def test_install_puts_down_exactly_the_package(installed):
    assert dpkg_status() == "installed"
    files, dirs = expected_paths()
    assert set(installed.files) == files | dirs, \
        "unexpected: %s; missing: %s" % (sorted(set(installed.files) - files - dirs),
                                         sorted((files | dirs) - set(installed.files)))
    assert not [p for p in installed.files if p.startswith("/usr/local")]
    for f in files:
        assert os.path.isfile(f) and not os.path.islink(f), f
    # The mount point is the unit's to make (ExecStartPre), not the package's.
    assert "/run/ec2" not in installed.files
    assert os.path.lexists("/run/ec2") == installed.run_ec2_before


def test_installed_files(installed):
    _, out = run(["/usr/bin/imdsfs", "--version"], 30)
    assert out.split()[:2] == ["imdsfs", installed.build.version], out
    with gzip.open("/usr/share/man/man8/imdsfs.8.gz") as f:
        assert f.read() == (REPO / "man" / "imdsfs.8").read_bytes()
    unit = Path(unit_dir()) / UNIT
    lines = unit.read_text().splitlines()
    assert "ExecStart=" + UNIT_EXEC in lines
    assert "WantedBy=multi-user.target" in lines
    for name in example_units():
        shipped = Path("/usr/share/doc/imdsfs/examples") / name
        assert shipped.read_bytes() == (REPO / "scripts" / name).read_bytes(), name


def test_unit_enabled_not_started(installed):
    """The postinst enabled the unit for the next boot. Without systemd as
    PID 1 it cannot start it, and must not fail for that."""
    link = "/etc/systemd/system/multi-user.target.wants/" + UNIT
    assert os.path.islink(link), "imdsfs.service is not enabled"
    assert os.readlink(link) == str(Path(unit_dir()) / UNIT)
    assert os.path.exists(SYSTEMD_STATE[0] + "/" + UNIT + ".dsh-also")
    # Example units are documentation: nothing links to them.
    for name in example_units():
        enabled = [p for p in Path("/etc/systemd/system").rglob(name)]
        assert not enabled, enabled
    assert not [p for p in processes("imdsfs") if exe(p) == "/usr/bin/imdsfs"], \
        "something started the installed imdsfs"
    warnings.warn(NotCheckedHere(
        "systemd is not PID 1 here: imdsfs.service was enabled (%s) but not started; "
        "its start by the postinst (deb-systemd-invoke) and at boot, and its stop by the "
        "prerm, are not checked on this machine" % link))


# Run as `unshare --mount --net /usr/bin/python3 -c PROBE REPO WORK`: brings up
# lo, starts the mock, mounts with mount(8) -t fuse.imdsfs (mount.fuse3 runs
# the imdsfs of its default path: /usr/local is hidden so that it is the
# package's /usr/bin/imdsfs), reads, unmounts. Prints one JSON object.
PROBE = r'''
import json, os, signal, subprocess, sys, time

repo, work = sys.argv[1:3]
out = {}
mnt = os.path.join(work, "ec2")
mock = None

def sh(*cmd):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
    return {"rc": r.returncode, "output": r.stdout.decode(errors="replace")}

def daemons():
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                argv = open("/proc/%s/cmdline" % d, "rb").read().split(b"\0")
                exe = os.readlink("/proc/%s/exe" % d)
            except OSError:
                continue
            if mnt.encode() in argv and os.path.basename(exe) == "imdsfs":
                pids.append(int(d))
    return pids

def gone(pid):
    try:
        return open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True

def mountinfo():
    for line in open("/proc/self/mountinfo"):
        f = line.split()
        if f[4] == mnt:
            rest = f[f.index("-") + 1:]
            return {"type": rest[0], "source": rest[1], "options": f[5] + "," + rest[2]}
    return None

try:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True, timeout=10)
    with open("/proc/net/dev") as f:
        out["interfaces"] = sorted(l.split(":")[0].strip() for l in f.readlines()[2:])
    empty = os.path.join(work, "empty")
    os.mkdir(empty)
    for d in ("/usr/local/sbin", "/usr/local/bin"):
        if os.path.isdir(d):
            subprocess.run(["mount", "--bind", empty, d], check=True, timeout=10)
    port_file = os.path.join(work, "port")
    log = open(os.path.join(work, "mock.log"), "wb")
    mock = subprocess.Popen(["/usr/bin/python3", os.path.join(repo, "scripts", "imds-mock"),
                             "--data", os.path.join(repo, "tests", "data", "aemm.json"),
                             "--host", "127.0.0.1", "--port", "0", "--port-file", port_file],
                            stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while not (os.path.exists(port_file) and open(port_file).read().strip()):
        if mock.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("imds-mock did not start")
        time.sleep(0.02)
    url = "http://127.0.0.1:%d" % int(open(port_file).read())
    os.mkdir(mnt)
    out["mount"] = sh("mount", "-t", "fuse.imdsfs", "imdsfs", mnt, "-o",
                      "allow_other,endpoint=" + url)
    out["mountinfo"] = mountinfo()
    pids = daemons()
    out["exe"] = [os.readlink("/proc/%d/exe" % p) for p in pids]
    for name in ("region", "instance_id"):
        try:
            out[name] = open(os.path.join(mnt, name)).read()
        except OSError as e:
            out[name] = "error: " + e.strerror
    out["umount"] = sh("umount", mnt)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not all(gone(p) for p in pids):
        time.sleep(0.02)
    out["daemons_exited"] = all(gone(p) for p in pids)
    out["mounted_after"] = os.path.ismount(mnt)
except Exception as e:
    out["error"] = repr(e)
finally:
    if os.path.ismount(mnt):
        subprocess.run(["umount", "-l", mnt], timeout=10)
    for pid in daemons():
        os.kill(pid, signal.SIGKILL)
    if mock is not None and mock.poll() is None:
        mock.terminate()
        try:
            mock.wait(5)
        except subprocess.TimeoutExpired:
            mock.kill()
    print(json.dumps(out))
'''


def test_mount_with_the_installed_binary(installed):
    doc = json.loads((REPO / "tests" / "data" / "aemm.json").read_text())["files"]
    region = doc["dynamic/instance-identity/document"]["json"]["region"] + "\n"
    instance_id = doc["meta-data/instance-id"].rstrip("\n") + "\n"
    work = Path(tempfile.mkdtemp(prefix="probe-", dir=installed.build.top))
    os.chmod(work, 0o755)
    try:
        _, out = run(["unshare", "--mount", "--propagation", "private", "--net",
                      "/usr/bin/python3", "-c", PROBE, REPO, work], PROBE_TIMEOUT)
    finally:
        kill_all(str(work))
    r = json.loads(out.splitlines()[-1])
    assert "error" not in r, r
    assert r["interfaces"] == ["lo"], r
    assert r["mount"]["rc"] == 0, r["mount"]["output"]
    assert r["mountinfo"] and r["mountinfo"]["type"] == "fuse.imdsfs", r
    assert "allow_other" in r["mountinfo"]["options"].split(","), r
    assert r["exe"] == ["/usr/bin/imdsfs"], r
    assert r["region"] == region and r["instance_id"] == instance_id, r
    assert r["umount"]["rc"] == 0, r["umount"]["output"]
    assert r["daemons_exited"] and not r["mounted_after"], r
    assert not imdsfs_mounts(installed.build.top), "a mount escaped the private namespace"


# --- purge ------------------------------------------------------------------------

def systemd_leftovers():
    found = [str(p) for p in Path("/etc/systemd/system").glob("*/imdsfs*")]
    found += [str(p) for p in Path("/etc/systemd/system").glob("imdsfs*")]
    for top in SYSTEMD_STATE:
        if os.path.isdir(top):
            found += [str(p) for p in Path(top).rglob("*imdsfs*")]
    return found


def test_purge_leaves_nothing(installed):
    apt_get("purge", PACKAGE)
    assert dpkg_status() in (None, "not-installed")
    left = [p for p in map(os.path.normpath, installed.files)
            if p not in installed.existed_before and os.path.lexists(p)]
    assert not left, "left behind: %s" % left
    # Directories that were there before (/usr/bin, ...) still are.
    assert all(os.path.lexists(p) for p in installed.existed_before)
    assert not systemd_leftovers(), systemd_leftovers()
    assert not list(Path("/var/lib/dpkg/info").glob(PACKAGE + ".*"))
    assert not list(Path("/var/lib/dpkg/info").glob(PACKAGE + ":*"))
    assert os.path.lexists("/run/ec2") == installed.run_ec2_before
    assert not imdsfs_mounts(installed.build.top)
