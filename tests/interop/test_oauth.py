"""The OAuth 2.0 token endpoint and JWKS with real third-party clients: authlib obtains tokens
(client_secret_basic, client_secret_post and private_key_jwt with keys joserfc made), PyJWT
verifies them against our JWKS URL, and the token opens the default configuration's /jwt/echo
route; PyJWT makes DPoP proofs (RFC 9449) that bind a token and then use it."""

from __future__ import annotations

import os

import base64
import hashlib
import json
import secrets
import time
from pathlib import Path

import jwt
import pytest
from authlib.integrations.requests_client import OAuth2Session
from authlib.oauth2.rfc7523 import PrivateKeyJWT, private_key_jwt_sign
from joserfc.jwk import ECKey, OKPKey, RSAKey

from conftest import Server

# authlib refuses plain http unless told; these tests talk to loopback only.
os.environ["AUTHLIB_INSECURE_TRANSPORT"] = "1"


def register(server: Server, *extra: str) -> dict:
    return server.cli_json("clients", "create", "--name", "svc", "--grant-types",
                           "client_credentials", "--scopes", "read:echo,write:echo", *extra)


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
def test_authlib_gets_a_token_that_pyjwt_verifies_against_our_jwks(server: Server, method: str):
    c = register(server, "--auth-method", method)
    session = OAuth2Session(c["client_id"], c["client_secret"], scope="read:echo",
                            token_endpoint_auth_method=method)
    session.trust_env = False
    token = session.fetch_token(server.base + "/oauth2/token", grant_type="client_credentials")
    assert token["token_type"] == "Bearer"
    assert token["scope"] == "read:echo"
    assert 0 < token["expires_in"] <= 900

    access = token["access_token"]
    assert jwt.get_unverified_header(access)["typ"] == "at+jwt"
    key = jwt.PyJWKClient(server.base + "/oauth2/jwks").get_signing_key_from_jwt(access)
    claims = jwt.decode(access, key.key, algorithms=["ES256"], audience=server.base,
                        issuer=server.base, options={"require": ["exp", "iat", "jti", "sub"]})
    assert claims["client_id"] == c["client_id"] == claims["sub"]
    assert claims["scope"] == "read:echo"

    # PyJWT really checks: one changed signature byte fails.
    head, body, sig = access.split(".")
    forged = ".".join([head, body, ("A" if sig[0] != "A" else "B") + sig[1:]])
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(forged, key.key, algorithms=["ES256"], audience=server.base, issuer=server.base)

    # The token opens the JWT route; the upstream sees the client, not the token.
    r = server.get("/jwt/echo/hello", headers={"Authorization": f"Bearer {access}"})
    assert r.status_code == 200, r.text
    seen = r.json()["headers"]
    assert seen["x-portcullis-scheme"] == "jwt"
    assert seen["x-portcullis-client"] == c["client_id"]
    assert "authorization" not in seen


def test_a_wrong_secret_is_invalid_client_with_a_basic_challenge(server: Server):
    c = register(server)
    session = OAuth2Session(c["client_id"], "pcs_not_the_secret",
                            token_endpoint_auth_method="client_secret_basic")
    session.trust_env = False
    with pytest.raises(Exception) as e:
        session.fetch_token(server.base + "/oauth2/token", grant_type="client_credentials")
    assert "invalid_client" in str(e.value)
    r = server.request("POST", "/oauth2/token", data={"grant_type": "client_credentials"},
                       auth=(c["client_id"], "pcs_not_the_secret"))
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"].startswith('Basic realm="portcullis"')
    assert r.json()["error"] == "invalid_client"
    assert c["client_secret"] not in server.output()


PRIVATE_KEYS = {
    "ES256": lambda: ECKey.generate_key("P-256"),
    "EdDSA": lambda: OKPKey.generate_key("Ed25519"),
    # RFC 9864's fully-specified name, which joserfc prefers: the same signature.
    "Ed25519": lambda: OKPKey.generate_key("Ed25519"),
    "RS256": lambda: RSAKey.generate_key(2048),
}


@pytest.mark.parametrize("alg", sorted(PRIVATE_KEYS))
def test_authlib_private_key_jwt_assertions_are_accepted_once(server: Server, tmp_path: Path,
                                                              alg: str):
    key = PRIVATE_KEYS[alg]()
    jwks = tmp_path / "client-jwks.json"
    # The public half only, as joserfc exports it (it adds no kid; the assertion has none).
    jwks.write_text(json.dumps({"keys": [key.as_dict(private=False)]}))
    c = register(server, "--jwks", str(jwks))
    assert c["token_endpoint_auth_method"] == "private_key_jwt"
    assert "client_secret" not in c

    endpoint = server.base + "/oauth2/token"
    session = OAuth2Session(c["client_id"], key, scope="read:echo",
                            token_endpoint_auth_method=PrivateKeyJWT(endpoint, alg=alg))
    session.trust_env = False
    token = session.fetch_token(endpoint, grant_type="client_credentials")
    assert token["token_type"] == "Bearer"
    assert token["scope"] == "read:echo"
    r = server.get("/jwt/echo/pk", headers={"Authorization": f"Bearer {token['access_token']}"})
    assert r.status_code == 200, r.text
    assert r.json()["headers"]["x-portcullis-client"] == c["client_id"]

    # One assertion, made by authlib, presented twice: the second is a replay.
    assertion = private_key_jwt_sign(key, client_id=c["client_id"], token_endpoint=endpoint,
                                     alg=alg)
    if isinstance(assertion, bytes):
        assertion = assertion.decode()
    form = {
        "grant_type": "client_credentials",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": assertion,
    }
    first = server.request("POST", "/oauth2/token", data=form)
    assert first.status_code == 200, first.text
    again = server.request("POST", "/oauth2/token", data=form)
    assert again.status_code == 401, again.text
    assert again.json()["error"] == "invalid_client"
    assert "WWW-Authenticate" not in again.headers

    # A key the client did not register proves nothing.
    stranger = PRIVATE_KEYS[alg]()
    forged = private_key_jwt_sign(stranger, client_id=c["client_id"], token_endpoint=endpoint,
                                  alg=alg)
    form["client_assertion"] = forged.decode() if isinstance(forged, bytes) else forged
    r = server.request("POST", "/oauth2/token", data=form)
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_pyjwt_dpop_proofs_bind_a_token_and_then_use_it(server: Server):
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))

    def proof(method: str, url: str, token: str | None = None) -> str:
        claims = {"jti": secrets.token_urlsafe(16), "htm": method, "htu": url,
                  "iat": int(time.time())}
        if token:
            claims["ath"] = b64url(hashlib.sha256(token.encode()).digest())
        return jwt.encode(claims, key, algorithm="ES256",
                          headers={"typ": "dpop+jwt", "jwk": jwk})

    c = register(server)
    endpoint = server.base + "/oauth2/token"
    r = server.request("POST", "/oauth2/token", data={"grant_type": "client_credentials"},
                       auth=(c["client_id"], c["client_secret"]),
                       headers={"DPoP": proof("POST", endpoint)})
    assert r.status_code == 200, r.text
    assert r.json()["token_type"] == "DPoP"
    access = r.json()["access_token"]
    # cnf.jkt is the RFC 7638 thumbprint of our key, computed here independently.
    canonical = json.dumps({k: jwk[k] for k in ("crv", "kty", "x", "y")},
                           separators=(",", ":"), sort_keys=True)
    claims = jwt.decode(access, options={"verify_signature": False})
    assert claims["cnf"] == {"jkt": b64url(hashlib.sha256(canonical.encode()).digest())}

    url = server.base + "/jwt/echo/dpop"
    r = server.get("/jwt/echo/dpop", headers={"Authorization": f"DPoP {access}",
                                             "DPoP": proof("GET", url, access)})
    assert r.status_code == 200, r.text
    assert r.json()["headers"]["x-portcullis-client"] == c["client_id"]
    # Stolen without the key, it is refused: as a bearer, or with a proof by another key.
    r = server.get("/jwt/echo/dpop", headers={"Authorization": f"Bearer {access}"})
    assert r.status_code == 401 and r.json()["error"] == "invalid_token"
    thief = ec.generate_private_key(ec.SECP256R1())
    stolen = jwt.encode({"jti": "t1", "htm": "GET", "htu": url, "iat": int(time.time()),
                         "ath": b64url(hashlib.sha256(access.encode()).digest())},
                        thief, algorithm="ES256",
                        headers={"typ": "dpop+jwt",
                                 "jwk": json.loads(jwt.algorithms.ECAlgorithm.to_jwk(
                                     thief.public_key()))})
    r = server.get("/jwt/echo/dpop", headers={"Authorization": f"DPoP {access}", "DPoP": stolen})
    assert r.status_code == 401 and r.json()["error"] == "invalid_dpop_proof"
    assert 'DPoP realm="portcullis"' in r.headers["WWW-Authenticate"]


SIGNED_IDENTITY_CONFIG = """
[[routes]]
name = "signed"
path_prefix = "/signed"
upstream = "builtin:echo"
policy = "api_key"
scopes = ["read:echo"]
identity_token = true
identity_audience = "orders-svc"
"""


def test_pyjwt_verifies_the_signed_identity_an_upstream_receives(start_server):
    server = start_server(config=SIGNED_IDENTITY_CONFIG)
    key = server.create_key("app", "read:echo")
    r = server.get("/signed/orders", headers={"X-API-Key": key["key"],
                                              "X-Portcullis-Identity": "forged.by.caller"})
    assert r.status_code == 200, r.text
    token = r.json()["headers"]["x-portcullis-identity"]
    assert token != "forged.by.caller"
    assert jwt.get_unverified_header(token)["typ"] == "portcullis-identity+jwt"
    signing = jwt.PyJWKClient(server.base + "/oauth2/jwks").get_signing_key_from_jwt(token)
    claims = jwt.decode(token, signing.key, algorithms=["ES256"], audience="orders-svc",
                        issuer=server.base, options={"require": ["exp", "iat", "jti"]})
    assert claims["scheme"] == "api_key"
    assert claims["credential_id"] == key["id"]
    assert claims["route"] == "signed"
    assert claims["scope"] == "read:echo"
    assert claims["exp"] - claims["iat"] == 60
    # Meant for orders-svc only.
    with pytest.raises(jwt.InvalidAudienceError):
        jwt.decode(token, signing.key, algorithms=["ES256"], audience="billing-svc",
                   issuer=server.base)
