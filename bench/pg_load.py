"""
Loading N rows from PostgreSQL: time to load and the longest reactor stall
while loading (a 10 ms lag probe).  Starts its own PostgreSQL (as the tests
do) on loopback; nothing is registered (send rate 1/s, registrar on the
discard port of 127.0.0.1).

    python bench/pg_load.py --rows 100000
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from twisted.internet import reactor  # noqa: E402
from twisted.internet.task import LoopingCall  # noqa: E402
from twisted.names.resolve import ResolverChain  # noqa: E402

from tests.integration.postgres import PostgresServer  # noqa: E402
from uacregistrant.app.service import RegistrantService, open_store  # noqa: E402
from uacregistrant.app.settings import build_settings  # noqa: E402
from uacregistrant.store import schema_sql  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100000)
    options = parser.parse_args()
    server = PostgresServer()
    try:
        server.start()
        server.execute(schema_sql("postgres"))
        connection = server.connect()
        with connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO registrant (registrar, aor, username, password, binding_URI, expiry) "
                "SELECT 'sip:127.0.0.1:9', 'sip:u' || i || '@bench.invalid', 'u' || i, 'pw', "
                "'sip:u' || i || '@127.0.0.1:5999', 3600 FROM generate_series(1, %s) AS i",
                (options.rows,),
            )
        connection.close()
        settings = build_settings({
            "db_url": server.url, "listen": ["udp:127.0.0.1:0"], "control": ["unix:/tmp/uacreg-bench.ctl"],
            "hash_size": 4, "timer_interval": 1800, "send_rate": 1,
        })
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        service = RegistrantService(settings, open_store(settings, reactor), reactor, resolver=ResolverChain([]))
        lag = {"max": 0.0, "last": time.monotonic()}

        def probe() -> None:
            now = time.monotonic()
            lag["max"] = max(lag["max"], now - lag["last"] - 0.01)
            lag["last"] = now

        result: dict[str, float] = {}
        start = time.monotonic()

        def loaded(counts: dict[str, int]) -> None:
            result.update(seconds=time.monotonic() - start, added=counts["added"])
            reactor.callLater(0.1, reactor.stop)

        service.privilegedStartService()
        LoopingCall(probe).start(0.01)

        def started(_: object) -> None:
            nonlocal start
            start = time.monotonic()
            service.loader.reload(initial=True).addCallback(loaded)

        service.store.start().addCallback(started)
        reactor.callLater(300, reactor.stop)
        reactor.run()
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({
            "rows": options.rows,
            "loaded": int(result.get("added", 0)),
            "load_s": round(result.get("seconds", -1), 2),
            "max_reactor_stall_ms": round(lag["max"] * 1000, 1),
            "rss_growth_mib": round((rss - rss0) / 1024, 1),
        }))
        return 0
    finally:
        server.destroy()


if __name__ == "__main__":
    sys.exit(main())
