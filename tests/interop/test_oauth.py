"""The OAuth 2.0 token endpoint and JWKS with real third-party clients: authlib obtains tokens
(client_secret_basic and client_secret_post), PyJWT verifies them against our JWKS URL, and the
token opens the default configuration's /jwt/echo route."""

from __future__ import annotations

import os

import jwt
import pytest
from authlib.integrations.requests_client import OAuth2Session

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
