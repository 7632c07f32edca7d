"""
Cluster scale-out on one host (issue 12): 1, 2 and 4 nodes sharing one
PostgreSQL registrant table, cold start, side by side with one daemon
alone and with Kamailio's uac module.

One throw-away PostgreSQL 15 on 127.0.0.1 (fsync off; started here, as
bench/pg_load.py does, but with bench/common.py's own server: bench/ does
not import from tests/) holds the OpenSIPS-schema `registrant` table with
N accounts (`sip:uI@bench.invalid`, expiry 3600), all at one registrar.

The registrar is Kamailio 5.6 without authentication (`save("location")`
for every REGISTER; usrloc `db_mode 0`, `hash_size 14`; 2 UDP children,
`-m 512`, `-b 4194304`): one transaction per registration, about 35 µs of
C per registration (issue 11's runs), and two worker processes, so on two
cores it is not what limits the daemons.  (SIPp's digest registrars cost
two transactions and more CPU per registration, single-threaded per
instance; here they would compete harder with the nodes for the two
cores.)  It is restarted for every run, so its location table starts
empty; its own counters say how many contacts it holds and how many
REGISTERs it accepted (more than N means some account was registered
more than once).

For each configuration, in an order that alternates round by round
(round 1: alone, 1, 2, 4 nodes, Kamailio uac; round 2 the reverse):

* `alone`: one daemon without `--cluster` on the same table (what the
  cluster costs compared with a single daemon);
* `K nodes`: K daemons started together, `twistd -n uacregistrant
  --db-url postgresql://... --cluster bench-<run> --node-name nI --listen
  udp:127.0.0.1:<port I> --cluster-lease 10 --send-rate 100000
  --hash-size 0 --timer-interval 1800 --no-unregister-on-shutdown`, a
  fresh cluster name per run (its rows deleted afterwards);
* `kamailio uac`: Kamailio's uac module registering the same N accounts
  at the same registrar (bench/kamailio_uac.py's configuration and uacreg
  table, tuned as issue 5 says: its random initial delay is
  max(2, N / 20000) s, 5 s at 100k).

Measured per run: wall seconds from the first node's start until every
account is REGISTERED on some node (the sum of `reg_stats json`
REGISTERED_STATE over the nodes: a cluster node counts only the records
it holds), polled every 0.1 s through the registrar's contact count
(kamcmd, cheap) and confirmed by a `reg_stats` sweep of every node; the
CPU of all daemon processes (user + system from /proc, start-up and table
load included, the `reg_stats` probes measured on the nodes afterwards and
taken out) per registration, and after each node's load (from the moment
its log says the table is in memory); the registrar's and PostgreSQL's
CPU over the same span.  Then the invariants: the nodes' records are
disjoint and complete (sum of `records_held` == N, sum of slots == 1024,
the `reg_list json` AORs of the nodes disjoint with N in all, every one
REGISTERED, its Call-ID the one stored in `uacregistrant_records`), the
registrar's accepted REGISTERs against N, warnings in the nodes' logs.

Last (unless --no-digest-pair), bench/kamailio_uac.py's own side by side
once, in the same session: one daemon alone (SQLite) then Kamailio uac,
each against 2 fresh SIPp registrars with digest (bench/sipp/
registrar_401_200.xml), the registrars run here in the foreground and
stopped by their process ids.

    python bench/cluster_scale.py --accounts 100000 --rounds 2
    python bench/cluster_scale.py --accounts 20000 --nodes 2 --no-kamailio --no-digest-pair

Bounded: every run stops after --timeout seconds, every wait is bounded;
only 127.0.0.1 is used; every process started here is stopped by its id
(or process group) at the end.  A run that fails keeps its directory
(node logs) and prints where.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from cold_start_sipp import SCENARIO  # noqa: E402
from common import TWISTD, Postgres, cpu_seconds, free_udp_port, group_cpu, precompile, report, stop_group, write_accounts  # noqa: E402
from kamailio_uac import start_kamailio, write_uacreg  # noqa: E402

from uacregistrant.control.ctl import request  # noqa: E402
from uacregistrant.store import schema_sql  # noqa: E402

MODULES = next(iter(glob.glob("/usr/lib/*/kamailio/modules")), "/usr/lib/kamailio/modules")
SLOTS = 1024
SEND_RATE = 100000
LEASE = 10
#: The registrar's contact count is read this often (kamcmd: a few ms of C).
POLL = 0.1
#: --keep: keep every run's directory (the node logs).
KEEP = False
#: Seconds to wait, once the registrar holds every contact, for the nodes' reg_stats to say so too.
CONFIRM = 30

REGISTRAR = """#!KAMAILIO
debug=1
log_stderror=yes
fork=yes
children=2
auto_aliases=no
listen=udp:127.0.0.1:{port}
mpath="{modules}"
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
modparam("ctl", "binrpc", "unix:{directory}/registrar.ctl")
modparam("usrloc", "db_mode", 0)
modparam("usrloc", "hash_size", 14)
request_route {{
    if (is_method("REGISTER")) {{ save("location"); exit; }}
    sl_send_reply("404", "Not here");
    exit;
}}
"""


class Registrar:
    """The Kamailio registrar (no authentication) on one fixed loopback port, restarted per run."""

    def __init__(self, work: str) -> None:
        self.directory = tempfile.mkdtemp(prefix="registrar-", dir=work)
        self.port = free_udp_port()
        self.ctl = f"unix:{self.directory}/registrar.ctl"
        self.process: subprocess.Popen[bytes] | None = None
        with open(os.path.join(self.directory, "registrar.cfg"), "w") as f:
            f.write(REGISTRAR.format(port=self.port, modules=MODULES, directory=self.directory))

    def start(self) -> None:
        log = open(os.path.join(self.directory, "registrar.log"), "ab")
        self.process = subprocess.Popen(
            ["kamailio", "-f", os.path.join(self.directory, "registrar.cfg"), "-DD", "-E", "-m", "512", "-M", "16",
             "-b", "4194304", "-Y", self.directory, "-P", os.path.join(self.directory, "registrar.pid")],
            cwd=self.directory, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                self.rpc("core.version", timeout=2)
                return
            except (subprocess.SubprocessError, OSError):
                time.sleep(0.1)
        tail = self.log_tail()
        self.stop()
        raise RuntimeError(f"the Kamailio registrar did not start: {tail}")

    def restart(self) -> None:
        self.stop()
        self.start()

    def rpc(self, *command: str, timeout: float = 10) -> str:
        done = subprocess.run(["kamcmd", "-s", self.ctl, *command], capture_output=True, text=True, timeout=timeout, check=True)
        return done.stdout

    def statistics(self) -> dict[str, int]:
        """contacts held (usrloc), REGISTERs accepted and rejected (registrar)."""
        out: dict[str, int] = {}
        text = self.rpc("stats.get_statistics", "location_contacts", "accepted_regs", "rejected_regs")
        for name, key in (("location_contacts", "contacts"), ("accepted_regs", "accepted"), ("rejected_regs", "rejected")):
            match = re.search(rf"{re.escape(name)}\s*=\s*(\d+)", text)
            out[key] = int(match.group(1)) if match else -1
        return out

    def contacts(self) -> int:
        try:
            text = self.rpc("stats.get_statistics", "location_contacts", timeout=5)
        except (subprocess.SubprocessError, OSError):
            return -1
        match = re.search(r"location_contacts\s*=\s*(\d+)", text)
        return int(match.group(1)) if match else -1

    def cpu(self) -> float:
        return group_cpu(self.process.pid) if self.process is not None else 0.0

    def log_tail(self, size: int = 2000) -> str:
        try:
            with open(os.path.join(self.directory, "registrar.log"), errors="replace") as f:
                return f.read()[-size:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process is not None:
            stop_group(self.process)
            self.process = None


class Node:
    """One daemon (a cluster node, or the daemon alone), its log and control socket."""

    def __init__(self, directory: str, name: str, db_url: str, cluster: str | None, extra: Sequence[str] = (), code: str = str(ROOT)) -> None:
        self.name = name
        self.port = free_udp_port()
        self.control = f"unix:{directory}/{name}.ctl"
        self.log_path = os.path.join(directory, f"{name}.log")
        options = ["--cluster", cluster, "--node-name", name, "--cluster-lease", str(LEASE)] if cluster else []
        self.command = [
            *TWISTD, "-n", "--pidfile=", f"--logfile={self.log_path}", "uacregistrant",
            "--db-url", db_url, "--listen", f"udp:127.0.0.1:{self.port}", "--control", self.control,
            *options, "--send-rate", str(SEND_RATE), "--hash-size", "0", "--timer-interval", "1800",
            "--no-unregister-on-shutdown", *extra,
        ]
        self.directory = directory
        self.code = code
        self.process: subprocess.Popen[bytes] | None = None
        self.loaded: tuple[float, float] | None = None  # (seconds after the start, CPU then)
        self._read = 0
        self.took: list[tuple[float, int, int]] = []  # (seconds after the start, slots, records)
        self.probes = 0
        self.probe_cost = 0.0

    def start(self) -> None:
        precompile(self.code)
        self.process = subprocess.Popen(self.command, cwd=self.directory, env={**os.environ, "PYTHONPATH": self.code},
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def cpu(self) -> float:
        assert self.process is not None
        return cpu_seconds(self.process.pid)

    def follow_log(self, elapsed: float) -> None:
        """New log lines: the table loaded (CPU noted), slots taken."""
        try:
            with open(self.log_path, errors="replace") as f:
                f.seek(self._read)
                chunk = f.read()
        except OSError:
            return
        end = chunk.rfind("\n") + 1
        self._read += len(chunk[:end].encode())
        for line in chunk[:end].splitlines():
            if self.loaded is None and re.search(r"\] table \S+: \d+ added", line):
                self.loaded = (elapsed, self.cpu())
            took = re.search(r"cluster: took (\d+) slot\(s\) with (\d+) record", line)
            if took:
                self.took.append((elapsed, int(took.group(1)), int(took.group(2))))

    def stats(self) -> dict[str, Any] | None:
        try:
            status, body = request(self.control, "reg_stats json", timeout=30)
        except OSError:
            return None
        self.probes += 1
        return json.loads(body[0])  # type: ignore[no-any-return]

    def command_json(self, command: str, timeout: float = 120) -> Any:
        status, body = request(self.control, command, timeout=timeout)
        if not status.startswith("200"):
            raise RuntimeError(f"{self.name}: {command}: {status} {body[:2]}")
        return json.loads("".join(body))

    def warnings(self, limit: int = 4) -> tuple[dict[str, int], list[str]]:
        """The log's warnings and errors: counted by kind (numbers blanked), and the first few as they are."""
        kept: list[str] = []
        kinds: dict[str, int] = {}
        try:
            with open(self.log_path, errors="replace") as f:
                for line in f:
                    if re.search(r"#(warn|error|critical)\]|Traceback|Unhandled", line):
                        kind = re.sub(r"\d+(?:\.\d+)*", "N", line.split("] ", 1)[-1].strip())[:160]
                        kinds[kind] = kinds.get(kind, 0) + 1
                        if len(kept) < limit:
                            kept.append(line.rstrip()[:300])
        except OSError:
            pass
        return kinds, kept

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


def sweep(nodes: list[Node]) -> list[dict[str, Any] | None]:
    """reg_stats json of every node at once (one thread each: the nodes count in parallel)."""
    results: list[dict[str, Any] | None] = [None] * len(nodes)

    def one(i: int) -> None:
        try:
            results[i] = nodes[i].stats()
        except (OSError, ValueError, IndexError):
            results[i] = None

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(nodes))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def machine_busy() -> float:
    """CPU seconds the whole machine has been busy (every process, every core), from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    busy = sum(fields[:8]) - idle  # user nice system idle iowait irq softirq steal
    return busy / os.sysconf("SC_CLK_TCK")


def slot_owners(connection: Any, cluster: str) -> dict[str, int]:
    """Slots by owner (C{-}: none) in the database."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT coalesce(owner, '-'), count(*) FROM uacregistrant_slots WHERE cluster = %s GROUP BY 1 ORDER BY 1", (cluster,))
        return {owner: int(n) for owner, n in cursor.fetchall()}


def registered(stats: list[dict[str, Any] | None]) -> int:
    return sum(s["states"].get("REGISTERED_STATE", 0) for s in stats if s)


def run_nodes(
    label: str, count: int, cluster: str | None, pg: Postgres, registrar: Registrar, accounts: int, work: str, timeout: float,
    extra: Sequence[str] = (), code: str = str(ROOT),
) -> dict[str, Any]:
    directory = tempfile.mkdtemp(prefix=f"run-{label.replace(' ', '')}-", dir=work)
    registrar.restart()
    names = [f"n{i + 1}" for i in range(count)] if cluster else ["alone"]
    nodes = [Node(directory, name, pg.url, cluster, extra, code) for name in names]
    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    reg_cpu0, pg_cpu0 = registrar.cpu(), pg.cpu()
    busy0 = machine_busy()
    stats: list[dict[str, Any] | None] = []
    wall = registrar_all = float("nan")
    done = False
    trace: list[tuple[float, int, int]] = []  # (seconds, registrar contacts, REGISTERED by reg_stats)
    slot_timeline: list[tuple[float, dict[str, int]]] = []
    watch = pg.connect() if cluster else None
    start = time.monotonic()
    try:
        for node in nodes:
            node.start()
        last_sweep = last_slots = start
        while time.monotonic() - start < timeout:
            time.sleep(POLL)
            now = time.monotonic() - start
            if not all(node.alive() for node in nodes):
                break
            for node in nodes:
                node.follow_log(now)
            if watch is not None and time.monotonic() - last_slots >= 0.5:
                # Who holds the slots, as the database says (a small query, every 0.5 s): kept when it changes.
                last_slots = time.monotonic()
                owners = slot_owners(watch, cluster)  # type: ignore[arg-type]
                if not slot_timeline or slot_timeline[-1][1] != owners:
                    slot_timeline.append((round(now, 1), owners))
            contacts = registrar.contacts()
            if contacts >= accounts and registrar_all != registrar_all:
                registrar_all = now
            if registrar_all == registrar_all and now - registrar_all > CONFIRM:
                break  # the registrar holds every contact, the nodes do not say so: the evidence is collected below
            # reg_stats walks every record of each node: sweep when the
            # registrar holds every contact (then every 0.25 s), else every 5 s.
            if contacts >= accounts or time.monotonic() - last_sweep >= 5:
                at = time.monotonic() - start
                stats = sweep(nodes)
                last_sweep = time.monotonic()
                total = registered(stats)
                trace.append((round(at, 2), contacts, total))
                if total >= accounts:
                    wall, done = at, True
                    break
                if contacts >= accounts:
                    time.sleep(0.15)
        cpu_raw = {node.name: node.cpu() for node in nodes if node.alive()}
        reg_cpu, pg_cpu = registrar.cpu() - reg_cpu0, pg.cpu() - pg_cpu0
        busy, busy_span = machine_busy() - busy0, time.monotonic() - start
        # The probes' cost, measured on each node now (3 sweeps).
        for node in nodes:
            if node.alive():
                before, probes = node.cpu(), node.probes
                for _ in range(3):
                    node.stats()
                node.probe_cost = (node.cpu() - before) / max(1, node.probes - probes)
                node.probes = probes
        result = summarise(label, count, cluster, nodes, accounts, stats, wall, registrar_all, cpu_raw, reg_cpu, pg_cpu, load)
        # The whole machine over the same span: ours plus the benchmark's polling plus anything else running.
        result["machine_busy_cores"] = round(busy / busy_span, 2)
        result.update(check(nodes, cluster, pg, registrar, accounts))
        result["trace"] = trace
        if cluster:
            result["slot_timeline"] = slot_timeline
    finally:
        if watch is not None:
            watch.close()
        for node in nodes:
            node.stop()
        if cluster:
            for table in ("uacregistrant_records", "uacregistrant_slots", "uacregistrant_members"):
                try:
                    pg.execute(f"DELETE FROM {table} WHERE cluster = %s", (cluster,))
                except Exception as e:  # noqa: BLE001 - reported, the next run has its own cluster name
                    print(f"cleaning {table} for {cluster}: {e}", file=sys.stderr)
            pg.execute("VACUUM ANALYZE")
    result["log_warnings"] = {}
    for node in nodes:
        kinds, lines = node.warnings()
        result["log_warnings"][node.name] = sum(kinds.values())
        if kinds:
            result.setdefault("warning_kinds", {})[node.name] = kinds
            print(f"{label}: {node.name}: {sum(kinds.values())} warning lines, first: " + " | ".join(lines), file=sys.stderr)
    ok = done and result.get("disjoint_complete") is True
    if ok and not KEEP:
        shutil.rmtree(directory, ignore_errors=True)
    else:
        print(f"{label}: registered {result.get('registered')}/{accounts}, done={done}; kept {directory}", file=sys.stderr)
        print(registrar.log_tail(), file=sys.stderr)
    return result


def summarise(
    label: str, count: int, cluster: str | None, nodes: list[Node], accounts: int, stats: list[dict[str, Any] | None],
    wall: float, registrar_all: float, cpu_raw: dict[str, float], reg_cpu: float, pg_cpu: float, load: str,
) -> dict[str, Any]:
    probe = sum(node.probes * node.probe_cost for node in nodes)
    cpu = sum(cpu_raw.values()) - probe
    done = registered(stats)
    # After each node's load: its CPU from the moment its table was in memory.
    after = [cpu_raw[n.name] - n.loaded[1] - n.probes * n.probe_cost for n in nodes if n.loaded and n.name in cpu_raw]
    after_load = sum(after) if len(after) == len(nodes) else float("nan")
    sip = [s.get("sip", {}) for s in stats if s]
    return {
        "config": label,
        "nodes": count,
        "cluster": cluster or "-",
        "accounts": accounts,
        "registered": done,
        "wall_s": round(wall, 2),
        "registrar_all_s": round(registrar_all, 2),
        "loaded_s": "/".join(f"{n.loaded[0]:.1f}" if n.loaded else "?" for n in nodes),
        "daemons_cpu_s": round(cpu, 2),
        "cpu_by_node_s": "/".join(f"{cpu_raw.get(n.name, float('nan')) - n.probes * n.probe_cost:.2f}" for n in nodes),
        "probe_cpu_s": round(probe, 2),
        "cpu_us_per_registration": round(1e6 * cpu / max(1, done), 1),
        "after_load_us_per_registration": round(1e6 * after_load / max(1, done), 1),
        "registrations_per_s": round(done / wall, 1) if wall == wall else 0,
        "registrar_cpu_s": round(reg_cpu, 2),
        "postgres_cpu_s": round(pg_cpu, 2),
        # Cores kept busy by the daemons, the registrar and PostgreSQL together (2 at most here).
        "cores_busy": round((cpu + reg_cpu + pg_cpu) / wall, 2) if wall == wall else "n/a",
        # CPU when each node's log said its table was in memory, summed (registrations already under way included).
        "load_cpu_s": round(sum(n.loaded[1] for n in nodes if n.loaded), 2),
        "retransmissions": sum(s.get("retransmissions", 0) for s in sip),
        "timeouts": sum(s.get("timeouts", 0) for s in sip),
        "send_errors": sum(s.get("send_errors", 0) for s in sip),
        "slots_taken": {n.name: [(round(t[0], 1), *t[1:]) for t in n.took] for n in nodes} if cluster else {},
        "loadavg_1m_before": load,
    }


def check(nodes: list[Node], cluster: str | None, pg: Postgres, registrar: Registrar, accounts: int) -> dict[str, Any]:
    """After the measurement: the invariants (disjoint and complete), the registrar's counts."""
    out: dict[str, Any] = {}
    try:
        out.update({f"registrar_{k}": v for k, v in registrar.statistics().items()})
    except (subprocess.SubprocessError, OSError) as e:
        out["registrar_error"] = str(e)
    stats = sweep(nodes)
    for node in nodes:
        node.probes -= 1  # not during the measurement
    if cluster:
        transports = [s.get("transport", {}) if s else {} for s in stats]
        out["slots_held"] = "/".join(str(t.get("slots_held")) for t in transports)
        out["records_held"] = "/".join(str(t.get("records_held")) for t in transports)
        out["records_held_sum"] = sum(t.get("records_held") or 0 for t in transports)
        out["slots_held_sum"] = sum(t.get("slots_held") or 0 for t in transports)
        out["fenced"] = "/".join(str(t.get("fenced")) for t in transports)
        try:
            members = nodes[0].command_json("reg_cluster json")["Nodes"]
            out["reg_cluster"] = [(m["name"], m["alive"], m["slots"], m["records"]) for m in members]
        except (OSError, RuntimeError, ValueError, KeyError) as e:
            out["reg_cluster"] = f"error: {e}"
        owners = pg.execute("SELECT coalesce(owner, '-'), count(*) FROM uacregistrant_slots WHERE cluster = %s GROUP BY 1 ORDER BY 1", (cluster,))
        out["db_slots"] = {owner: n for owner, n in owners}
        stored = dict(pg.execute("SELECT aor, call_id FROM uacregistrant_records WHERE cluster = %s", (cluster,)))
        out["db_records"] = len(stored)
        # CSeq numbers reserved per record (blocks of 1000): more than one block in a cold start means a record
        # was reserved again (its slot moved, or a second reservation while the first was in use).
        blocks = pg.execute("SELECT cseq_reserved, count(*) FROM uacregistrant_records WHERE cluster = %s GROUP BY 1 ORDER BY 1", (cluster,))
        out["db_cseq_reserved"] = {int(v): int(n) for v, n in blocks}
    else:
        stored = {}
    # reg_list json of each node: the records it holds (all of them alone).
    seen: dict[str, str] = {}
    overlap = not_registered = call_id_differs = 0
    kinds: dict[str, int] = {}
    examples: list[dict[str, Any]] = []
    per_node = []
    for node in nodes:
        try:
            records = node.command_json("reg_list json", timeout=300)["Records"]
        except (OSError, RuntimeError, ValueError, KeyError) as e:
            out["reg_list_error"] = f"{node.name}: {e}"
            per_node.append("?")
            continue
        per_node.append(str(len(records)))
        for record in records:
            aor = record["AOR"]
            if aor in seen:
                overlap += 1
            seen[aor] = node.name
            if record.get("state") != "REGISTERED_STATE":
                not_registered += 1
                why = re.sub(r"\d+(?:\.\d+)*", "N", f"{record.get('state')}: {record.get('last_reply')}: {record.get('last_error')}")
                kinds[why] = kinds.get(why, 0) + 1
                if len(examples) < 3:
                    examples.append({"node": node.name, **{k: record.get(k) for k in (
                        "AOR", "state", "last_reply", "last_error", "last_register_sent", "registration_t_out", "call_id")}})
            if cluster and stored.get(aor) != record.get("call_id"):
                call_id_differs += 1
    out.update({
        "listed": "/".join(per_node),
        "listed_distinct": len(seen),
        "listed_in_two_nodes": overlap,
        "listed_not_registered": not_registered,
        "call_id_not_stored": call_id_differs if cluster else "-",
    })
    if kinds:
        out["not_registered_kinds"] = kinds
        if cluster:
            for example in examples:
                rows = pg.execute("SELECT cseq_reserved FROM uacregistrant_records WHERE cluster = %s AND aor = %s", (cluster, example["AOR"]))
                example["db_cseq_reserved"] = [int(r[0]) for r in rows]
        out["not_registered_examples"] = examples
    out["disjoint_complete"] = (
        overlap == 0 and len(seen) == accounts and not_registered == 0
        and (not cluster or (out.get("records_held_sum") == accounts and out.get("slots_held_sum") == SLOTS and call_id_differs == 0))
    )
    return out


def run_kamailio_uac(registrar: Registrar, accounts: int, work: str, timeout: float) -> dict[str, Any]:
    """Kamailio's uac module (bench/kamailio_uac.py's configuration) registering the accounts at the same registrar."""
    registrar.restart()
    directory = tempfile.mkdtemp(prefix="run-kamuac-", dir=work)
    write_uacreg(directory, accounts, [registrar.port])
    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    reg_cpu0 = registrar.cpu()
    contacts = 0
    wall = float("nan")
    busy0 = machine_busy()
    start = time.monotonic()
    kamailio, delay = start_kamailio(directory, accounts)
    try:
        while time.monotonic() - start < timeout and kamailio.poll() is None:
            time.sleep(POLL)
            contacts = registrar.contacts()
            if contacts >= accounts:
                wall = time.monotonic() - start
                break
        cpu = group_cpu(kamailio.pid)
        reg_cpu = registrar.cpu() - reg_cpu0
        busy, busy_span = machine_busy() - busy0, time.monotonic() - start
        counts = registrar.statistics()
    finally:
        stop_group(kamailio)
    ok = contacts >= accounts
    if ok:
        shutil.rmtree(directory, ignore_errors=True)
    else:
        print(f"kamailio uac: {contacts}/{accounts} contacts; kept {directory}", file=sys.stderr)
    return {
        "config": "kamailio uac",
        "nodes": "-",
        "accounts": accounts,
        "registered": contacts,
        "wall_s": round(wall, 2),
        "daemons_cpu_s": round(cpu, 2),
        "cpu_us_per_registration": round(1e6 * cpu / max(1, contacts), 1),
        "registrations_per_s": round(contacts / wall, 1) if wall == wall else 0,
        "registrar_cpu_s": round(reg_cpu, 2),
        "cores_busy": round((cpu + reg_cpu) / wall, 2) if wall == wall else "n/a",
        "machine_busy_cores": round(busy / busy_span, 2),
        "random_delay_s": delay,
        **{f"registrar_{k}": v for k, v in counts.items()},
        "loadavg_1m_before": load,
    }


def sipp_registrars(directory: str, count: int = 2) -> tuple[list[subprocess.Popen[bytes]], list[int]]:
    """SIPp digest registrars (bench/sipp/registrar_401_200.xml) in the foreground, statistics every second."""
    processes, ports = [], []
    for _ in range(count):
        port = free_udp_port()
        processes.append(subprocess.Popen(
            ["sipp", "-sf", str(SCENARIO), "-i", "127.0.0.1", "-p", str(port), "-nostdin", "-max_recv_loops", "10000",
             "-buff_size", "8388608", "-trace_stat", "-stf", os.path.join(directory, f"stat{port}.csv"), "-fd", "1"],
            cwd=directory, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))
        ports.append(port)
    time.sleep(0.5)
    return processes, ports


def stop_processes(processes: Sequence[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def run_digest_pair(accounts: int, rate: float, work: str, timeout: float, code: str = str(ROOT)) -> list[dict[str, Any]]:
    """
    bench/kamailio_uac.py's side by side (its scenario, its Kamailio, the
    daemon as its cold_start_sipp.py starts it), with the SIPp registrars
    stopped by process id: uacregistrant alone on SQLite, then Kamailio uac.
    """
    from common import completed

    rows: list[dict[str, Any]] = []
    # uacregistrant
    directory = tempfile.mkdtemp(prefix="run-digest-ours-", dir=work)
    sipps, ports = sipp_registrars(directory)
    local = free_udp_port()
    daemon = None
    try:
        write_accounts(os.path.join(directory, "r.db"), accounts, [f"sip:127.0.0.1:{p}" for p in ports], local)
        control = f"unix:{directory}/ctl"
        start = time.monotonic()
        # common.start_daemon's command, with the daemon's code from C{code}.
        precompile(code)
        daemon = subprocess.Popen(
            [*TWISTD, "-n", "--pidfile=", f"--logfile={directory}/daemon.log", "uacregistrant", "--db-url", f"sqlite:{directory}/r.db",
             "--listen", f"udp:127.0.0.1:{local}", "--control", control, "--no-unregister-on-shutdown",
             "--hash-size", "0", "--timer-interval", "1800", "--send-rate", f"{rate:g}"],
            cwd=directory, env={**os.environ, "PYTHONPATH": code},
        )
        done, probes, wall = 0, 0, float("nan")
        while time.monotonic() - start < timeout and daemon.poll() is None:
            time.sleep(max(0.1, accounts / 100000))
            try:
                status, body = request(control, "reg_stats json", timeout=30)
            except OSError:
                continue
            probes += 1
            done = json.loads(body[0])["states"].get("REGISTERED_STATE", 0)
            if done >= accounts:
                wall = time.monotonic() - start
                break
        cpu = cpu_seconds(daemon.pid)
        before = cpu_seconds(daemon.pid)
        for _ in range(3):
            request(control, "reg_stats json", timeout=30)
        cpu -= probes * (cpu_seconds(daemon.pid) - before) / 3
    finally:
        if daemon is not None:
            daemon.terminate()
            daemon.wait(30)
        stop_processes(sipps)
    rows.append({"system": "uacregistrant alone (SQLite)", "accounts": accounts, "registered": done, "wall_s": round(wall, 2),
                 "cpu_s": round(cpu, 2), "cpu_us_per_registration": round(1e6 * cpu / max(1, done), 1)})
    if done >= accounts:
        shutil.rmtree(directory, ignore_errors=True)
    # Kamailio uac
    directory = tempfile.mkdtemp(prefix="run-digest-kam-", dir=work)
    sipps, ports = sipp_registrars(directory)
    write_uacreg(directory, accounts, ports)
    start = time.monotonic()
    kamailio, delay = start_kamailio(directory, accounts)
    active, wall = 0, float("nan")
    try:
        while time.monotonic() - start < timeout and kamailio.poll() is None:
            time.sleep(max(0.1, accounts / 100000))
            active = completed(directory, ports)
            if active >= accounts:
                wall = time.monotonic() - start
                break
        cpu = group_cpu(kamailio.pid)
    finally:
        stop_group(kamailio)
        stop_processes(sipps)
    rows.append({"system": f"kamailio uac (random delay {delay} s)", "accounts": accounts, "registered": active,
                 "wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "cpu_us_per_registration": round(1e6 * cpu / max(1, active), 1)})
    if active >= accounts:
        shutil.rmtree(directory, ignore_errors=True)
    return rows


def ratio(a: Any, b: Any) -> Any:
    try:
        a, b = float(a), float(b)
    except (TypeError, ValueError):
        return "n/a"
    if not (a == a and b == b) or not b:
        return "n/a"
    return round(a / b, 2)


def code_state() -> str:
    """The commit, and whether the working tree's daemon code differs from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "uacregistrant"], cwd=ROOT, capture_output=True, text=True,
                               timeout=10).stdout.split("\n")
        dirty = [line[3:] for line in dirty if line.strip()]
    except (OSError, subprocess.SubprocessError):
        return "?"
    return head + (f" + uncommitted changes to {', '.join(dirty)}" if dirty else "")


def snapshot(revision: str, work: str) -> tuple[str, str]:
    """
    The daemon's code at C{revision} (C{git archive} into C{work}: the
    repository is not touched), so that the nodes run one commit even while
    the working tree changes; returns the directory and the commit.
    """
    commit = subprocess.run(["git", "rev-parse", "--short", f"{revision}^{{commit}}"], cwd=ROOT, capture_output=True, text=True,
                            timeout=10, check=True).stdout.strip()
    directory = os.path.join(work, f"code-{commit}")
    os.mkdir(directory)
    archive = subprocess.run(["git", "archive", "--format=tar", commit, "uacregistrant", "twisted"], cwd=ROOT, capture_output=True,
                             timeout=60, check=True).stdout
    subprocess.run(["tar", "-x", "-C", directory], input=archive, timeout=60, check=True)
    return directory, commit


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--accounts", type=int, default=100000)
    parser.add_argument("--rounds", type=int, default=1, help="rounds; the order alternates (alone, 1, 2, 4, kamailio; then the reverse)")
    parser.add_argument("--nodes", type=int, action="append", help="cluster sizes (repeatable) [default: 1, 2, 4]")
    parser.add_argument("--no-alone", action="store_true", help="leave out the daemon without --cluster")
    parser.add_argument("--no-kamailio", action="store_true", help="leave out Kamailio uac at the same registrar")
    parser.add_argument("--no-digest-pair", action="store_true", help="leave out bench/kamailio_uac.py's SIPp digest side by side")
    parser.add_argument("--digest-rate", type=float, default=20000, help="the daemon's --send-rate in the digest pair")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per run at most")
    parser.add_argument("--daemon-option", action="append", default=[], metavar="OPTION",
                        help="one more option for every daemon (repeatable; e.g. --daemon-option=--no-db-notify)")
    parser.add_argument("--code", default="HEAD", metavar="REVISION",
                        help="run the daemons from this commit (git archive, the repository untouched), or '.' for the working tree "
                             "[default: %(default)s]")
    parser.add_argument("--tree", metavar="PATH",
                        help="run the daemons from this directory as it is (e.g. a worktree compiled in place); overrides --code")
    parser.add_argument("--keep", action="store_true", help="keep every run's directory (node logs) and print where")
    options = parser.parse_args()
    global KEEP
    KEEP = options.keep
    sizes = options.nodes or [1, 2, 4]
    configs: list[tuple[str, int]] = ([] if options.no_alone else [("alone", 0)]) + [(f"{n} node" + ("s" if n > 1 else ""), n) for n in sizes]
    if not options.no_kamailio:
        configs.append(("kamailio uac", -1))
    work = tempfile.mkdtemp(prefix="uacreg-cluster-")
    if options.tree:
        code = os.path.abspath(options.tree)
        compiled = bool(glob.glob(os.path.join(code, "uacregistrant", "core", "*.so")))
        state = f"tree {code} ({'compiled' if compiled else 'pure'})"
    elif options.code == ".":
        code, state = str(ROOT), f"working tree at {code_state()}"
    else:
        code, commit = snapshot(options.code, work)
        state = f"{commit} (git archive)"
    print(f"python {sys.executable} {sys.version.split()[0]}; daemon code {state}", file=sys.stderr, flush=True)
    results: list[dict[str, Any]] = []
    pg = Postgres()
    registrar = Registrar(work)
    stamp = time.strftime("%H%M%S")
    pairs: list[dict[str, Any]] = []
    try:
        pg.start()
        pg.execute(schema_sql("postgres"))
        pg.execute(
            "INSERT INTO registrant (registrar, aor, username, password, binding_URI, expiry) "
            "SELECT %s, 'sip:u' || i || '@bench.invalid', 'u' || i, 'bench-pw', 'sip:u' || i || '@127.0.0.1:5999', 3600 "
            "FROM generate_series(0, %s - 1) AS i",
            (f"sip:127.0.0.1:{registrar.port}", options.accounts),
        )
        pg.execute("VACUUM ANALYZE")
        for round_ in range(max(1, options.rounds)):
            order = configs if round_ % 2 == 0 else configs[::-1]
            for label, count in order:
                if count < 0:
                    row = run_kamailio_uac(registrar, options.accounts, work, options.timeout)
                else:
                    cluster = f"bench-{stamp}-r{round_ + 1}-{count}" if count else None
                    row = run_nodes(label, count, cluster, pg, registrar, options.accounts, work, options.timeout, options.daemon_option, code)
                row = {"round": round_ + 1, **row}
                results.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
        registrar.stop()
        if not options.no_digest_pair:
            pairs = run_digest_pair(options.accounts, options.digest_rate, work, options.timeout, code)
            for row in pairs:
                print(json.dumps(row), file=sys.stderr, flush=True)
    finally:
        registrar.stop()
        pg.destroy()
    columns = ["round", "config", "registered", "wall_s", "registrar_all_s", "loaded_s", "daemons_cpu_s", "cpu_by_node_s", "load_cpu_s",
               "cpu_us_per_registration", "after_load_us_per_registration", "registrations_per_s", "registrar_cpu_s",
               "postgres_cpu_s", "cores_busy", "machine_busy_cores", "retransmissions", "timeouts", "loadavg_1m_before"]
    report([{c: row.get(c, "") for c in columns} for row in results])
    checks = ["round", "config", "slots_held", "records_held", "records_held_sum", "db_records", "listed", "listed_distinct",
              "listed_in_two_nodes", "listed_not_registered", "call_id_not_stored", "registrar_contacts", "registrar_accepted",
              "registrar_rejected", "log_warnings", "disjoint_complete"]
    report([{c: row.get(c, "") for c in checks} for row in results])
    ratios = []
    for round_ in sorted({r["round"] for r in results}):
        rows = {r["config"]: r for r in results if r["round"] == round_}
        base = rows.get("1 node")
        for label, row in rows.items():
            if base is None or label == "1 node":
                continue
            ratios.append({
                "round": round_,
                "ratio": f"{label} / 1 node",
                "wall": ratio(row["wall_s"], base["wall_s"]),
                "cpu_per_registration": ratio(row["cpu_us_per_registration"], base["cpu_us_per_registration"]),
                "after_load_cpu": ratio(row.get("after_load_us_per_registration"), base["after_load_us_per_registration"]),
            })
    if ratios:
        report(ratios)
    if pairs:
        report(pairs)
        print(json.dumps({"digest_pair_wall_ratio": ratio(pairs[0]["wall_s"], pairs[1]["wall_s"]),
                          "digest_pair_cpu_ratio": ratio(pairs[0]["cpu_s"], pairs[1]["cpu_s"])}))
    print(json.dumps({"python": sys.executable, "version": sys.version.split()[0], "code": state, "accounts": options.accounts,
                      "send_rate": SEND_RATE, "lease": LEASE, "daemon_options": options.daemon_option}))
    ok = all(r.get("disjoint_complete", True) and r.get("registered") == r.get("accounts") for r in results)
    if ok and not KEEP:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"kept {work}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
