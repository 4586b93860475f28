"""Downloads against a local HTTP server (never the internet): resume, size/checksum checks, BEIR by name."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import threading
import zipfile
from pathlib import Path

import pytest

from simlm.data.download import DownloadError, download, fetch_beir, fetch_simlm_msmarco


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with HTTP Range support (the standard handler ignores Range)."""

    def log_message(self, *args):  # keep test output quiet
        pass

    def send_head(self):
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            return super().send_head()
        data = path.read_bytes()
        start = 0
        header = self.headers.get("Range")
        if header and self.command == "GET":
            start = int(header.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.server.requests.append((self.command, header))
        return io.BytesIO(data[start:])


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()

    def handler(*args, **kwargs):
        return RangeHandler(*args, directory=str(root), **kwargs)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.requests = []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}", httpd.requests
    httpd.shutdown()


def make_zip(path: Path, top: str, files: dict[str, str]) -> bytes:
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in files.items():
            zf.writestr(f"{top}/{name}", text)
    return path.read_bytes()


def test_download_resumes_a_partial_file_and_checks_sha(server, tmp_path):
    root, url, requests = server
    payload = bytes(range(256)) * 1000
    (root / "blob.bin").write_bytes(payload)
    dest = tmp_path / "out" / "blob.bin"
    dest.parent.mkdir()
    (dest.parent / "blob.bin.part").write_bytes(payload[:1000])  # an interrupted earlier download
    download(f"{url}/blob.bin", dest, sha256=hashlib.sha256(payload).hexdigest())
    assert dest.read_bytes() == payload
    assert ("GET", "bytes=1000-") in requests  # only the rest was fetched
    with pytest.raises(DownloadError, match="sha256"):
        download(f"{url}/blob.bin", tmp_path / "other.bin", sha256="0" * 64)
    assert not (tmp_path / "other.bin").exists() and not (tmp_path / "other.bin.part").exists()


def test_beir_by_name_downloads_once_and_loads(server, tmp_path, compose):
    root, url, requests = server
    corpus = "".join(json.dumps({"_id": f"d{i}", "title": "", "text": f"apple {i}"}) + "\n" for i in range(5))
    make_zip(
        root / "tiny.zip",
        "tiny",
        {
            "corpus.jsonl": corpus,
            "queries.jsonl": json.dumps({"_id": "q1", "text": "apple 3"}) + "\n",
            "qrels/test.tsv": "query-id\tcorpus-id\tscore\nq1\td3\t1\n",
        },
    )
    cfg = compose(
        "stage=bm25",
        "data=beir",
        "data.name=tiny",
        f"data.url='{url}/{{name}}.zip'",
        f"data.cache_dir={tmp_path / 'cache'}",
        "stage.negatives.enabled=false",
    )
    from simlm.stages import run_stage

    run_stage(cfg)
    assert (tmp_path / "cache" / "beir" / "tiny" / "corpus.jsonl").is_file()
    n_requests = len(requests)
    assert (
        fetch_beir("tiny", tmp_path / "cache", f"{url}/{{name}}.zip") == tmp_path / "cache" / "beir" / "tiny"
    )
    assert len(requests) == n_requests  # cached: no new request


def test_simlm_msmarco_zips(server, tmp_path):
    root, url, _ = server
    make_zip(root / "msmarco_bm25_official.zip", "msmarco_bm25_official", {"dev_queries.tsv": "1\tq\n"})
    (folder,) = fetch_simlm_msmarco(tmp_path / "data", ("msmarco_bm25_official",), f"{url}/{{name}}.zip")
    assert (folder / "dev_queries.tsv").read_text() == "1\tq\n"


def test_missing_root_and_name_is_explained(compose):
    from simlm.stages import run_stage

    with pytest.raises(ValueError, match="data.name"):
        run_stage(compose("stage=bm25", "data=beir"))


def _closed_port() -> int:
    import socket

    with socket.socket() as s:  # a port nothing listens on: the connection is refused, as offline
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_failed_download_names_the_url_and_the_fix(compose, tmp_path):
    from simlm.stages import run_stage

    url = f"http://127.0.0.1:{_closed_port()}/tiny.zip"
    cfg = compose(
        "stage=bm25",
        "data=beir",
        "data.name=tiny",
        f"data.url='{url.replace('tiny', '{name}')}'",
        f"data.cache_dir={tmp_path / 'cache'}",
    )
    with pytest.raises(DownloadError) as err:
        run_stage(cfg)
    message = str(err.value)
    assert message.startswith(f"could not download {url}: ") and "no network" in message
    assert "data.root=<a local folder>" in message and "corpus.jsonl" in message
    assert not (tmp_path / "cache" / "beir" / "tiny").exists()


def test_http_error_names_the_url_and_the_fix(server, tmp_path):
    root, url, _ = server
    with pytest.raises(DownloadError, match=rf"could not download {url}/missing\.zip: HTTP 404") as err:
        fetch_simlm_msmarco(tmp_path / "data", ("missing",), f"{url}/{{name}}.zip")
    assert "data.root=<a local folder>" in str(err.value) and "missing.zip" in str(err.value)
    assert not (tmp_path / "data" / "missing.zip").exists()


def test_dropped_connection_names_the_url_and_keeps_the_part(tmp_path):
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def serve():  # HEAD and GET both promise 1000 bytes; GET sends 10 and hangs up
        for _ in range(2):
            conn, _ = listener.accept()
            with conn:
                head = conn.recv(65536).startswith(b"HEAD")
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + (b"" if head else b"x" * 10)
                )

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/blob.bin"
    dest = tmp_path / "blob.bin"
    with pytest.raises(DownloadError) as err:
        download(url, dest, fix="Pass data.root=<a local folder>.")
    thread.join(5)
    listener.close()
    message = str(err.value)
    assert message.startswith(f"could not download {url}: ") and "data.root=<a local folder>" in message
    assert f"10 bytes kept in {dest}.part" in message and not dest.exists()
