"""Discovers a running gatehouse through its RFC 8414 metadata with authlib, as a resource server
would: validates the metadata, finds the token endpoint there and gets a client-credentials
token (client_secret_basic), introspects it with authlib's RFC 7662 client (active), revokes it
at the metadata's revocation endpoint and introspects it again (inactive).
Usage: authlib_discovery.py ISSUER CA_FILE CLIENT_ID CLIENT_SECRET RS_ID RS_SECRET"""
import sys

import requests
from authlib.integrations.requests_client import OAuth2Session
from authlib.oauth2.rfc8414 import AuthorizationServerMetadata, get_well_known_url

issuer, ca_file, client_id, client_secret, rs_id, rs_secret = sys.argv[1:7]
TIMEOUT = 10

url = get_well_known_url(issuer, external=True)
fetched = requests.get(url, verify=ca_file, timeout=TIMEOUT)
assert fetched.status_code == 200, (fetched.status_code, fetched.text)
metadata = AuthorizationServerMetadata(fetched.json())
metadata.validate()
assert metadata["issuer"] == issuer, metadata
assert "client_credentials" in metadata.grant_types_supported, metadata
assert "client_secret_basic" in metadata.token_endpoint_auth_methods_supported, metadata

machine = OAuth2Session(
    client_id=client_id,
    client_secret=client_secret,
    token_endpoint_auth_method="client_secret_basic",
)
token = machine.fetch_token(
    metadata["token_endpoint"],
    grant_type="client_credentials",
    timeout=TIMEOUT,
    verify=ca_file,
)
access = token["access_token"]

resource_server = OAuth2Session(
    client_id=rs_id,
    client_secret=rs_secret,
    token_endpoint_auth_method="client_secret_basic",
)
live = resource_server.introspect_token(
    metadata["introspection_endpoint"],
    token=access,
    token_type_hint="access_token",
    timeout=TIMEOUT,
    verify=ca_file,
)
assert live.status_code == 200, (live.status_code, live.text)
answer = live.json()
assert answer["active"] is True, answer
assert answer["client_id"] == client_id, answer
assert answer["sub"] == client_id, answer
assert answer["iss"] == issuer, answer
assert answer["scope"] == "read", answer

revoked = machine.revoke_token(
    metadata["revocation_endpoint"],
    token=access,
    token_type_hint="access_token",
    timeout=TIMEOUT,
    verify=ca_file,
)
assert revoked.status_code == 200, (revoked.status_code, revoked.text)
after = resource_server.introspect_token(
    metadata["introspection_endpoint"], token=access, timeout=TIMEOUT, verify=ca_file
)
assert after.status_code == 200, (after.status_code, after.text)
assert after.json() == {"active": False}, after.text
print("authlib discovery and introspection ok")
