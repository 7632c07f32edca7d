"""
A Kamailio registrar for the tests: registrar + usrloc + auth_db on a
db_text subscriber table, on free loopback ports, from a generated
config; its RPC (binrpc over a UNIX socket) answers ul.dump / ul.lookup,
core.tcp_list and tls.list.

UDP always; TCP and TLS listeners on request (C{tcp=True}, C{tls=True}).
TLS uses a test CA of its own (L{KamailioRegistrar.ca}, written to
L{KamailioRegistrar.ca_file} for the daemon's C{--tls-ca}) and a server
certificate with the names a test chooses; C{require_client_cert} makes
Kamailio ask for, verify (against that CA) and require a client
certificate, which C{ca.issue(..., client=True)} makes. A Kamailio on TLS
runs with the at-fork fix of L{tests.integration.forklocals} preloaded.
"""

from __future__ import annotations

import glob
import json
import os
import re
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Iterable

from twisted.trial.unittest import SkipTest

from tests.certs import Authority, make_ca

from .forklocals import is_preloaded, preload_environment
from .helpers import PATIENCE, ServerProcess, require_binary

MODULE_DIRS = glob.glob("/usr/lib/*/kamailio/modules") + ["/usr/lib/kamailio/modules"]

CONFIG = """#!KAMAILIO
debug=2
log_stderror=yes
fork=yes
children=2
auto_aliases=no
{listen}mpath="{modules}"

{tls_module}loadmodule "kex.so"
loadmodule "corex.so"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "textops.so"
loadmodule "xlog.so"
loadmodule "ctl.so"
loadmodule "db_text.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "auth.so"
loadmodule "auth_db.so"

modparam("ctl", "binrpc", "unix:{directory}/kamailio.ctl")
modparam("usrloc", "db_mode", 0)
modparam("usrloc", "use_domain", 1)
modparam("registrar", "min_expires", {min_expires})
modparam("registrar", "min_expires_mode", 1)
modparam("registrar", "max_expires", {max_expires})
modparam("auth", "algorithm", "{algorithm}")
modparam("auth_db", "db_url", "text://{directory}/db")
modparam("auth_db", "calculate_ha1", 1)
modparam("auth_db", "password_column", "password")
modparam("auth_db", "version_table", 0)
modparam("auth_db", "use_domain", 1)
{tls_params}
request_route {{
    xlog("L_NOTICE", "request $rm $ru to $tu from $si:$sp over $pr\\n");
{tls_log}    if (!mf_process_maxfwd_header("10")) {{
        sl_send_reply("483", "Too Many Hops");
        exit;
    }}
    if (!is_method("REGISTER")) {{
        sl_send_reply("405", "Method Not Allowed");
        exit;
    }}
    if (!www_authorize("$td", "subscriber")) {{
        www_challenge("$td", "1");
        exit;
    }}
    consume_credentials();
    if (!save("location")) {{
        sl_reply_error();
    }}
    exit;
}}
"""

STREAM_CONFIG = """enable_tls={enable_tls}
tcp_children=2
"""

TLS_MODULE = """# tls.so first: before any module that uses libssl (tls README)
loadmodule "tls.so"
"""

TLS_PARAMS = """modparam("tls", "config", "{directory}/tls.cfg")
"""

# $tls_peer_* exist only with tls.so loaded.
TLS_LOG = """    if ($pr == "tls") {
        xlog("L_NOTICE", "tls peer cn [$tls_peer_subject_cn] issuer [$tls_peer_issuer_cn] serial [$tls_peer_serial] verified [$tls_peer_verified]\\n");
    }
"""

TLS_CFG = """[server:default]
method = TLSv1.2+
certificate = {certificate}
private_key = {private_key}
ca_list = {ca_list}
verify_certificate = {verify}
require_certificate = {verify}

[client:default]
verify_certificate = no
require_certificate = no
"""


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _free_udp_port() -> int:
    return _free_port(socket.SOCK_DGRAM)


def _free_tcp_port() -> int:
    return _free_port(socket.SOCK_STREAM)


def _records(text: str, first: str) -> list[dict[str, str]]:
    """
    The C{name: value} lines of kamcmd output, one dict per record, a new
    record at each line named C{first}; the indentation is ignored.
    """
    found: list[dict[str, str]] = []
    current: dict[str, str] | None = None
    for line in text.splitlines():
        name, sep, value = line.strip().partition(":")
        if not sep:
            continue
        name, value = name.strip(), value.strip()
        if name == first:
            current = {}
            found.append(current)
        if current is not None:
            current.setdefault(name, value)
    return found


class KamailioRegistrar(ServerProcess):
    """
    One Kamailio instance; C{subscribers} is C{{(user, domain): password}}.

    @param tcp: listen on TCP too (L{tcp_port}).
    @param tls: listen on TLS too (L{tls_port}), with a server certificate
        for C{tls_dns} and C{tls_ips}.
    @param require_client_cert: TLS clients must present a certificate
        signed by L{ca}.
    """

    name = "kamailio"

    def __init__(
        self,
        subscribers: dict[tuple[str, str], str],
        algorithm: str = "MD5",
        min_expires: int = 60,
        max_expires: int = 3600,
        tcp: bool = False,
        tls: bool = False,
        tls_dns: Iterable[str] = ("registrar.test",),
        tls_ips: Iterable[str] = ("127.0.0.1",),
        require_client_cert: bool = False,
    ) -> None:
        self.kamailio = require_binary("kamailio", "kamailio")
        self.kamcmd = require_binary("kamcmd", "kamailio")
        modules = next((d for d in MODULE_DIRS if os.path.exists(os.path.join(d, "auth_db.so"))), None)
        if modules is None:
            raise AssertionError("kamailio modules (auth_db.so) not found")
        if tls and not os.path.exists(os.path.join(modules, "tls.so")):
            message = f"{modules}/tls.so not found: install the Debian package kamailio-tls-modules"
            if os.environ.get("UACREG_REQUIRE_PEERS") == "1":
                raise AssertionError(message + " (UACREG_REQUIRE_PEERS=1)")
            raise SkipTest(message)
        #: Kamailio's environment: with TLS, the at-fork fix preloaded (L{preload_environment}).
        self.environment: dict[str, str] | None = None
        if tls:
            try:
                self.environment = preload_environment()
            except LookupError as e:
                if os.environ.get("UACREG_REQUIRE_PEERS") == "1":
                    raise AssertionError(f"{e} (UACREG_REQUIRE_PEERS=1)") from None
                raise SkipTest(f"{e}; without it Kamailio's TLS tests crash at random") from None
            except subprocess.CalledProcessError as e:
                raise AssertionError(f"building the at-fork fix failed: {e.stderr.decode(errors='replace')}") from None
        super().__init__(tempfile.mkdtemp(prefix="uacreg-kam-"))
        os.mkdir(os.path.join(self.directory, "db"))
        with open(os.path.join(self.directory, "db", "subscriber"), "w") as f:
            f.write("id(int,auto) username(string) domain(string) password(string) ha1(string,null) ha1b(string,null)\n")
            for i, ((user, domain), password) in enumerate(subscribers.items(), 1):
                f.write(f"{i}:{user}:{domain}:{password}::\n")
        self.port = _free_udp_port()
        self.tcp_port = _free_tcp_port() if tcp else None
        self.tls_port = _free_tcp_port() if tls else None
        while tls and self.tls_port == self.tcp_port:
            self.tls_port = _free_tcp_port()
        listen = f"listen=udp:127.0.0.1:{self.port}\n"
        if tcp:
            listen += f"listen=tcp:127.0.0.1:{self.tcp_port}\n"
        if tls:
            listen += f"listen=tls:127.0.0.1:{self.tls_port}\n"
        stream = STREAM_CONFIG.format(enable_tls="yes" if tls else "no") if tcp or tls else ""
        #: The CA that signed the server certificate, and that Kamailio trusts for client certificates.
        self.ca: Authority | None = None
        self.ca_file: Path | None = None
        if tls:
            directory = Path(self.directory)
            self.ca = make_ca("Kamailio test CA")
            self.ca_file = self.ca.write(directory / "ca.pem")
            certificate, key = self.ca.issue(directory / "server", dns=list(tls_dns), ips=list(tls_ips), common_name="kamailio test registrar")
            with open(directory / "tls.cfg", "w") as f:
                f.write(TLS_CFG.format(certificate=certificate, private_key=key, ca_list=self.ca_file,
                                       verify="yes" if require_client_cert else "no"))
        self.config = os.path.join(self.directory, "kamailio.cfg")
        with open(self.config, "w") as f:
            f.write(CONFIG.format(
                listen=stream + listen, modules=modules, directory=self.directory, algorithm=algorithm,
                min_expires=min_expires, max_expires=max_expires,
                tls_module=TLS_MODULE if tls else "",
                tls_params=TLS_PARAMS.format(directory=self.directory) if tls else "",
                # Only where a client certificate is required: without one tls.so logs an ERROR per request.
                tls_log=TLS_LOG if tls and require_client_cert else "",
            ))

    @property
    def uri(self) -> str:
        """The UDP listener."""
        return f"sip:127.0.0.1:{self.port}"

    @property
    def tcp_uri(self) -> str:
        assert self.tcp_port is not None, "no TCP listener: KamailioRegistrar(tcp=True)"
        return f"sip:127.0.0.1:{self.tcp_port};transport=tcp"

    @property
    def tls_uri(self) -> str:
        assert self.tls_port is not None, "no TLS listener: KamailioRegistrar(tls=True)"
        return f"sip:127.0.0.1:{self.tls_port};transport=tls"

    def socket(self, transport: str) -> str:
        """How ul.dump names the listen socket of C{transport} (C{"udp"}, C{"tcp"}, C{"tls"})."""
        port = {"udp": self.port, "tcp": self.tcp_port, "tls": self.tls_port}[transport]
        assert port is not None, f"no {transport} listener"
        return f"{transport}:127.0.0.1:{port}"

    def start(self) -> None:
        self.launch(
            [self.kamailio, "-f", self.config, "-DD", "-E", "-P", os.path.join(self.directory, "kamailio.pid"),
             "-Y", self.directory, "-m", "64", "-M", "8"],
            lambda: self.rpc("core.version"),
            env=self.environment,
        )
        if self.environment is not None and self.process is not None:
            library = self.environment["LD_PRELOAD"].split()[0]
            if not is_preloaded(self.process.pid, library):
                raise AssertionError(f"kamailio did not load {library} (LD_PRELOAD refused, e.g. a noexec /tmp): {self.log()[-2000:]}")

    def assert_not_crashed(self) -> None:
        """Fail if a Kamailio process died of a signal or its memory manager caught corruption (the registrar's fault, not the daemon's)."""
        faults = [line for line in self.log().splitlines() if "exited by a signal" in line or "qm_free(): BUG" in line]
        if faults:
            raise AssertionError("kamailio crashed or corrupted its memory: " + " | ".join(faults[:3]))

    def restart(self) -> None:
        """Stop and start again: same ports and configuration, an empty location table, no connections."""
        self.stop()
        self.start()

    def rpc(self, *command: str) -> str:
        result = subprocess.run(
            [self.kamcmd, "-s", f"unix:{self.directory}/kamailio.ctl", *command],
            capture_output=True, timeout=PATIENCE / 2,
        )
        if result.returncode != 0:
            raise AssertionError(f"kamcmd {' '.join(command)} failed: {result.stderr.decode()} {result.stdout.decode()}")
        return result.stdout.decode()

    def bindings(self, aor: str) -> list[dict[str, Any]]:
        """Contacts Kamailio holds for an AOR (ul.lookup), [] if none."""
        key = aor[4:] if aor.startswith("sip:") else aor  # usrloc keys are user@domain
        result = subprocess.run(
            [self.kamcmd, "-s", f"unix:{self.directory}/kamailio.ctl", "ul.lookup", "location", key],
            capture_output=True, timeout=PATIENCE / 2,
        )
        text = result.stdout.decode() + result.stderr.decode()
        if result.returncode != 0 or "AOR not found" in text or "not found" in text.lower():
            return []
        contacts: list[dict[str, Any]] = []
        current: dict[str, Any] | None = None
        for line in text.splitlines():
            line = line.strip()
            name, _, value = line.partition(":")
            name, value = name.strip(), value.strip()
            if name == "Address":
                current = {"Address": value}
                contacts.append(current)
            elif current is not None and name in ("Expires", "Call-ID", "CSeq", "User-Agent", "Received", "Q"):
                current[name] = value
        return contacts

    def contacts(self) -> dict[str, list[dict[str, str]]]:
        """
        Every contact in the location table (ul.dump), by AOR (C{user@domain}):
        each a dict of its fields as kamcmd prints them (C{Address},
        C{Socket} like C{tcp:127.0.0.1:5060}, C{Tcpconn-Id} (C{-1}/C{0} on
        UDP), C{Call-ID}, C{CSeq}, C{Expires}, ...).
        """
        text = self.rpc("ul.dump")
        found: dict[str, list[dict[str, str]]] = {}
        aor: str | None = None
        for line in text.splitlines():
            name, sep, value = line.strip().partition(":")
            if not sep:
                continue
            name, value = name.strip(), value.strip()
            if value == "{":
                if name != "Contact" and name != "Contacts":
                    aor = None  # the next Info block, or the Stats at the end
                continue
            if name == "AoR":
                aor = value
                found.setdefault(aor, [])
            elif name == "Address" and aor is not None:
                found[aor].append({"Address": value})
            elif aor is not None and found[aor]:
                found[aor][-1].setdefault(name, value)
        return found

    def requests(self, method: str = "REGISTER") -> list[tuple[str, str, str]]:
        """
        The C{method} requests Kamailio received, as its script logged them:
        C{(To URI, source IP:port, transport)} in order of arrival.
        """
        pattern = rf"request {re.escape(method)} \S+ to (\S+) from (\S+) over (\w+)$"
        return [(m[1], m[2], m[3]) for m in re.finditer(pattern, self.log(), re.MULTILINE)]

    def tcp_connections(self) -> list[dict[str, str]]:
        """Kamailio's TCP and TLS connections (core.tcp_list): C{type} (TCP/TLS), C{state}, C{src_ip}, ..."""
        return _records(self.rpc("core.tcp_list"), "id")

    def connection_count(self, kind: str) -> int:
        """Open connections of C{kind} (C{"tcp"} or C{"tls"}) in core.tcp_list."""
        return sum(1 for c in self.tcp_connections() if c.get("type", "").lower() == kind.lower())

    def tls_connections(self) -> list[dict[str, str]]:
        """Kamailio's TLS connections (tls.list): C{cipher}, C{state}, ..."""
        return _records(self.rpc("tls.list"), "id")


def dumps(value: Any) -> str:
    return json.dumps(value, indent=1)
