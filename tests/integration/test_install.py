"""Issue 6: install and run like a system daemon.

- `meson install` puts bin/imdsfs, share/man/man8/imdsfs.8 and the systemd
  unit (in systemd.pc's systemdsystemunitdir, else PREFIX/lib/systemd/system;
  none with -Dsystemd=false) in place. Each build here is a separate build
  directory under /tmp, installed with --destdir (or into a temporary
  prefix), so that the project's own build directory is never touched.
- The unit passes `systemd-analyze verify`, and its hardening keeps the mount
  visible to the system: no directive that gives the service a private mount
  namespace (a test shows what such a namespace does to the mount), and the
  privileges it leaves (CAP_SYS_ADMIN, no new privileges) suffice to mount.
- fstab works through mount.fuse3: `mount -t fuse.imdsfs` and an fstab line
  (`mount --fstab FILE MOUNTPOINT`, never /etc/fstab). mount(8) clears PATH
  before it runs mount.fuse3, whose /bin/sh then finds `imdsfs` in the
  shell's default path only (/usr/local/sbin first): so these run in a
  private mount namespace in which /usr/local/sbin is a directory holding a
  symlink to the binary under test. The daemons live in that namespace, so a
  probe script run inside it does the mounting, reading and unmounting, and
  prints JSON for the assertions here.
- The manual page is lint-clean (mandoc -T lint, groff -ww), names every
  option of --help, every environment variable and every file of SPEC.md;
  --version is meson's project version.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from conftest import imdsfs_pids, BINARY, IN_CI, REPO, _cannot_run, _check_fuse, load_instance

MESON_TIMEOUT = 300
RUN_TIMEOUT = 30
MAN = REPO / "man" / "imdsfs.8"
UNIT_IN = REPO / "scripts" / "imdsfs.service.in"
UNIT_EXEC = "-f -o allow_other /run/ec2"

_, AEMM = load_instance("aemm")


def need(tool):
    path = shutil.which(tool)
    if not path:
        _cannot_run("%s is not installed" % tool)
    return path


def sh(cmd, timeout=MESON_TIMEOUT, env=None, check=True, **kw):
    full_env = dict(os.environ)
    full_env.update(env or {})
    r = subprocess.run(cmd, timeout=timeout, env=full_env, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, **kw)
    if check and r.returncode != 0:
        pytest.fail("%s exited %d:\n%s" % (" ".join(map(str, cmd)), r.returncode,
                                           r.stdout.decode(errors="replace")))
    return r


class Install:
    """A fresh build directory with `options`, installed into `destdir`."""

    def __init__(self, top, options, destdir=True, env=None):
        meson = need("meson")
        self.build = os.path.join(top, "build")
        self.destdir = os.path.join(top, "dest") if destdir else ""
        self.setup_log = sh([meson, "setup", self.build, str(REPO), *options], env=env)
        sh([meson, "compile", "-C", self.build, "imdsfs"], env=env)
        args = [meson, "install", "-C", self.build, "--no-rebuild"]
        if destdir:
            args += ["--destdir", self.destdir]
        self.install_log = sh(args, env=env).stdout.decode()

    def path(self, installed):
        """Where an absolute installed path landed."""
        return self.destdir + installed if self.destdir else installed

    def files(self):
        top = self.destdir or "/"
        return sorted(os.path.relpath(os.path.join(d, f), top)
                      for d, _, fs in os.walk(top) for f in fs)


def systemd_unitdir():
    """systemd.pc's unit directory, or None without pkg-config or systemd.pc."""
    if not shutil.which("pkg-config"):
        return None
    r = subprocess.run(["pkg-config", "--variable=systemdsystemunitdir", "systemd"],
                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=30)
    return r.stdout.decode().strip() or None


@pytest.fixture(scope="module")
def tmp_top():
    top = tempfile.mkdtemp(prefix="imdsfs-install-")
    yield top
    shutil.rmtree(top, ignore_errors=True)


@pytest.fixture(scope="module")
def usr_install(tmp_top):
    """prefix=/usr, installed with --destdir."""
    return Install(os.path.join(tmp_top, "usr"), ["--prefix=/usr"])


def read_unit(path):
    """The unit as {(section, key): [values]}."""
    unit, section = {}, None
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith(("#", ";")):
                continue
            if line.startswith("["):
                section = line.strip("[]")
                continue
            key, _, value = line.partition("=")
            unit.setdefault((section, key.strip()), []).append(value.strip())
    return unit


# --- meson install ------------------------------------------------------------

def test_install_puts_binary_man_page_and_unit(usr_install):
    inst = usr_install
    binary = inst.path("/usr/bin/imdsfs")
    assert os.path.isfile(binary) and os.access(binary, os.X_OK), inst.files()
    r = sh([binary, "--version"])
    assert r.stdout.decode().startswith("imdsfs ")
    man = inst.path("/usr/share/man/man8/imdsfs.8")
    assert os.path.isfile(man), inst.files()
    assert open(man, "rb").read() == MAN.read_bytes()
    unitdir = systemd_unitdir() or "/usr/lib/systemd/system"
    unit = inst.path(unitdir + "/imdsfs.service")
    assert os.path.isfile(unit), inst.files()
    assert read_unit(unit)[("Service", "ExecStart")] == ["/usr/bin/imdsfs " + UNIT_EXEC]
    assert not re.search(r"@\w+@", open(unit).read()), "an unsubstituted @var@"
    examples = ["/usr/share/doc/imdsfs/examples/imdsfs-spot-interruption.path",
                "/usr/share/doc/imdsfs/examples/imdsfs-spot-interruption.service"]
    for e in examples:
        assert os.path.isfile(inst.path(e)), inst.files()
    assert len(inst.files()) == 3 + len(examples), inst.files()


def test_install_without_systemd(tmp_top):
    inst = Install(os.path.join(tmp_top, "nosystemd"), ["--prefix=/usr", "-Dsystemd=false"])
    files = inst.files()
    assert "usr/bin/imdsfs" in files and "usr/share/man/man8/imdsfs.8" in files
    assert not [f for f in files if f.endswith(".service")], files


def test_install_unitdir_fallback_without_systemd_pc(tmp_top):
    """With no systemd.pc, the unit goes to PREFIX/lib/systemd/system."""
    need("pkg-config")
    farm = os.path.join(tmp_top, "pkgconfig")
    os.makedirs(farm)
    r = sh(["pkg-config", "--variable", "pc_path", "pkg-config"], timeout=30)
    for d in r.stdout.decode().strip().split(":"):
        if not os.path.isdir(d):
            continue
        for name in os.listdir(d):
            if name.endswith(".pc") and name != "systemd.pc" and \
                    not os.path.exists(os.path.join(farm, name)):
                os.symlink(os.path.join(d, name), os.path.join(farm, name))
    env = {"PKG_CONFIG_LIBDIR": farm, "PKG_CONFIG_PATH": ""}
    inst = Install(os.path.join(tmp_top, "fallback"), ["--prefix=/opt/imdsfs"], env=env)
    files = inst.files()
    assert "opt/imdsfs/lib/systemd/system/imdsfs.service" in files, files
    unit = read_unit(inst.path("/opt/imdsfs/lib/systemd/system/imdsfs.service"))
    assert unit[("Service", "ExecStart")] == ["/opt/imdsfs/bin/imdsfs " + UNIT_EXEC]


def test_install_unitdir_option(tmp_top):
    inst = Install(os.path.join(tmp_top, "unitdir"),
                   ["--prefix=/usr", "-Dsystemdunitdir=/etc/systemd/system"])
    assert "etc/systemd/system/imdsfs.service" in inst.files()


# --- the systemd unit ------------------------------------------------------------

@pytest.fixture(scope="module")
def real_install(tmp_top):
    """Installed for real into a temporary prefix (and unit directory), so
    that the unit's ExecStart= and Documentation= point at real files."""
    top = os.path.join(tmp_top, "real")
    inst = Install(top, ["--prefix=" + os.path.join(top, "prefix"),
                         "-Dsystemdunitdir=" + os.path.join(top, "units")], destdir=False)
    inst.prefix = os.path.join(top, "prefix")
    inst.unit = os.path.join(top, "units", "imdsfs.service")
    return inst


def test_unit_verifies(real_install):
    analyze = need("systemd-analyze")
    need("man")
    # MANPATH: verify runs `man imdsfs(8)` for Documentation=.
    r = sh([analyze, "verify", real_install.unit], check=False,
           env={"MANPATH": os.path.join(real_install.prefix, "share", "man")}, timeout=60)
    assert r.returncode == 0 and not r.stdout.strip(), r.stdout.decode()


def test_example_units_installed_and_verified(real_install):
    """Issue 12: the spot interruption example units are installed as
    documentation (share/doc/imdsfs/examples), not in the unit directory,
    and pass `systemd-analyze verify` beside imdsfs.service."""
    analyze = need("systemd-analyze")
    need("man")
    examples = os.path.join(real_install.prefix, "share", "doc", "imdsfs", "examples")
    names = sorted(os.listdir(examples))
    assert names == ["imdsfs-spot-interruption.path", "imdsfs-spot-interruption.service"]
    assert sorted(os.listdir(os.path.dirname(real_install.unit))) == ["imdsfs.service"]
    units = os.path.join(os.path.dirname(real_install.unit))
    r = sh([analyze, "verify", *(os.path.join(examples, n) for n in names)], check=False,
           env={"MANPATH": os.path.join(real_install.prefix, "share", "man"),
                "SYSTEMD_UNIT_PATH": units + ":"}, timeout=60)
    assert r.returncode == 0 and not r.stdout.strip(), r.stdout.decode()
    path_unit = open(os.path.join(examples, names[0])).read()
    assert "PathExists=/run/ec2/spot_instance_action" in path_unit


def test_unit_security_exposure(real_install):
    """Informative: systemd's own exposure score stays low (about 4 of 10)."""
    analyze = need("systemd-analyze")
    r = sh([analyze, "security", "--offline=yes", "--no-pager", real_install.unit],
           check=False, timeout=60)
    found = re.search(rb"Overall exposure level for imdsfs.service: ([0-9.]+)", r.stdout)
    if not found:
        pytest.skip("this systemd-analyze has no offline security check")
    assert float(found.group(1)) <= 5.0, r.stdout.decode()


# Each of these gives the service a private mount namespace, from which
# systemd lets no mount propagate to the host (systemd.exec(5)).
NAMESPACING = {
    "ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices", "PrivateMounts",
    "PrivateNetwork", "PrivateIPC", "PrivateUsers", "ProtectKernelTunables",
    "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups", "ProtectProc",
    "ProcSubset", "ReadOnlyPaths", "ReadWritePaths", "InaccessiblePaths", "ExecPaths",
    "NoExecPaths", "TemporaryFileSystem", "BindPaths", "BindReadOnlyPaths", "RootDirectory",
    "RootImage", "MountImages", "ExtensionImages", "ExtensionDirectories", "MountAPIVFS",
    "DynamicUser", "LogNamespace", "NetworkNamespacePath", "IPCNamespacePath", "MountFlags",
    "ReadOnlyDirectories", "ReadWriteDirectories", "InaccessibleDirectories",
}


def test_unit_contents(real_install):
    unit = read_unit(real_install.unit)
    exe = os.path.join(real_install.prefix, "bin", "imdsfs")
    assert unit[("Service", "ExecStart")] == [exe + " " + UNIT_EXEC]
    assert unit[("Service", "Type")] == ["notify"]
    assert unit[("Service", "Restart")] == ["on-failure"]
    assert "network-online.target" in " ".join(unit[("Unit", "After")])
    assert "network-online.target" in " ".join(unit[("Unit", "Wants")])
    assert unit[("Unit", "Documentation")] == ["man:imdsfs(8)"]
    assert unit[("Install", "WantedBy")] == ["multi-user.target"]
    assert unit[("Service", "NoNewPrivileges")] == ["yes"]
    assert unit[("Service", "CapabilityBoundingSet")] == ["CAP_SYS_ADMIN"]
    assert "/dev/fuse rw" in unit[("Service", "DeviceAllow")]
    assert "@mount" in unit[("Service", "SystemCallFilter")][0]
    used = {key for (section, key) in unit if section == "Service"}
    assert not used & NAMESPACING, "these hide the mount from the host: %s" % (used & NAMESPACING)


def wait_for(cond, timeout=10, what="condition"):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for " + what)
        time.sleep(0.02)


def test_unit_privileges_suffice(start_mock, real_install, tmp_path):
    """What the unit leaves the daemon (root with only CAP_SYS_ADMIN, no new
    privileges) is enough to mount with allow_other, serve and unmount."""
    _check_fuse()
    setpriv = need("setpriv")
    mock = start_mock("aemm")
    mnt = tmp_path / "ec2"
    mnt.mkdir()
    log = open(tmp_path / "log", "w+b")
    p = subprocess.Popen([setpriv, "--no-new-privs", "--bounding-set=-all,+sys_admin",
                          "--inh-caps=-all", str(BINARY), "-f", "-o",
                          "allow_other,endpoint=" + mock.url, str(mnt)],
                         stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: os.path.ismount(mnt) or p.poll() is not None, what="the mount")
        assert p.poll() is None, open(tmp_path / "log").read()
        caps = [l for l in open("/proc/%d/status" % p.pid) if l.startswith("CapEff")][0]
        assert int(caps.split()[1], 16) == 1 << 21, caps  # CAP_SYS_ADMIN only
        assert (mnt / "instance_id").read_bytes().strip() == AEMM["meta-data/instance-id"].strip()
        p.send_signal(signal.SIGTERM)
        assert p.wait(10) == 0
        assert not os.path.ismount(mnt)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)
        if os.path.ismount(mnt):
            subprocess.run(["umount", "-l", str(mnt)], timeout=10)
        log.close()


def kill_all(marker):
    for pid in imdsfs_pids(marker):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        deadline = time.monotonic() + 5
        while pid in imdsfs_pids(marker):
            if time.monotonic() > deadline:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                break
            time.sleep(0.02)


@pytest.mark.parametrize("propagation,visible", [("unchanged", True), ("slave", False)],
                         ids=["shared-namespace", "systemd-private-namespace"])
def test_private_mount_namespace_hides_the_mount(propagation, visible, start_mock):
    """Why the unit has no ProtectSystem= and friends: systemd runs such a
    service in its own mount namespace with / made a slave, and a mount made
    there never reaches the host. Here the same is done with unshare(1)
    under a shared tmpfs: only the shared namespace shows the mount."""
    _check_fuse()
    need("unshare")
    mock = start_mock("minimal")
    top = tempfile.mkdtemp(prefix="imdsfs-ns-")
    marker = os.path.basename(top)
    mnt = os.path.join(top, "ec2")
    try:
        sh(["mount", "-t", "tmpfs", "-o", "size=1m", marker, top], timeout=10)
        sh(["mount", "--make-shared", top], timeout=10)
        os.mkdir(mnt)
        r = sh(["unshare", "--mount", "--propagation", propagation, str(BINARY),
                "-o", "endpoint=" + mock.url, mnt], timeout=RUN_TIMEOUT, check=False)
        assert r.returncode == 0, r.stdout.decode()
        [pid] = imdsfs_pids(marker)
        theirs = open("/proc/%d/mountinfo" % pid).read()
        assert " %s " % mnt in theirs, "not mounted even in its own namespace"
        assert os.path.ismount(mnt) == visible
    finally:
        kill_all(marker)
        for path in (mnt, top):
            subprocess.run(["umount", "-l", path], timeout=10, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
        shutil.rmtree(top, ignore_errors=True)


# --- fstab and mount -t fuse.imdsfs ----------------------------------------------

# Run inside `unshare --mount --propagation private`, as root. argv: binary,
# work dir, mock URL. Prints one JSON object.
PROBE = r'''
import json, os, signal, subprocess, sys, time

binary, work, url = sys.argv[1:4]
out = {}
bindir = os.path.join(work, "bin")
os.mkdir(bindir)
os.symlink(binary, os.path.join(bindir, "imdsfs"))
# mount(8) clears PATH; mount.fuse3's /bin/sh then looks in its default path,
# which starts with /usr/local/sbin.
target = next(d for d in ("/usr/local/sbin", "/usr/local/bin") if os.path.isdir(d))
subprocess.run(["mount", "--bind", bindir, target], check=True, timeout=10)
out["helper_dir"] = target

def daemons(mnt):
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                argv = open("/proc/%s/cmdline" % d, "rb").read().split(b"\0")
            except OSError:
                continue
            if argv and os.path.basename(argv[0]) == b"imdsfs" and mnt.encode() in argv:
                pids.append(int(d))
    return pids

def gone(pid):
    try:
        return open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True

def mountinfo(mnt):
    for line in open("/proc/self/mountinfo"):
        f = line.split()
        if f[4] == mnt:
            rest = f[f.index("-") + 1:]
            return {"type": rest[0], "source": rest[1], "options": f[5] + "," + rest[2]}
    return None

def case(name, mount_cmd, umount_cmd, mnt):
    r = {}
    os.mkdir(mnt)
    p = subprocess.run(mount_cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       timeout=30)
    r["mount_rc"] = p.returncode
    r["mount_output"] = p.stdout.decode(errors="replace")
    r["ismount"] = os.path.ismount(mnt)
    try:
        os.stat(mnt)
        r["stat"] = "ok"
    except OSError as e:
        r["stat"] = e.strerror
    r["mountinfo"] = mountinfo(mnt)
    try:
        r["instance_id"] = open(os.path.join(mnt, "instance_id")).read()
    except OSError as e:
        r["instance_id"] = "error: " + e.strerror
    pids = daemons(mnt)
    r["daemons"] = len(pids)
    r["cmdline"] = [open("/proc/%d/cmdline" % p, "rb").read().decode().split("\0")
                    for p in pids]
    u = subprocess.run(umount_cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       timeout=30)
    r["umount_rc"] = u.returncode
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not all(gone(p) for p in pids):
        time.sleep(0.02)
    r["daemons_exited"] = all(gone(p) for p in pids)
    r["mounted_after"] = os.path.ismount(mnt)
    out[name] = r

try:
    mnt = os.path.join(work, "type")
    case("mount_type",
         ["mount", "-t", "fuse.imdsfs", "imdsfs", mnt, "-o", "allow_other,endpoint=" + url],
         ["umount", mnt], mnt)
    mnt = os.path.join(work, "fstab")
    fstab = os.path.join(work, "fstab.test")
    with open(fstab, "w") as f:
        f.write("# a test fstab, never /etc/fstab\n")
        f.write("imdsfs %s fuse.imdsfs allow_other,_netdev,endpoint=%s 0 0\n" % (mnt, url))
    case("fstab", ["mount", "--fstab", fstab, mnt], ["fusermount3", "-u", mnt], mnt)
finally:
    for name in ("type", "fstab"):
        path = os.path.join(work, name)
        if os.path.ismount(path):
            subprocess.run(["umount", "-l", path], timeout=10)
    for name in ("type", "fstab"):
        for pid in daemons(os.path.join(work, name)):
            os.kill(pid, signal.SIGKILL)
    print(json.dumps(out))
'''


@pytest.fixture(scope="module")
def helper_mounts(tmp_top):
    """Both mount(8) paths, run once (see PROBE); the mock stops with it."""
    _check_fuse()
    for tool in ("unshare", "mount", "umount", "fusermount3"):
        need(tool)
    if not (shutil.which("mount.fuse3") or os.path.exists("/sbin/mount.fuse3")):
        _cannot_run("mount.fuse3 is not installed (package fuse3)")
    from conftest import DATA, Mock
    mock = Mock(DATA / "aemm.json")
    work = tempfile.mkdtemp(prefix="imdsfs-fstab-", dir=tmp_top)
    os.chmod(work, 0o755)
    try:
        r = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable,
                            "-c", PROBE, str(BINARY), work, mock.url],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
        assert r.returncode == 0, r.stderr.decode(errors="replace")
        return json.loads(r.stdout)
    finally:
        kill_all(os.path.basename(work))
        mock.stop()


@pytest.mark.parametrize("how", ["mount_type", "fstab"])
def test_mount_helper(how, helper_mounts):
    r = helper_mounts[how]
    assert r["mount_rc"] == 0, r["mount_output"]
    assert r["ismount"] and r["stat"] == "ok"
    assert r["mountinfo"]["type"] == "fuse.imdsfs" and r["mountinfo"]["source"] == "imdsfs"
    assert "allow_other" in r["mountinfo"]["options"].split(","), r["mountinfo"]
    assert r["instance_id"].encode() == AEMM["meta-data/instance-id"].rstrip(b"\n") + b"\n"
    assert r["daemons"] == 1, r
    # mount.fuse3 ran `imdsfs SOURCE MOUNTPOINT -o OPTIONS`, daemonized.
    argv = r["cmdline"][0]
    assert argv[0] == "imdsfs" and argv[1] == "imdsfs" and "-f" not in argv, argv
    assert r["umount_rc"] == 0
    assert r["daemons_exited"], "the daemon did not exit after the unmount"
    assert not r["mounted_after"]


# --- the manual page, --help and --version ----------------------------------------

def man_text():
    """The manual page rendered as plain text, 200 columns wide."""
    if shutil.which("mandoc"):
        r = sh(["mandoc", "-T", "ascii", "-O", "width=200", str(MAN)], timeout=60)
        return re.sub(r".\x08", "", r.stdout.decode())
    if shutil.which("groff"):
        r = sh(["groff", "-man", "-Tutf8", "-P-cbou", "-rLL=200n", str(MAN)], timeout=60)
        return r.stdout.decode()
    _cannot_run("neither mandoc nor groff is installed")


def test_man_page_lint_clean():
    linters = []
    if shutil.which("mandoc"):
        linters.append(["mandoc", "-T", "lint", str(MAN)])
    if shutil.which("groff"):
        linters.append(["groff", "-ww", "-z", "-man", str(MAN)])
    if not linters:
        _cannot_run("neither mandoc nor groff is installed")
    for cmd in linters:
        r = sh(cmd, check=False, timeout=60)
        assert r.returncode == 0 and r.stdout.decode().strip() == "", \
            "%s:\n%s" % (" ".join(cmd), r.stdout.decode())


def help_text():
    r = sh([str(BINARY), "--help"], timeout=RUN_TIMEOUT)
    assert sh([str(BINARY), "-h"], timeout=RUN_TIMEOUT).stdout == r.stdout
    return r.stdout.decode()


def test_help_is_short():
    text = help_text()
    lines = text.splitlines()
    assert lines[0].startswith("usage: ") and "MOUNTPOINT" in lines[0]
    assert len(lines) <= 24, "--help is meant to be short"
    assert all(len(l) < 80 for l in lines), [l for l in lines if len(l) >= 80]


def help_options(text):
    names = set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", text))
    names |= set(re.findall(r"-o ([a-z_]+)", text))
    names |= set(re.findall(r"\b(AWS_[A-Z0-9_]+)", text))
    names.discard("-o")
    return names


def test_help_matches_man_page():
    text = help_text()
    options = help_options(text)
    # Every SPEC option is in --help ...
    for name in ("endpoint", "endpoint_mode", "token_ttl", "timeout", "retries",
                 "hide_sensitive", "allow_other", "-f", "-d", "-h", "--help", "-V",
                 "--version", "AWS_EC2_METADATA_SERVICE_ENDPOINT",
                 "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE", "AWS_EC2_METADATA_DISABLED"):
        assert name in options, "%s is not in --help" % name
    # ... and everything --help names is in the manual page.
    man = man_text()
    missing = [o for o in sorted(options) if not re.search(r"(?<![\w-])%s(?![\w])" % re.escape(o), man)]
    assert not missing, "in --help but not in imdsfs(8): %s" % missing


# SPEC.md, "The cleaned-up tree": every name, as the manual page must show it.
SPEC_TOP = """account_id ami_id ami_launch_index ami_manifest_path
autoscaling_target_lifecycle_state availability_zone availability_zone_id domain iam_info
iam_security_credentials instance_action instance_id instance_identity_document
instance_life_cycle instance_profile_arn instance_profile_id instance_profile_name
instance_type kernel_id mac partition private_hostname private_ipv4 public_hostname
public_ipv4 region reservation_id security_groups spot_instance_action/action
spot_instance_action/time user_data tags/ public_keys/ /openssh_key network/interfaces/
raw/meta-data/ raw/dynamic/ raw/user-data""".split()
SPEC_INTERFACE = """device_number interface_id ipv4_associations/ ipv6s ipv6_prefix mac
owner_id private_hostname private_ipv4s public_hostname public_ipv4s security_groups
security_group_ids subnet_id subnet_ipv4_cidr_block subnet_ipv6_cidr_blocks vpc_id
vpc_ipv4_cidr_block vpc_ipv4_cidr_blocks vpc_ipv6_cidr_blocks""".split()
SPEC_ERRNOS = "ENOENT EIO ETIMEDOUT ECONNREFUSED EHOSTUNREACH EACCES EROFS EPERM".split()


def test_man_page_documents_the_tree():
    man = man_text()
    missing = [n for n in SPEC_TOP + SPEC_INTERFACE if n not in man]
    assert not missing, "SPEC names missing from imdsfs(8): %s" % missing
    missing = [e for e in SPEC_ERRNOS if e not in man]
    assert not missing, "errors missing from imdsfs(8): %s" % missing


def test_man_page_sections():
    man = man_text()
    for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "ENVIRONMENT", "THE TREE",
                    "CACHING", "ERRORS", "PERMISSIONS", "SIGNALS", "EXIT STATUS", "FSTAB",
                    "SYSTEMD", "CONTAINERS", "EXAMPLES", "SEE ALSO"):
        assert re.search(r"^%s$" % section, man, re.M), "no %s section" % section
    for text in ("fuse.imdsfs", "allow_other,_netdev", "systemctl enable --now imdsfs",
                 "docker run -v /run/ec2:/run/ec2:ro", "rslave", "hostPath", "readOnly: true",
                 "mountPropagation: HostToContainer", "http://[fd00:ec2::254]", "0400",
                 "hide_sensitive", "SIGHUP", "rm -rf /run/ec2/*"):
        assert text in man, "imdsfs(8) does not mention %r" % text


def test_man_page_names_every_mounted_file(start_mock, mount_fs):
    """Every name the daemon shows (outside raw/ and the per-instance names:
    MACs, tag keys, key names, public IPs) is documented."""
    man = man_text()
    missing = set()
    for name in ("aemm", "rich", "minimal"):
        mock = start_mock(name)
        m = mount_fs(mock)
        for entry in os.listdir(m.path):
            if entry not in man:
                missing.add(entry)
        ifaces = m.p("network", "interfaces")
        for mac in os.listdir(ifaces):
            for entry in os.listdir(os.path.join(ifaces, mac)):
                if entry not in man:
                    missing.add("network/interfaces/MAC/" + entry)
        m.umount()
    assert not missing, "not in imdsfs(8): %s" % sorted(missing)


def build_dir():
    for d in (BINARY.parent, REPO / "build"):
        if (d / "meson-info").is_dir():
            return d
    _cannot_run("no meson build directory next to %s" % BINARY)


def test_version_is_meson_project_version():
    r = sh([need("meson"), "introspect", "--projectinfo", str(build_dir())], timeout=60)
    version = json.loads(r.stdout)["version"]
    for flag in ("--version", "-V"):
        out = sh([str(BINARY), flag], timeout=RUN_TIMEOUT).stdout.decode()
        first = out.splitlines()[0].split()
        assert first[:2] == ["imdsfs", version], out
    meson_build = (REPO / "meson.build").read_text()
    assert re.search(r"version\s*:\s*'%s'" % re.escape(version), meson_build)
