"""
A Kamailio registrar for the tests: registrar + usrloc + auth_db on a
db_text subscriber table, on a free loopback port, from a generated
config; its RPC (binrpc over a UNIX socket) answers ul.dump / ul.lookup.
"""

from __future__ import annotations

import glob
import json
import os
import socket
import subprocess
import tempfile
from typing import Any

from .helpers import PATIENCE, ServerProcess, require_binary

MODULE_DIRS = glob.glob("/usr/lib/*/kamailio/modules") + ["/usr/lib/kamailio/modules"]

CONFIG = """#!KAMAILIO
debug=2
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

request_route {{
    if (!mf_process_maxfwd_header("10")) {{
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


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class KamailioRegistrar(ServerProcess):
    """One Kamailio instance; C{subscribers} is C{{(user, domain): password}}."""

    name = "kamailio"

    def __init__(
        self,
        subscribers: dict[tuple[str, str], str],
        algorithm: str = "MD5",
        min_expires: int = 60,
        max_expires: int = 3600,
    ) -> None:
        self.kamailio = require_binary("kamailio", "kamailio")
        self.kamcmd = require_binary("kamcmd", "kamailio")
        modules = next((d for d in MODULE_DIRS if os.path.exists(os.path.join(d, "auth_db.so"))), None)
        if modules is None:
            raise AssertionError("kamailio modules (auth_db.so) not found")
        super().__init__(tempfile.mkdtemp(prefix="uacreg-kam-"))
        os.mkdir(os.path.join(self.directory, "db"))
        with open(os.path.join(self.directory, "db", "subscriber"), "w") as f:
            f.write("id(int,auto) username(string) domain(string) password(string) ha1(string,null) ha1b(string,null)\n")
            for i, ((user, domain), password) in enumerate(subscribers.items(), 1):
                f.write(f"{i}:{user}:{domain}:{password}::\n")
        self.port = _free_udp_port()
        self.config = os.path.join(self.directory, "kamailio.cfg")
        with open(self.config, "w") as f:
            f.write(CONFIG.format(port=self.port, modules=modules, directory=self.directory, algorithm=algorithm,
                                  min_expires=min_expires, max_expires=max_expires))

    @property
    def uri(self) -> str:
        return f"sip:127.0.0.1:{self.port}"

    def start(self) -> None:
        self.launch(
            [self.kamailio, "-f", self.config, "-DD", "-E", "-P", os.path.join(self.directory, "kamailio.pid"),
             "-Y", self.directory, "-m", "64", "-M", "8"],
            lambda: self.rpc("core.version"),
        )

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


def dumps(value: Any) -> str:
    return json.dumps(value, indent=1)
