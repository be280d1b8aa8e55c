"""Runs the OAuth2 client-credentials flow (RFC 6749 section 4.4) with authlib's requests client
and private_key_jwt (RFC 7523 section 2.2, authlib's PrivateKeyJWT, RS256, the token endpoint
URL as the audience) against a running gatehouse, then calls a route with the token.
Usage: authlib_private_key_jwt.py BASE_URL CLIENT_ID PRIVATE_KEY_PEM_FILE"""
import sys
import time

from authlib.integrations.requests_client import OAuth2Session
from authlib.oauth2.rfc7523 import PrivateKeyJWT

base, client_id, pem_file = sys.argv[1:4]
with open(pem_file) as f:
    private_key = f.read()
token_endpoint = base + "/auth/token"


def session(claims=None):
    s = OAuth2Session(
        client_id=client_id,
        client_secret=private_key,
        token_endpoint_auth_method="private_key_jwt",
        scope="read",
    )
    s.register_client_auth_method(PrivateKeyJWT(token_endpoint, claims=claims))
    return s


def refused(s, why):
    try:
        s.fetch_token(token_endpoint, grant_type="client_credentials")
    except Exception as e:  # authlib raises OAuthError for error responses
        assert "invalid_client" in str(e), (why, e)
    else:
        raise AssertionError(why + " was accepted")


# authlib's defaults: an assertion valid for an hour, a new jti each time.
s = session()
token = s.fetch_token(token_endpoint, grant_type="client_credentials")
assert token["token_type"].lower() == "bearer", token
assert "refresh_token" not in token, token
assert token["scope"] == "read", token

api = s.get(base + "/api/reports")
assert api.status_code == 200, (api.status_code, api.text)
me = s.get(base + "/auth/me")
assert me.status_code == 200, (me.status_code, me.text)
assert me.json()["sub"] == client_id, me.text
assert me.json()["client_id"] == client_id, me.text

# Each fetch signs a new assertion with a new jti: a second token works too.
session().fetch_token(token_endpoint, grant_type="client_credentials")
# The same jti again is a replay; an assertion valid for two hours is past the bound.
replay = {"exp": int(time.time()) + 120, "jti": "replayed-jti"}
session(replay).fetch_token(token_endpoint, grant_type="client_credentials")
refused(session(replay), "a replayed jti")
refused(session({"exp": int(time.time()) + 7200}), "a two-hour assertion")
print("authlib private_key_jwt ok")
