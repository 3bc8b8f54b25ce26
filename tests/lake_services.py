"""Real services behind a `lake` store, for tests/test_lake.py and bench/ingest.py: a PostgreSQL
server for the catalog, on a free port in a temporary folder; an S3-compatible server (moto's,
from `moto[server]` on PyPI) for the data; and a data folder whose store is a lake.

PostgreSQL is the Debian package (`make test` installs it where missing); its binaries are on
PATH or under /usr/lib/postgresql/<version>/bin. It refuses to run as root, so as root it runs as
the `postgres` user the package creates.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from conftest import free_port


def _pg_bin(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if found is None:
        raise RuntimeError(f"PostgreSQL's {name} is not installed (apt-get install postgresql)")
    return found


class Postgres:
    """A PostgreSQL server of our own: start(), database(name) (a `[store] catalog`), stop(), start() again."""

    def __init__(self):
        self.folder = Path(tempfile.mkdtemp(prefix="flywheel-pg-"))
        self.port = free_port()
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_user:
            shutil.chown(self.folder, "postgres")
        self._run(_pg_bin("initdb"), "-D", str(self.folder / "data"), "-U", "postgres", "--auth=trust", "-E", "UTF8")

    def _run(self, *cmd: str) -> None:
        subprocess.run([*self.as_user, *cmd], check=True, capture_output=True)

    def start(self) -> Postgres:
        # Sockets in our folder: /var/run/postgresql may not exist or belong to us.
        self._run(_pg_bin("pg_ctl"), "-D", str(self.folder / "data"), "-l", str(self.folder / "log"), "-w", "-o",
                  f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=on", "start")
        return self

    def database(self, name: str) -> str:
        """A new database on this server; its `[store] catalog` setting."""
        self._run(_pg_bin("psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-q", "-c",
                  f"CREATE DATABASE {name}")
        return f"postgres:dbname={name} host=127.0.0.1 port={self.port} user=postgres"

    def stop(self) -> None:
        self._run(_pg_bin("pg_ctl"), "-D", str(self.folder / "data"), "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass  # (stopped already)
        shutil.rmtree(self.folder, ignore_errors=True)


class S3Server:
    """moto's S3-compatible server on 127.0.0.1 (`moto_server` on PATH, else `python -m moto.server`)."""

    def __init__(self, log: Path):
        self.port = free_port()
        self.endpoint = f"127.0.0.1:{self.port}"
        cmd = [shutil.which("moto_server")] if shutil.which("moto_server") else [sys.executable, "-m", "moto.server"]
        self.proc = subprocess.Popen([*cmd, "-H", "127.0.0.1", "-p", str(self.port)], stdout=log.open("ab"),
                                     stderr=subprocess.STDOUT)  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"http://{self.endpoint}/", timeout=1)
                return
            except httpx.TransportError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start: {log.read_text()[-2000:]}") from None
                time.sleep(0.2)

    def bucket(self, name: str) -> str:
        httpx.put(f"http://{self.endpoint}/{name}", timeout=10).raise_for_status()
        return f"s3://{name}/"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()


def lake_home(folder: Path, catalog: str = "sqlite:lake/catalog.sqlite", data_path: str = "lake/data/",
              extra: str = "") -> Path:
    """A data folder whose store is a lake (relative paths are inside the folder); `extra`: more
    `[store]` lines."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "flywheel.toml").write_text(f'[store]\nkind = "lake"\ncatalog = "{catalog}"\n'
                                          f'data_path = "{data_path}"\n{extra}')  # fmt: skip
    return folder
