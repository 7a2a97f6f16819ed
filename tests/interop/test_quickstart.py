"""The README quickstart, driven end to end: the real binary, its admin CLI, and real HTTP
clients (python-requests and curl)."""

from __future__ import annotations

import json
import re
import secrets
import stat
import subprocess
import zlib
from pathlib import Path

from conftest import Server, clean_env, wait_for

# README, "API keys / Format": what secret scanners match.
KEY_PATTERN = re.compile(r"\b[a-z][a-z0-9_]{0,31}_[1-9A-HJ-NP-Za-km-z]{38,50}\b")
B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def b58encode(data: bytes) -> str:
    n = int.from_bytes(data, "big")
    out = ""
    while n:
        n, r = divmod(n, 58)
        out = B58[r] + out
    return "1" * (len(data) - len(data.lstrip(b"\0"))) + out


def well_formed_unknown_key(prefix: str) -> str:
    """A key in Portcullis format with a correct checksum that the server never issued."""
    body = f"{prefix}_{b58encode(secrets.token_bytes(32))}"
    crc = zlib.crc32(body.encode())
    return body + b58encode(crc.to_bytes(4, "big")).rjust(6, "1")


def secret_part(raw_key: str) -> str:
    """The part of a key after the last `_` (random body + checksum)."""
    return raw_key.rsplit("_", 1)[1]


def assert_error(resp, status: int, code: str) -> dict:
    assert resp.status_code == status, f"expected {status} {code}, got {resp.status_code}: {resp.text}"
    body = resp.json()
    assert body.get("error") == code, body
    return body


def echo(server: Server, raw_key: str, path: str = "/echo/hello", **headers: str) -> dict:
    resp = server.get(path, headers={"X-API-Key": raw_key, **headers})
    assert resp.status_code == 200, resp.text
    return resp.json()


# --- first start -------------------------------------------------------------------------------


def test_first_start_writes_admin_token_0600_and_never_prints_it(server: Server):
    assert server.token_path.is_file()
    assert stat.S_IMODE(server.token_path.stat().st_mode) == 0o600
    token = server.admin_token
    assert len(token) >= 32

    written = [line for line in server.lines("stdout") if line.startswith("admin token written to ")]
    assert len(written) == 1, server.output()
    printed = Path(written[0].removeprefix("admin token written to ").strip())
    assert (server.data_dir / printed).resolve() == server.token_path.resolve()
    assert token not in server.output()


def test_restart_keeps_the_admin_token(start_server):
    first = start_server()
    token = first.admin_token
    first.stop()
    second = start_server(first.data_dir)
    assert second.admin_token == token
    assert not any("admin token written" in line for line in second.lines()), second.output()
    assert second.get("/admin/v1/keys", headers={"Authorization": f"Bearer {token}"}).status_code == 200


# --- admin CLI ---------------------------------------------------------------------------------


def test_keys_create_prints_id_key_and_prefix(server: Server, key: dict):
    assert isinstance(key["id"], str) and key["id"]
    assert isinstance(key["key"], str) and KEY_PATTERN.fullmatch(key["key"]), key
    assert isinstance(key["prefix"], str) and key["key"].startswith(key["prefix"])
    assert len(key["prefix"]) < len(key["key"])


def test_keys_list_and_show_never_include_the_raw_key(server: Server):
    a, b = server.create_key("alpha"), server.create_key("beta")

    r = server.cli("keys", "list")
    assert r.returncode == 0, r.stderr
    listed = json.loads(r.stdout)
    assert isinstance(listed["keys"], list)
    assert {a["id"], b["id"]} <= {k["id"] for k in listed["keys"]}
    for k in (a, b):
        assert secret_part(k["key"]) not in r.stdout

    r = server.cli("keys", "show", a["id"])
    assert r.returncode == 0, r.stderr
    shown = json.loads(r.stdout)
    assert shown["id"] == a["id"] and shown["name"] == "alpha"
    assert secret_part(a["key"]) not in r.stdout


def test_cli_takes_the_admin_token_from_the_environment(server: Server, tmp_path: Path):
    empty = tmp_path / "no-token-here"
    empty.mkdir()
    # Neither a token file nor the variable: the CLI must refuse (exit 2), not succeed.
    r = server.cli("keys", "list", data_dir=empty, cwd=empty)
    assert r.returncode != 0, r.stdout
    # The variable alone is enough.
    env = clean_env(PORTCULLIS_ADMIN_TOKEN=server.admin_token)
    r = server.cli("keys", "list", data_dir=empty, cwd=empty, env=env)
    assert r.returncode == 0, r.stderr
    assert isinstance(json.loads(r.stdout)["keys"], list)


# --- gateway -----------------------------------------------------------------------------------


def test_echo_with_x_api_key_forwards_identity_not_the_key(server: Server, key: dict):
    body = echo(server, key["key"])
    assert body["method"] == "GET"
    assert body["path"] == "/echo/hello"
    assert "query" in body
    h = body["headers"]
    assert all(name == name.lower() for name in h)
    assert h.get("x-portcullis-scheme") == "api_key"
    assert h.get("x-portcullis-credential") == key["id"]
    assert "read:echo" in h.get("x-portcullis-scopes", "").split()
    assert secret_part(key["key"]) not in json.dumps(body)


def test_echo_passes_the_query_string(server: Server, key: dict):
    body = echo(server, key["key"], "/echo/hello?x=1&y=two")
    assert body["path"] == "/echo/hello"
    assert body["query"] == "x=1&y=two"


def test_bearer_authorization_also_works(server: Server, key: dict):
    resp = server.get("/echo/hello", headers={"Authorization": f"Bearer {key['key']}"})
    assert resp.status_code == 200, resp.text
    h = resp.json()["headers"]
    assert h.get("x-portcullis-credential") == key["id"]
    assert secret_part(key["key"]) not in resp.text


def test_missing_key_is_401_with_www_authenticate(server: Server):
    resp = server.get("/echo/hello")
    assert_error(resp, 401, "missing_credentials")
    challenge = resp.headers.get("WWW-Authenticate", "")
    assert "apikey" in challenge.lower(), resp.headers


def test_wrong_or_garbled_keys_are_401_invalid_api_key(server: Server, key: dict):
    raw = key["key"]
    prefix = raw.rsplit("_", 1)[0]
    # One character of the body changed: the checksum no longer matches.
    i = len(prefix) + 5
    typo = raw[:i] + ("2" if raw[i] != "2" else "3") + raw[i + 1:]
    for bad in ("garbage", f"{prefix}_notbase58!!", raw[:-3], typo, well_formed_unknown_key(prefix)):
        assert_error(server.get("/echo/hello", headers={"X-API-Key": bad}), 401, "invalid_api_key")


def test_revoked_key_is_refused_on_the_next_request(server: Server, key: dict):
    echo(server, key["key"])  # works (and is now cached)
    r = server.cli("keys", "revoke", key["id"])
    assert r.returncode == 0, r.stderr
    assert_error(server.get("/echo/hello", headers={"X-API-Key": key["key"]}), 401, "api_key_revoked")


def test_rotate_with_zero_grace_issues_a_new_key_and_stops_the_old(server: Server, key: dict):
    rotated = server.cli_json("keys", "rotate", key["id"], "--grace", "0")
    assert rotated["id"] != key["id"]
    assert rotated["key"] != key["key"] and KEY_PATTERN.fullmatch(rotated["key"])
    assert echo(server, rotated["key"])["headers"].get("x-portcullis-credential") == rotated["id"]
    # README, "Errors": a rotation grace period that ended is api_key_expired.
    assert_error(server.get("/echo/hello", headers={"X-API-Key": key["key"]}), 401, "api_key_expired")


def test_caller_sent_portcullis_headers_never_reach_the_upstream(server: Server, key: dict):
    h = echo(server, key["key"], **{"X-Portcullis-Subject": "admin", "X-Portcullis-Scopes": "admin:all",
                                    "X-Portcullis-Client": "spoofed"})["headers"]
    assert h.get("x-portcullis-subject") is None, h
    assert "admin:all" not in h.get("x-portcullis-scopes", ""), h
    assert h.get("x-portcullis-client") != "spoofed", h
    assert h.get("x-portcullis-credential") == key["id"]


def test_unrouted_paths_are_404_no_route(server: Server, key: dict):
    assert_error(server.get("/nope"), 404, "no_route")
    # Prefixes are segment-aligned: /echox is not /echo.
    assert_error(server.get("/echox", headers={"X-API-Key": key["key"]}), 404, "no_route")


# --- operations --------------------------------------------------------------------------------


def test_healthz_and_metrics(server: Server, key: dict):
    assert server.get("/healthz").status_code == 200
    echo(server, key["key"])

    def metrics():
        r = server.get("/metrics")
        assert r.status_code == 200, r.text
        assert r.headers.get("Content-Type", "").startswith("text/plain")
        return r.text if "portcullis_requests_total{" in r.text else None

    text = wait_for("portcullis_requests_total in /metrics", metrics)
    assert re.search(r"^# TYPE portcullis_requests_total counter$", text, re.M), text
    assert secret_part(key["key"]) not in text


def test_admin_api_requires_the_admin_token(server: Server):
    assert server.get("/admin/v1/keys").status_code == 401
    wrong = server.get("/admin/v1/keys", headers={"Authorization": "Bearer " + "x" * 40})
    assert wrong.status_code == 401
    ok = server.admin_get("/admin/v1/keys")
    assert ok.status_code == 200, ok.text
    assert isinstance(ok.json()["keys"], list)


# --- curl ------------------------------------------------------------------------------------


def curl(*args: str) -> tuple[int, dict[str, str], str]:
    """Runs curl; returns (status, lower-cased response headers, body)."""
    r = subprocess.run(["curl", "-sS", "--noproxy", "*", "--max-time", "10", "-D", "-", *args],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, f"curl failed ({r.returncode}): {r.stderr}"
    head, _, body = r.stdout.replace("\r\n", "\n").partition("\n\n")
    status_line, *header_lines = head.split("\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


def test_quickstart_with_curl(server: Server, key: dict):
    status, _, body = curl("-H", f"X-API-Key: {key['key']}", f"{server.base}/echo/hello")
    assert status == 200, body
    echoed = json.loads(body)
    assert echoed["path"] == "/echo/hello"
    assert echoed["headers"].get("x-portcullis-credential") == key["id"]

    status, headers, body = curl(f"{server.base}/echo/hello")
    assert status == 401
    assert json.loads(body)["error"] == "missing_credentials"
    assert "www-authenticate" in headers, headers


# --- secrets -----------------------------------------------------------------------------------


def test_raw_keys_appear_in_no_output_audit_or_file(server: Server):
    kept, revoked = server.create_key("kept"), server.create_key("revoked")
    echo(server, kept["key"])
    assert server.get("/echo/x", headers={"Authorization": f"Bearer {kept['key']}"}).status_code == 200
    echo(server, revoked["key"])
    assert server.cli("keys", "revoke", revoked["id"]).returncode == 0
    assert_error(server.get("/echo/hello", headers={"X-API-Key": revoked["key"]}), 401, "api_key_revoked")
    assert_error(server.get("/echo/hello", headers={"Authorization": f"Bearer {revoked['key']}"}),
                 401, "api_key_revoked")
    secrets_ = {k["id"]: secret_part(k["key"]) for k in (kept, revoked)}

    # The audit trail records this traffic (by key id), and never the key.
    def audit_mentions_both():
        r = server.admin_get("/admin/v1/audit?limit=1000")
        assert r.status_code == 200, r.text
        assert isinstance(r.json()["events"], list)
        return r.text if all(i in r.text for i in secrets_) else None

    audit = wait_for("audit events for both keys", audit_mentions_both)
    for s in secrets_.values():
        assert s not in audit
    metrics = server.get("/metrics").text
    for s in secrets_.values():
        assert s not in metrics

    # Stop the server so everything (audit file, SQLite WAL) is flushed, then read every file.
    server.stop()
    output = server.output()
    for s in secrets_.values():
        assert s not in output, "a raw key appears in the server's stdout/stderr"
    files = [p for p in server.data_dir.rglob("*") if p.is_file()]
    assert len(files) >= 2, files  # at least admin.token and the store
    everything = b""
    for p in files:
        data = p.read_bytes()
        everything += data
        for s in secrets_.values():
            assert s.encode() not in data, f"a raw key appears in {p.relative_to(server.data_dir)}"
    # Control: the search can find text in these files (the key ids are stored as text).
    assert all(i.encode() in everything for i in secrets_), "key ids not found in the data dir"
