"""Runs the OAuth2 client-credentials flow (RFC 6749 section 4.4) with authlib's requests client
and client_secret_basic, unchanged, against a running gatehouse, then calls a route with the
token. Usage: authlib_client_credentials.py BASE_URL CLIENT_ID CLIENT_SECRET"""
import sys

from authlib.integrations.requests_client import OAuth2Session

base, client_id, client_secret = sys.argv[1:4]
session = OAuth2Session(
    client_id=client_id,
    client_secret=client_secret,
    token_endpoint_auth_method="client_secret_basic",
    scope="read",
)
token = session.fetch_token(base + "/auth/token", grant_type="client_credentials")
assert token["token_type"].lower() == "bearer", token
assert "refresh_token" not in token, token
assert token["scope"] == "read", token

api = session.get(base + "/api/reports")
assert api.status_code == 200, (api.status_code, api.text)
me = session.get(base + "/auth/me")
assert me.status_code == 200, (me.status_code, me.text)
assert me.json()["sub"] == client_id, me.text
assert me.json()["client_id"] == client_id, me.text

# A wrong secret is refused the way RFC 6749 section 5.2 says, and authlib reports it.
wrong = OAuth2Session(
    client_id=client_id,
    client_secret="not-the-secret",
    token_endpoint_auth_method="client_secret_basic",
)
try:
    wrong.fetch_token(base + "/auth/token", grant_type="client_credentials")
except Exception as e:  # authlib raises OAuthError for error responses
    assert "invalid_client" in str(e), e
else:
    raise AssertionError("a wrong client secret was accepted")
print("authlib client credentials ok")
