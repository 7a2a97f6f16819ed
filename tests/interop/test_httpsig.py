"""RFC 9421 HTTP Message Signatures from a real client, `requests-http-signature` (on
`http-message-signatures`), against /httpsig/echo: hmac-sha256 under an issued secret, and
ed25519, ecdsa-p256-sha256, rsa-pss-sha512 and rsa-v1_5-sha256 under registered public keys;
nonces and signatures are single-use, and tampering is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from requests_http_signature import HTTPSignatureAuth, algorithms

from conftest import HTTP_TIMEOUT, Server


def hmac_auth(creds: dict, **kw) -> HTTPSignatureAuth:
    return HTTPSignatureAuth(signature_algorithm=algorithms.HMAC_SHA256, key=creds["secret"].encode(),
                             key_id=creds["key_id"], **kw)


def test_hmac_signed_requests_are_accepted_once(server: Server) -> None:
    creds = server.cli_json("hmac", "create", "--name", "partner", "--scopes", "read:echo")
    base = server.base + "/httpsig/echo"
    auth = hmac_auth(creds, use_nonce=True)
    for method, path, body in [
        ("GET", "/orders", None),
        ("GET", "/orders?b=2&a=x%20y&a=1", None),
        ("POST", "/orders?amount=100", b'{"amount":100}'),
        ("PUT", "/a/b", b"x" * 5000),
        ("DELETE", "/orders/42", None),
    ]:
        r = requests.request(method, base + path, data=body, auth=auth, timeout=HTTP_TIMEOUT)
        assert r.status_code == 200, (method, path, r.text)
        echo = r.json()
        assert echo["headers"]["x-portcullis-scheme"] == "http_signature"
        assert echo["headers"]["x-portcullis-client"] == creds["key_id"]
        assert echo["body"]["bytes"] == len(body or b"")

    # The same signed request twice: the nonce is spent; without a nonce, the signature is.
    for use_nonce in (True, False):
        prepared = requests.Request("POST", base + "/pay", data=b'{"amount":5}',
                                    auth=hmac_auth(creds, use_nonce=use_nonce)).prepare()
        with requests.Session() as s:
            assert s.send(prepared, timeout=HTTP_TIMEOUT).status_code == 200
            again = s.send(prepared, timeout=HTTP_TIMEOUT)
        assert again.status_code == 401 and again.json()["error"] == "replayed_request", again.text


def test_tampering_and_weak_coverage_are_refused(server: Server) -> None:
    creds = server.cli_json("hmac", "create", "--name", "partner", "--scopes", "read:echo")
    url = server.base + "/httpsig/echo/pay?amount=100"
    with requests.Session() as s:
        # The body changed after signing: Content-Digest no longer matches it.
        p = requests.Request("POST", url, data=b'{"amount":100}', auth=hmac_auth(creds, use_nonce=True)).prepare()
        p.body = b'{"amount":999}'
        p.headers["Content-Length"] = str(len(p.body))
        r = s.send(p, timeout=HTTP_TIMEOUT)
        assert r.status_code == 400 and r.json()["error"] == "body_hash_mismatch", r.text
        # The query changed after signing.
        p = requests.Request("GET", url, auth=hmac_auth(creds, use_nonce=True)).prepare()
        p.url = p.url.replace("amount=100", "amount=100000")
        r = s.send(p, timeout=HTTP_TIMEOUT)
        assert r.status_code == 401 and r.json()["error"] == "invalid_signature", r.text
    # A signature that covers neither the method nor the target.
    r = requests.get(url, auth=hmac_auth(creds, covered_component_ids=("@authority",)), timeout=HTTP_TIMEOUT)
    assert r.status_code == 401 and r.json()["error"] == "invalid_signature", r.text
    # The wrong secret, an unknown key id, and no signature at all.
    r = requests.get(url, auth=hmac_auth({"key_id": creds["key_id"], "secret": "w" * 40}), timeout=HTTP_TIMEOUT)
    assert r.status_code == 401 and r.json()["error"] == "invalid_signature"
    r = requests.get(url, auth=hmac_auth({"key_id": "hk_nobody", "secret": creds["secret"]}), timeout=HTTP_TIMEOUT)
    assert r.status_code == 401 and r.json()["error"] == "unknown_key"
    r = requests.get(url, timeout=HTTP_TIMEOUT)
    assert r.status_code == 401 and r.json()["error"] == "missing_credentials"


ALGORITHMS = {
    "ed25519": algorithms.ED25519,
    "ecdsa-p256-sha256": algorithms.ECDSA_P256_SHA256,
    "rsa-pss-sha512": algorithms.RSA_PSS_SHA512,
    "rsa-v1_5-sha256": algorithms.RSA_V1_5_SHA256,
}


def new_key(name: str):
    if name == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if name == "ecdsa-p256-sha256":
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pkcs8(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_registered_public_keys_verify(server: Server, tmp_path: Path, name: str) -> None:
    key, alg = new_key(name), ALGORITHMS[name]
    pub = tmp_path / "pub.pem"
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    creds = server.cli_json("hmac", "create", "--name", "partner", "--scopes", "read:echo",
                            "--public-key", str(pub), "--algorithm", name)
    assert "secret" not in creds and creds["kind"] == "public_key" and creds["algorithm"] == name
    url = server.base + "/httpsig/echo/orders"

    def send(signing_key, signing_alg=alg):
        auth = HTTPSignatureAuth(signature_algorithm=signing_alg, key=pkcs8(signing_key),
                                 key_id=creds["key_id"], use_nonce=True)
        return requests.post(url, data=b'{"amount":1}', auth=auth, timeout=HTTP_TIMEOUT)

    r = send(key)
    assert r.status_code == 200, r.text
    assert r.json()["headers"]["x-portcullis-client"] == creds["key_id"]
    # Another key of the same kind under this key id does not verify.
    r = send(new_key(name))
    assert r.status_code == 401 and r.json()["error"] == "invalid_signature", r.text
    # Nor does a signature whose `alg` is not the registered key's.
    other = "ecdsa-p256-sha256" if name == "ed25519" else "ed25519"
    r = send(new_key(other), ALGORITHMS[other])
    assert r.status_code == 401 and r.json()["error"] == "invalid_signature", r.text
    # A public-key credential is no secret for the other schemes: SigV4 knows no such key.
    r = requests.get(server.base + "/sigv4/echo/x", headers={
        "Authorization": f"AWS4-HMAC-SHA256 Credential={creds['key_id']}/20260101/us-east-1/execute-api/"
                         "aws4_request, SignedHeaders=host;x-amz-date, Signature=" + "0" * 64,
        "X-Amz-Date": "20260101T000000Z"}, timeout=HTTP_TIMEOUT)
    assert r.status_code == 401 and r.json()["error"] == "unknown_key", r.text
