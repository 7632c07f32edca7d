"""
Cold start over UDP, TCP and TLS side by side (issue 11): N accounts in
SQLite, all at one Kamailio 5.6 registrar on 127.0.0.1 (no authentication:
`save("location")` answers every REGISTER; usrloc db_mode 0; `-m 256`;
`-b 4194304` so that its UDP receive buffer takes a burst), listening
udp, tcp and tls on free loopback ports, with a test CA and server
certificate (subjectAltName IP:127.0.0.1) made here with `cryptography`.
For each transport in turn (the order alternates round by round: udp,
tcp, tls, then tls, tcp, udp) the daemon runs as `twistd -n uacregistrant`
on a fresh table whose registrar is `sip:127.0.0.1:P;transport=<t>` (TLS:
`--tls-ca` the bench CA), with `--hash-size 0 --timer-interval 1800
--send-rate 100000` (one request per registration, no challenge: far
above what the daemon sends, so the pacer is not what is measured), until
every account is REGISTERED (`reg_stats json`, polled).  Kamailio is
restarted for every run (an empty location table, no connection left
over).

Reports per run: wall seconds from the daemon's start to all REGISTERED;
the daemon's CPU (user + system from /proc, start-up and table load
included, the `reg_stats` probes taken out as in cold_start_sipp.py), CPU
µs per registration, and the same from the moment the whole table is in
memory ("after load": start-up and load left out); registrations per
second; when every account's first attempt had ended and how many had
failed then, with their `last_error`s (from `reg_list json`); the
daemon's open connections (`reg_stats` transport.connections) and
connections opened (sip.connections_opened); Kamailio's TCP/TLS
connections (`kamcmd core.tcp_list`, `tls.list`), contacts held and CPU
over the same span; the machine's load average before the run.  Then the
TCP/UDP and TLS/UDP ratios of each round.

    python bench/cold_start_transports.py --accounts 20000 --rounds 2
    python bench/cold_start_transports.py --accounts 20000 --rounds 2 --send-rate 8000
    python bench/cold_start_transports.py --python /usr/bin/python3   # the daemon on another interpreter

Bounded: every run stops after --timeout seconds, every wait is bounded;
only 127.0.0.1 is used.  A run that does not get every account registered
keeps its directory (daemon.log, kamailio.log) and prints where.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from common import TWISTD, cpu_seconds, free_udp_port, group_cpu, group_members, report, start_daemon, write_accounts  # noqa: E402

from tests.integration.forklocals import preload_environment  # noqa: E402
from uacregistrant.control.ctl import request  # noqa: E402

MODULES = next(iter(glob.glob("/usr/lib/*/kamailio/modules")), "/usr/lib/kamailio/modules")
TRANSPORTS = ("udp", "tcp", "tls")
#: States of an account whose attempt has not ended yet.
PENDING = ("NOT_REGISTERED_STATE", "REGISTERING_STATE", "AUTHENTICATING_STATE")
#: Far above what one Python process registers per second (one request per
#: registration here, no challenge): the pacer is not what is measured.
SEND_RATE = 100000

CONFIG = """#!KAMAILIO
debug=1
log_stderror=yes
fork=yes
children=2
tcp_children=2
auto_aliases=no
enable_tls=yes
listen=udp:127.0.0.1:{udp}
listen=tcp:127.0.0.1:{tcp}
listen=tls:127.0.0.1:{tls}
mpath="{modules}"
loadmodule "tls.so"
loadmodule "kex.so"
loadmodule "corex.so"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "ctl.so"
loadmodule "counters.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "textops.so"
modparam("tls", "config", "{directory}/tls.cfg")
modparam("ctl", "binrpc", "unix:{directory}/kamailio.ctl")
modparam("usrloc", "db_mode", 0)
request_route {{
    if (is_method("REGISTER")) {{ save("location"); exit; }}
    sl_send_reply("404", "Not here");
    exit;
}}
"""

TLS_CONFIG = """[server:default]
method = TLSv1.2+
certificate = {certs}/server.pem
private_key = {certs}/server.key
ca_list = {certs}/ca.pem
verify_certificate = no
require_certificate = no

[client:default]
verify_certificate = no
require_certificate = no
"""


def make_certificates(directory: str) -> str:
    """A throw-away CA and a server certificate (IP:127.0.0.1, DNS:registrar.test) it signs; returns the CA file."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=2)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "uacregistrant bench CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "registrar.test")]))
        .issuer_name(ca_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("registrar.test"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    Path(directory, "ca.pem").write_bytes(ca.public_bytes(pem))
    Path(directory, "server.pem").write_bytes(server.public_bytes(pem))
    Path(directory, "server.key").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    os.chmod(os.path.join(directory, "server.key"), 0o600)
    return os.path.join(directory, "ca.pem")


def free_port() -> int:
    """A port on 127.0.0.1 free a moment ago for both UDP and TCP."""
    for _ in range(50):
        port = free_udp_port()
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no port free for both UDP and TCP on 127.0.0.1")


class Kamailio:
    """One Kamailio registrar (its own process group) on fresh loopback ports, in C{directory}; TLS files in C{certs}."""

    def __init__(self, directory: str, shm_mb: int, certs: str) -> None:
        self.directory = directory
        self.ports = {t: free_port() for t in TRANSPORTS}
        config = os.path.join(directory, "kamailio.cfg")
        with open(config, "w") as f:
            f.write(CONFIG.format(modules=MODULES, directory=directory, **self.ports))
        with open(os.path.join(directory, "tls.cfg"), "w") as f:
            f.write(TLS_CONFIG.format(certs=certs))
        self.ctl = f"unix:{directory}/kamailio.ctl"
        self.log_path = os.path.join(directory, "kamailio.log")
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                ["kamailio", "-f", config, "-DD", "-E", "-m", str(shm_mb), "-M", "16", "-b", "4194304", "-Y", directory, "-P", f"{directory}/kamailio.pid"],
                cwd=directory, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                env=preload_environment(),  # Kamailio 5.6's TLS workers corrupt shared memory without it
            )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                self.rpc("core.version", timeout=2)
                return
            except (subprocess.SubprocessError, OSError):
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"Kamailio did not start: {self.log_tail()}")

    def rpc(self, *command: str, timeout: float = 10) -> str:
        """One kamcmd command's output (raises on failure)."""
        done = subprocess.run(["kamcmd", "-s", self.ctl, *command], capture_output=True, text=True, timeout=timeout, check=True)
        return done.stdout

    def cpu(self) -> float:
        return group_cpu(self.process.pid)

    def connections(self) -> dict[str, Any]:
        """Kamailio's view: TCP/TLS connections by type (core.tcp_list), TLS ones (tls.list), contacts held."""
        out: dict[str, Any] = {}
        try:
            listing = self.rpc("core.tcp_list")
            types = re.findall(r"^\s*type:\s*(\S+)", listing, re.M)
            out["kam_tcp_list"] = len(types)
            out["kam_types"] = ",".join(sorted(set(types))) or "-"
            out["kam_tls_list"] = len(re.findall(r"^\s*cipher:", self.rpc("tls.list"), re.M))
        except (subprocess.SubprocessError, OSError) as e:
            out["kam_tcp_list"] = f"error: {e}"
        try:
            stats = self.rpc("stats.get_statistics", "usrloc:")
            match = re.search(r"location-contacts\s*=\s*(\d+)", stats) or re.search(r"registered_users\s*=\s*(\d+)", stats)
            out["kam_contacts"] = int(match.group(1)) if match else None
        except (subprocess.SubprocessError, OSError):
            out["kam_contacts"] = None
        return out

    def log_tail(self, size: int = 3000) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-size:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        # Children outlive a killed main process only briefly; bounded wait for the group to go.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and group_members(self.process.pid):
            time.sleep(0.1)


def log_evidence(path: str, limit: int = 3) -> list[str]:
    """The daemon log's warnings and connection lines (at most C{limit} of each kind)."""
    kept: list[str] = []
    counts: dict[str, int] = {}
    try:
        with open(path, errors="replace") as f:
            for line in f:
                kind = "warn" if re.search(r"#(warn|error|critical)\]", line) else "conn" if re.search(r"connect|connection", line) else ""
                if not kind:
                    continue
                counts[kind] = counts.get(kind, 0) + 1
                if counts[kind] <= limit:
                    kept.append(line.rstrip()[:300])
    except OSError:
        pass
    return kept + [f"({counts.get('warn', 0)} warnings, {counts.get('conn', 0)} other connection lines in all)"]


def daemon_python(log: str) -> str:
    """The interpreter twistd says it runs on (its log's first line)."""
    try:
        with open(log, errors="replace") as f:
            match = re.search(r"twistd \S+ \((.*?)\) starting up", f.readline())
    except OSError:
        return "?"
    return match.group(1) if match else "?"


def failure_reasons(control: str) -> dict[str, int]:
    """The failing records' C{last_error}s (ports, numbers and retry delays blanked), counted."""
    try:
        status, body = request(control, "reg_list json", timeout=60)
        records = json.loads(body[0])["Records"]
    except (OSError, ValueError, IndexError, KeyError) as e:
        return {f"reg_list failed: {e}": 1}
    counts: dict[str, int] = {}
    for record in records:
        if record.get("state") in PENDING or record.get("state") == "REGISTERED_STATE":
            continue
        why = re.sub(r"\d+(?:\.\d+)*", "N", f"{record.get('state')}: {record.get('last_error')}")
        counts[why] = counts.get(why, 0) + 1
    return counts


def run(
    transport: str, accounts: int, ca: str, work: str, timeout: float, shm_mb: int, python: Sequence[str],
    send_rate: float, max_in_flight: int | None,
) -> dict[str, Any]:
    directory = tempfile.mkdtemp(prefix=f"uacreg-{transport}-", dir=work)
    control = f"unix:{directory}/ctl"
    options = ["--hash-size", "0", "--timer-interval", "1800", "--send-rate", f"{send_rate:g}"]
    if max_in_flight is not None:
        options += ["--max-in-flight", str(max_in_flight)]
    if transport == "tls":
        options += ["--tls-ca", ca]
    stats: dict[str, Any] = {}
    after: dict[str, Any] = {}
    registered = 0
    probes = 0
    probe_cost = 0.0
    first_pass: tuple[float, int] | None = None
    loaded: tuple[float, int, int] | None = None
    peak_failing = 0
    reasons: dict[str, int] = {}
    listing_cpu = 0.0
    ok = False
    daemon: Any = None
    kamailio = Kamailio(directory, shm_mb, os.path.dirname(ca))
    try:
        local = free_udp_port()
        registrar = f"sip:127.0.0.1:{kamailio.ports[transport]};transport={transport}"
        write_accounts(os.path.join(directory, "r.db"), accounts, [registrar], local)
        with open("/proc/loadavg") as f:
            load = f.read().split()[0]  # other work on the machine: the noise to expect
        kam_before = kamailio.cpu()
        start = time.monotonic()
        if python:
            daemon = start_with(python, directory, local, control, options)
        else:
            daemon = start_daemon(directory, f"{directory}/r.db", local, control, *options)
        # reg_stats walks every record: its CPU is measured on the idle
        # daemon afterwards and taken out.  Wall time is +- one poll
        # (0.1 s; 0.5 s once only failed records wait for their retry).
        poll = max(0.1, accounts / 200000)
        while time.monotonic() - start < timeout and daemon.poll() is None:
            time.sleep(poll)
            try:
                status, body = request(control, "reg_stats json", timeout=5)
            except OSError:
                continue  # not listening yet
            probes += 1
            stats = json.loads(body[0])
            states = stats["states"]
            registered = states["REGISTERED_STATE"]
            failing = sum(v for k, v in states.items() if k not in PENDING and k != "REGISTERED_STATE")
            peak_failing = max(peak_failing, failing)
            if loaded is None and sum(states.values()) == accounts:
                # The whole table is in memory (start-up and load done; registering has begun).
                loaded = (cpu_seconds(daemon.pid), probes, registered)
            if first_pass is None and sum(states.values()) == accounts and not sum(states.get(s, 0) for s in PENDING):
                # Every account's first attempt has ended (registered or failed).
                first_pass = (time.monotonic() - start, registered)
                if failing:
                    # Why (reg_list walks and writes every record: its CPU is taken out below).
                    cpu_before = cpu_seconds(daemon.pid)
                    reasons = failure_reasons(control)
                    listing_cpu = cpu_seconds(daemon.pid) - cpu_before
                    # The rest waits for back-offs (tens of seconds): probe less often.
                    poll = max(poll, 0.5)
            if registered == accounts:
                ok = True
                break
        wall = time.monotonic() - start
        cpu = cpu_raw = cpu_seconds(daemon.pid) if daemon.poll() is None else float("nan")
        kam_cpu = kamailio.cpu() - kam_before
        kam = kamailio.connections()
        if daemon.poll() is None:
            idle_before = cpu_seconds(daemon.pid)
            for _ in range(5):
                request(control, "reg_stats json", timeout=5)
            probe_cost = (cpu_seconds(daemon.pid) - idle_before) / 5
            cpu -= probes * probe_cost
            # The connection count again, a moment later (still one?).
            time.sleep(1)
            status, body = request(control, "reg_stats json", timeout=5)
            after = json.loads(body[0])
    finally:
        if daemon is not None:
            if daemon.poll() is None:
                daemon.terminate()
            try:
                daemon.wait(30)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait(10)
        kamailio.stop()
    cpu -= listing_cpu
    # After the load: the registering alone (start-up and table load left out).
    after_load = float("nan")
    if loaded is not None and registered > loaded[2]:
        after_load = (cpu_raw - loaded[0] - listing_cpu - (probes - loaded[1]) * probe_cost) / (registered - loaded[2])
    pass_wall, pass_registered = first_pass if first_pass is not None else (float("nan"), 0)
    sip = stats.get("sip", {})
    transports = stats.get("transport", {})
    result = {
        "transport": transport,
        "daemon_python": daemon_python(os.path.join(directory, "daemon.log")),
        "accounts": accounts,
        "registered": registered,
        "wall_s": round(wall, 2),
        "daemon_cpu_s": round(cpu, 2),
        "probe_cpu_s": round(probes * probe_cost, 3),
        "cpu_us_per_registration": round(1e6 * cpu / max(1, registered), 1),
        "registrations_per_s": round(registered / wall, 1),
        "after_load_us_per_registration": round(1e6 * after_load, 1),
        "registered_at_load": loaded[2] if loaded is not None else None,
        "first_pass_s": round(pass_wall, 2),
        "first_pass_registered": pass_registered,
        "peak_failing": peak_failing,
        "failure_reasons": "; ".join(f"{n} x {why}" for why, n in sorted(reasons.items(), key=lambda kv: -kv[1])[:3]) or "-",
        "connections": transports.get("connections"),
        "connections_1s_later": after.get("transport", {}).get("connections"),
        "connections_opened": sip.get("connections_opened"),
        "connection_failures": sip.get("connection_failures"),
        "connections_lost": sip.get("connections_lost"),
        "send_errors": sip.get("send_errors"),
        "retransmissions": sip.get("retransmissions"),
        "timeouts": sip.get("timeouts"),
        **kam,
        "kamailio_cpu_s": round(kam_cpu, 2),
        "loadavg_1m_before": load,
    }
    evidence = log_evidence(os.path.join(directory, "daemon.log"))
    if ok:
        shutil.rmtree(directory, ignore_errors=True)
    else:
        print(f"{transport}: {registered}/{accounts} registered after {wall:.1f} s; kept {directory}", file=sys.stderr)
        print(json.dumps(stats), file=sys.stderr)
        print(kamailio.log_tail(), file=sys.stderr)
    print(f"{transport}: daemon log: " + " | ".join(evidence), file=sys.stderr)
    return result


def start_with(python: Sequence[str], directory: str, local: int, control: str, options: list[str]) -> Any:
    """
    The daemon under another interpreter (C{--python}, the same Python
    minor version): start_daemon's command, with this environment's
    packages (Twisted...) on its path, after the project.
    """
    import sysconfig

    twistd = [*python, *TWISTD[1:]]
    path = os.pathsep.join([str(ROOT), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    return subprocess.Popen(
        [*twistd, "-n", "--pidfile=", f"--logfile={directory}/daemon.log", "uacregistrant",
         "--db-url", f"sqlite:{directory}/r.db", "--listen", f"udp:127.0.0.1:{local}", "--control", control,
         "--no-unregister-on-shutdown", *options],
        cwd=directory, env={**os.environ, "PYTHONPATH": path},
    )


def ratio(a: float, b: float) -> float | str:
    """a / b, rounded; n/a when either is missing (nan) or b is 0."""
    if not (a == a and b == b) or not b:
        return "n/a"
    return round(a / b, 2)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--accounts", type=int, default=20000, help="accounts per run [default: %(default)s]")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of udp, tcp, tls; the order alternates (udp first, then tls first)")
    parser.add_argument("--transport", action="append", choices=TRANSPORTS, help="only these (repeatable) [default: all three]")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per run at most")
    parser.add_argument("--shm", type=int, default=256, help="Kamailio shared memory, MB")
    parser.add_argument("--python", help="run the daemon with this interpreter instead of this one's")
    parser.add_argument("--send-rate", type=float, default=SEND_RATE, help="the daemon's --send-rate [default: %(default)s]")
    parser.add_argument("--max-in-flight", type=int, help="the daemon's --max-in-flight [default: the daemon's, 1000]")
    options = parser.parse_args()
    transports = [t for t in TRANSPORTS if t in (options.transport or TRANSPORTS)]
    work = tempfile.mkdtemp(prefix="uacreg-transports-")
    results: list[dict[str, Any]] = []
    try:
        ca = make_certificates(work)
        for round_ in range(max(1, options.rounds)):
            order = transports if round_ % 2 == 0 else transports[::-1]
            for transport in order:
                row = run(transport, options.accounts, ca, work, options.timeout, options.shm,
                          [options.python] if options.python else [], options.send_rate, options.max_in_flight)
                row = {"round": round_ + 1, **row}
                results.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    finally:
        for name in ("ca.pem", "server.pem", "server.key"):
            try:
                os.unlink(os.path.join(work, name))
            except OSError:
                pass
        if all(r["registered"] == r["accounts"] for r in results):
            shutil.rmtree(work, ignore_errors=True)
    if not results:
        return 1
    report(results)
    ratios = []
    for round_ in sorted({r["round"] for r in results}):
        rows = {r["transport"]: r for r in results if r["round"] == round_}
        udp = rows.get("udp")
        if udp is None:
            continue
        for other in ("tcp", "tls"):
            if other in rows:
                ratios.append({
                    "round": round_,
                    "ratio": f"{other}/udp",
                    **{name: ratio(rows[other][column], udp[column]) for name, column in (
                        ("wall", "wall_s"),
                        ("cpu_per_registration", "cpu_us_per_registration"),
                        ("after_load_cpu_per_registration", "after_load_us_per_registration"),
                    )},
                })
    if ratios:
        report(ratios)
    print(json.dumps({"send_rate": options.send_rate, "max_in_flight": options.max_in_flight, "python": options.python or sys.executable}))
    return 0 if all(r["registered"] == r["accounts"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
