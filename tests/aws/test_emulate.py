"""Emulated AWS state kept across restarts (`--data-dir`)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from fnstack_dev.emulate import EmulatedAws, client
from fnstack_dev.template import load_template
from tests.aws.conftest import TEMPLATE


def test_items_and_objects_survive_a_restart(tmp_path: Path) -> None:
    template = load_template(TEMPLATE)
    with EmulatedAws(template, data_dir=tmp_path) as aws:
        aws.client("dynamodb").put_item(TableName=aws.refs["Table"], Item={
            "pk": {"S": "ns#a"}, "sk": {"S": "1"}, "blob": {"B": b"\x00\xff"}})
        aws.client("s3").put_object(Bucket=aws.refs["Bucket"], Key="files/a b/c.txt",
                                    Body=b"kept")
    with EmulatedAws(template, data_dir=tmp_path) as aws:
        items = aws.client("dynamodb").scan(TableName=aws.refs["Table"])["Items"]
        assert items == [{"pk": {"S": "ns#a"}, "sk": {"S": "1"}, "blob": {"B": b"\x00\xff"}}]
        body = aws.client("s3").get_object(Bucket=aws.refs["Bucket"], Key="files/a b/c.txt")
        assert body["Body"].read() == b"kept"
    with EmulatedAws(template) as aws:  # no data dir: a fresh start
        assert aws.client("dynamodb").scan(TableName=aws.refs["Table"])["Items"] == []


def test_the_gateway_saves_on_sigterm(tmp_path: Path) -> None:
    data = tmp_path / "data"
    log = tmp_path / "gw.log"
    port = 3000 + int(time.time()) % 1000
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fnstack.cli", "gateway", "--emulate-aws", "--from-source",
             "--template", str(TEMPLATE), "--data-dir", str(data), "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        endpoint = None
        while time.monotonic() < deadline and endpoint is None:
            text = log.read_text()
            if "emulated AWS at " in text:
                endpoint = text.split("emulated AWS at ")[1].split(")")[0]
            time.sleep(0.3)
        assert endpoint, log.read_text()[-2000:]
        s3 = client("s3", endpoint)
        (bucket,) = [b["Name"] for b in s3.list_buckets()["Buckets"]]
        s3.put_object(Bucket=bucket, Key="saved.txt", Body=b"yes")
        with httpx.Client() as http:  # the gateway answers
            assert http.get(f"http://127.0.0.1:{port}/prod/v1/health").status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    assert (data / "s3" / "Bucket" / "index.json").read_text() == '{"00000000": "saved.txt"}'


def test_moto_runs_in_its_own_process_group_and_stops() -> None:
    # Stopping kills its whole group; started in ours, moto outlived every test run.
    import os

    from fnstack_dev.emulate import MotoServer

    server = MotoServer()
    server.start()
    assert server._proc is not None
    pid = server._proc.pid
    assert os.getpgid(pid) == pid
    server.stop()
    status = Path(f"/proc/{pid}/status")
    assert not status.exists() or "State:\tZ" in status.read_text()
