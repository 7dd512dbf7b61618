"""Tests for tuning/apply and the sysctl profiles.

Run: python3 -m pytest -q tuning/test_apply.py

The real-host tests only read /proc/sys (--check). Everything that writes
uses a fake /proc/sys tree through TUNING_PROC_SYS.
"""

import os
import pathlib
import re
import shutil
import subprocess
import tempfile

import pytest

HERE = pathlib.Path(__file__).resolve().parent
APPLY = HERE / "apply"
PROFILE_DIR = HERE / "profiles"
PROFILES = sorted(PROFILE_DIR.glob("*.conf"))
REPO = HERE.parent

STATUSES = {"ok", "change", "absent", "unknown", "unreadable"}


# ---- helpers ----------------------------------------------------------------


def missing_prerequisite(reason):
    """A prerequisite is missing: fail under CI=true, skip with the reason elsewhere
    (a test never passes without running)."""
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(f"prerequisite missing under CI=true: {reason}", pytrace=False)
    pytest.skip(f"{reason}; under CI=true this fails")



def run(*args, proc_sys=None, **kw):
    env = {k: v for k, v in os.environ.items() if k != "TUNING_PROC_SYS"}
    if proc_sys is not None:
        env["TUNING_PROC_SYS"] = str(proc_sys)
    return subprocess.run(
        [str(APPLY), *map(str, args)], capture_output=True, text=True, env=env, timeout=60, **kw
    )


def profile_entries(path):
    """(key, value, optional) per setting line, parsed independently of apply."""
    out = []
    for line in pathlib.Path(path).read_text().splitlines():
        s = line.strip()
        if not s or s[0] in "#;":
            continue
        key, value = (x.strip() for x in s.split("=", 1))
        optional = key.startswith("-")
        out.append((key.lstrip("-").strip(), " ".join(value.split()), optional))
    return out


def key_path(root, key):
    return pathlib.Path(root, *key.split("."))


def parse_tables(stdout):
    """Every table in the output: list of (rows, summary). A row is a dict
    with key/current/profile/status/note, cut at the header's columns."""
    lines = stdout.splitlines()
    tables = []
    i = 0
    while i < len(lines):
        if not lines[i].startswith("KEY "):
            i += 1
            continue
        header = lines[i]
        cols = [header.index(h) for h in ("KEY", "CURRENT", "PROFILE", "STATUS", "NOTE")]
        rows = []
        i += 1
        while i < len(lines) and not lines[i].startswith("summary:"):
            line = lines[i]
            cells = [line[a:b].strip() for a, b in zip(cols, cols[1:] + [None])]
            rows.append(dict(zip(("key", "current", "profile", "status", "note"), cells)))
            i += 1
        assert i < len(lines), "table without a summary line"
        tables.append((rows, lines[i]))
        i += 1
    return tables


def single_table(stdout):
    tables = parse_tables(stdout)
    assert len(tables) == 1, stdout
    return tables[0]


def check_summary(rows, summary):
    m = re.fullmatch(r"summary: (\d+) keys: (\d+) ok, (\d+) change, (\d+) absent(?:, .*)?", summary)
    assert m, summary
    total, ok, change, absent = map(int, m.groups())
    assert total == len(rows)
    assert ok == sum(r["status"] == "ok" for r in rows)
    assert change == sum(r["status"] == "change" for r in rows)
    assert absent == sum(r["status"] == "absent" for r in rows)


def make_fake(root, entries, value="0", skip=()):
    """A fake /proc/sys with every key of entries set to `value`, except the
    keys in skip, which are left out (absent)."""
    for key, _, _ in entries:
        if key in skip:
            continue
        p = key_path(root, key)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(value + "\n")


def conntrack_keys(entries):
    return {k for k, _, _ in entries if k.startswith("net.netfilter.")}


# ---- the profiles themselves ---------------------------------------------------


def test_three_profiles_exist():
    names = {p.name for p in PROFILES}
    assert {"1m-connections.conf", "10m-connections.conf", "test-host.conf"} <= names


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_every_setting_says_why_and_what_it_costs(profile):
    lines = profile.read_text().splitlines()
    for n, line in enumerate(lines):
        s = line.strip()
        if not s or s[0] in "#;":
            continue
        block = []
        j = n - 1
        while j >= 0 and lines[j].startswith("#"):
            block.append(lines[j])
            j -= 1
        text = "\n".join(block)
        assert "why:" in text and "cost:" in text, f"{profile.name}:{n + 1} {s!r} lacks a why/cost comment"


def _n_and_sockets(profile):
    text = profile.read_text()
    n = int(re.search(r"^# N\s+= ([\d,]+)", text, re.M).group(1).replace(",", ""))
    m = re.search(r"^# S\s+= .*?= ([\d,]+) TCP sockets", text, re.M)
    sockets = int(m.group(1).replace(",", "")) if m else n
    return n, sockets


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_numbers_follow_from_the_connection_count(profile):
    n, sockets = _n_and_sockets(profile)
    values = {k: v for k, v, _ in profile_entries(profile)}
    # one page per socket at min, two at pressure, three at max
    assert [int(x) for x in values["net.ipv4.tcp_mem"].split()] == [sockets, 2 * sockets, 3 * sockets]
    assert int(values["fs.file-max"]) >= sockets + 100_000
    assert int(values["fs.nr_open"]) >= n + 256  # epoll fallback in one process
    assert int(values["net.ipv4.tcp_max_orphans"]) >= n // 4
    assert int(values["net.ipv4.tcp_max_tw_buckets"]) >= n // 8
    assert int(values["net.netfilter.nf_conntrack_max"]) >= n
    lo, hi = map(int, values["net.ipv4.ip_local_port_range"].split())
    assert 1024 <= lo < hi <= 65535 and lo % 2 != hi % 2
    rmem = [int(x) for x in values["net.ipv4.tcp_rmem"].split()]
    wmem = [int(x) for x in values["net.ipv4.tcp_wmem"].split()]
    assert rmem[0] <= rmem[1] <= 16384 < rmem[2] and wmem[0] <= wmem[1] <= 16384 < wmem[2]
    assert values["kernel.io_uring_disabled"] == "0"


def test_somaxconn_matches_pulsegate_listen_backlog():
    src = REPO / "src" / "sys" / "socket.rs"
    if not src.exists():
        missing_prerequisite(f"{src} not found (where LISTEN_BACKLOG is declared)")
    backlog = int(re.search(r"LISTEN_BACKLOG: i32 = ([\d_]+);", src.read_text()).group(1).replace("_", ""))
    for profile in PROFILES:
        values = {k: v for k, v, _ in profile_entries(profile)}
        assert int(values["net.core.somaxconn"]) == backlog, profile.name


# ---- --check against this host (read only) --------------------------------------


def test_apply_is_executable():
    assert os.access(APPLY, os.X_OK)


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_check_on_this_host(profile):
    # The one exit code this host must produce, read from /proc/sys beforehand:
    # 1 if any setting differs from the profile, else 0 (absent keys are not changes).
    entries = profile_entries(profile)
    differs = []
    for key, value, _ in entries:
        path = key_path("/proc/sys", key)
        if path.exists() and " ".join(path.read_text().split()) != value:
            differs.append(key)
    r = run("--check", profile)
    assert r.returncode == (1 if differs else 0), f"differs: {differs}\n" + r.stdout + r.stderr
    rows, summary = single_table(r.stdout)
    check_summary(rows, summary)
    assert [row["key"] for row in rows] == [k for k, _, _ in entries]
    for row, (key, value, _) in zip(rows, entries):
        assert row["status"] in ("ok", "change", "absent"), row
        assert row["profile"] == value
        path = key_path("/proc/sys", key)
        if not path.exists():
            assert row["status"] == "absent" and row["current"] == "-" and row["note"], row
            continue
        current = " ".join(path.read_text().split())
        assert row["current"] == (current or "(empty)"), row
        assert row["status"] == ("ok" if current == value else "change"), row
    assert [row["key"] for row in rows if row["status"] == "change"] == differs


def test_default_mode_is_check():
    profile = PROFILE_DIR / "test-host.conf"
    a, b = run(profile), run("--check", profile)
    assert (a.returncode, a.stdout) == (b.returncode, b.stdout)


# ---- fake /proc/sys: --apply, absent keys, errors ------------------------------------


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_apply_writes_the_files_then_check_passes(tmp_path, profile):
    entries = profile_entries(profile)
    absent = conntrack_keys(entries)
    assert absent, "the profiles mark conntrack keys optional"
    make_fake(tmp_path, entries, value="-7", skip=absent)  # matches no profile value

    r = run("--check", profile, proc_sys=tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    rows, summary = single_table(r.stdout)
    check_summary(rows, summary)
    for row in rows:
        assert row["status"] == ("absent" if row["key"] in absent else "change"), row
    # --check wrote nothing
    assert all(key_path(tmp_path, k).read_text() == "-7\n" for k, _, _ in entries if k not in absent)

    r = run("--apply", profile, proc_sys=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    (before, _), (after, after_summary) = parse_tables(r.stdout)
    assert [x["status"] for x in before] == [x["status"] for x in rows]
    check_summary(after, after_summary)
    assert {x["status"] for x in after} <= {"ok", "absent"}
    assert f"wrote {len(entries) - len(absent)} key(s), 0 failed" in r.stdout
    for key, value, _ in entries:
        if key in absent:
            assert not key_path(tmp_path, key).exists(), "apply must not create absent keys"
        else:
            assert key_path(tmp_path, key).read_text() == value + "\n"

    r = run("--check", profile, proc_sys=tmp_path)
    assert r.returncode == 0, r.stdout
    rows, _ = single_table(r.stdout)
    assert {row["status"] for row in rows} == {"ok", "absent"}


def test_values_compare_whitespace_normalized(tmp_path):
    prof = tmp_path / "p.conf"
    prof.write_text("net.ipv4.tcp_rmem = 4096   8192 1048576\n")
    root = tmp_path / "sys"
    make_fake(root, [("net.ipv4.tcp_rmem", "", False)], value="4096\t8192\t1048576")
    r = run("--check", prof, proc_sys=root)
    assert r.returncode == 0, r.stdout
    rows, _ = single_table(r.stdout)
    assert rows[0]["status"] == "ok" and rows[0]["current"] == "4096 8192 1048576"


def test_absent_key_is_reported_and_does_not_fail(tmp_path):
    prof = tmp_path / "p.conf"
    prof.write_text(
        "fs.file-max = 100\n"
        "-net.netfilter.nf_conntrack_max = 5\n"  # optional by `-` (and by name)
        "-vm.some_future_knob = 1\n"  # optional by `-` only
        "net.ipv4.tcp_mem = 1 2 3\n"  # global key: absent inside a container netns
    )
    root = tmp_path / "sys"
    make_fake(root, [("fs.file-max", "", False)], value="100")
    r = run("--check", prof, proc_sys=root)
    assert r.returncode == 0, r.stdout + r.stderr
    rows, summary = single_table(r.stdout)
    check_summary(rows, summary)
    status = {row["key"]: row for row in rows}
    assert status["fs.file-max"]["status"] == "ok"
    for key in ("net.netfilter.nf_conntrack_max", "vm.some_future_knob", "net.ipv4.tcp_mem"):
        assert status[key]["status"] == "absent" and status[key]["current"] == "-", status[key]
    assert "nf_conntrack" in status["net.netfilter.nf_conntrack_max"]["note"]
    assert "namespace" in status["net.ipv4.tcp_mem"]["note"]
    assert summary.endswith("1 ok, 0 change, 3 absent")
    r = run("--apply", prof, proc_sys=root)
    assert r.returncode == 0, r.stdout
    assert not key_path(root, "net.netfilter.nf_conntrack_max").exists()


def test_unknown_profile_exits_2(tmp_path):
    r = run("--check", tmp_path / "no-such-profile.conf", proc_sys=tmp_path)
    assert r.returncode == 2
    assert "cannot read profile" in r.stderr
    r = run("--apply", tmp_path / "no-such-profile.conf", proc_sys=tmp_path)
    assert r.returncode == 2


def test_unknown_key_exits_2_and_writes_nothing(tmp_path):
    prof = tmp_path / "p.conf"
    prof.write_text("fs.file-max = 100\nnet.ipv4.tcp_no_such_knob = 1\n")
    root = tmp_path / "sys"
    make_fake(root, [("fs.file-max", "", False)], value="7")
    r = run("--check", prof, proc_sys=root)
    assert r.returncode == 2
    rows, _ = single_table(r.stdout)
    assert rows[1]["status"] == "unknown" and "unknown key" in rows[1]["note"]
    r = run("--apply", prof, proc_sys=root)
    assert r.returncode == 2
    assert "nothing written" in r.stdout
    assert key_path(root, "fs.file-max").read_text() == "7\n"


@pytest.mark.parametrize(
    "text, message",
    [
        ("fs.file-max\n", "expected `key = value`"),
        ("fs.file-max =\n", "has no value"),
        ("fs.file-max = 1\nfs.file-max = 2\n", "already set on line 1"),
        ("fs/../../etc/passwd = 1\n", "bad key"),
        ("net.ipv4.conf.*.rp_filter = 1\n", "glob"),
        ("# only comments\n\n; here\n", "sets no key"),
    ],
)
def test_malformed_profile_exits_2(tmp_path, text, message):
    prof = tmp_path / "p.conf"
    prof.write_text(text)
    r = run("--check", prof, proc_sys=tmp_path)
    assert r.returncode == 2
    assert message in r.stderr, r.stderr


@pytest.mark.parametrize(
    "args", [[], ["a.conf", "b.conf"], ["--check", "--apply", "x.conf"], ["--bogus", "x.conf"]]
)
def test_usage_errors_exit_2(tmp_path, args):
    r = run(*args, proc_sys=tmp_path)
    assert r.returncode == 2
    assert "usage:" in r.stderr


def test_slash_keys_and_dotted_interface_names(tmp_path):
    prof = tmp_path / "p.conf"
    prof.write_text("net/ipv4/tcp_fin_timeout = 15\nnet.ipv4.conf.eth0/100.rp_filter = 1\n")
    root = tmp_path / "sys"
    (root / "net/ipv4/conf/eth0.100").mkdir(parents=True)
    (root / "net/ipv4/tcp_fin_timeout").write_text("60\n")
    (root / "net/ipv4/conf/eth0.100/rp_filter").write_text("0\n")
    r = run("--apply", prof, proc_sys=root)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (root / "net/ipv4/tcp_fin_timeout").read_text() == "15\n"
    assert (root / "net/ipv4/conf/eth0.100/rp_filter").read_text() == "1\n"


def _shared_tree():
    """A fake tree another user can traverse (pytest's tmp_path is 0700)."""
    d = pathlib.Path(tempfile.mkdtemp(prefix="tuning-test-"))
    d.chmod(0o755)
    return d


def test_apply_reports_a_write_it_was_refused(tmp_path):
    """Non-root writing root's 0644 files: the failure is named, exit 1."""
    root = _shared_tree()
    try:
        prof = root / "p.conf"
        prof.write_text("fs.file-max = 100\nfs.nr_open = 64\n")
        make_fake(root / "sys", [("fs.file-max", "", False), ("fs.nr_open", "", False)], value="64")
        for p in (root / "sys").rglob("*"):
            p.chmod(0o755 if p.is_dir() else 0o444)
        prof.chmod(0o644)
        kw = {}
        if os.geteuid() == 0:
            kw["preexec_fn"] = lambda: (os.setgid(65534), os.setuid(65534))
        r = run("--apply", prof, proc_sys=root / "sys", **kw)
        assert r.returncode == 1, r.stdout + r.stderr
        (_, _), (after, _) = parse_tables(r.stdout)
        row = {x["key"]: x for x in after}
        assert row["fs.file-max"]["status"] == "change"
        assert "write failed: permission denied" in row["fs.file-max"]["note"]
        assert row["fs.nr_open"]["status"] == "ok"
        assert "1 failed" in r.stdout
        assert (root / "sys/fs/file-max").read_text() == "64\n"
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_apply_reports_read_only_proc_sys(tmp_path):
    """As in a container: /proc/sys mounted read-only -> EROFS, named."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        missing_prerequisite("needs root and unshare(1) to make a read-only bind mount")
    root = tmp_path / "sys"
    make_fake(root, [("fs.file-max", "", False)], value="64")
    prof = tmp_path / "p.conf"
    prof.write_text("fs.file-max = 100\n")
    script = (
        f"mount --bind {root} {root} && mount -o remount,bind,ro {root} && "
        f"TUNING_PROC_SYS={root} {APPLY} --apply {prof}"
    )
    r = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=60)
    if "mount" in r.stderr and r.returncode not in (0, 1):
        missing_prerequisite(f"cannot bind-mount here: {r.stderr.strip()}")
    assert r.returncode == 1, r.stdout + r.stderr
    (_, _), (after, _) = parse_tables(r.stdout)
    assert "read-only file system" in after[0]["note"]
    assert (root / "fs/file-max").read_text() == "64\n"
