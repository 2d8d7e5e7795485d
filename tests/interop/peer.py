#!/usr/bin/env python3
"""Independent peer for interop tests: pymacaroons 0.13 and PyJWT.

Reads one JSON request on stdin, writes one JSON answer on stdout. Commands:
  verify     {token, key_hex, discharges, exact}        -> {ok, error}
  attenuate  {token, caveats}                           -> {token}
  mint       {version, key_hex, location, identifier, caveats, third_party?} -> {token, json, discharges}
  jwt        {jwt, key_hex, issuer}                     -> {ok, claims | error}
"""
import binascii
import json
import sys

import jwt as pyjwt
from pymacaroons import MACAROON_V1, MACAROON_V2, Macaroon, Verifier
from pymacaroons.serializers import JsonSerializer


def load(text):
    if text.lstrip().startswith("{"):
        return Macaroon.deserialize(text, JsonSerializer())
    return Macaroon.deserialize(text)


def verify(req):
    m = load(req["token"])
    discharges = [Macaroon.deserialize(d) for d in req.get("discharges", [])]
    v = Verifier()
    for c in req.get("exact", []):
        v.satisfy_exact(c)
    try:
        ok = v.verify(m, binascii.unhexlify(req["key_hex"]), discharges)
        return {"ok": bool(ok)}
    except Exception as e:  # pymacaroons raises on failure
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}


def attenuate(req):
    m = load(req["token"])
    for c in req["caveats"]:
        m.add_first_party_caveat(c)
    return {"token": m.serialize()}


def mint(req):
    version = MACAROON_V2 if req.get("version", 2) == 2 else MACAROON_V1
    m = Macaroon(
        location=req["location"],
        identifier=req["identifier"],
        key=binascii.unhexlify(req["key_hex"]),
        version=version,
    )
    for c in req.get("caveats", []):
        m.add_first_party_caveat(c)
    discharges = []
    tp = req.get("third_party")
    if tp:
        tp_key = binascii.unhexlify(tp["key_hex"])
        m.add_third_party_caveat(tp["location"], tp_key, tp["id"])
        d = Macaroon(location=tp["location"], identifier=tp["id"], key=tp_key, version=version)
        for c in tp.get("caveats", []):
            d.add_first_party_caveat(c)
        discharges.append(m.prepare_for_request(d).serialize())
    return {
        "token": m.serialize(),
        "json": m.serialize(JsonSerializer()),
        "discharges": discharges,
    }


def check_jwt(req):
    try:
        claims = pyjwt.decode(
            req["jwt"],
            binascii.unhexlify(req["key_hex"]),
            algorithms=["HS256"],
            issuer=req["issuer"],
            options={"require": ["exp", "iat", "sub", "jti", "iss"], "verify_exp": False,
                     "verify_iat": False, "verify_nbf": False},
        )
        header = pyjwt.get_unverified_header(req["jwt"])
        return {"ok": True, "claims": claims, "header": header}
    except Exception as e:
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}


def check_jwk(req):
    """Verify a public-key envelope with PyJWT given only the published JWK (as PyJWKClient would
    after fetching the JWKS): the algorithm comes from the JWK, never from the token."""
    try:
        jwk = pyjwt.PyJWK(req["jwk"])
        header = pyjwt.get_unverified_header(req["jwt"])
        if header.get("kid") != req["jwk"]["kid"]:
            return {"ok": False, "error": "kid does not match the JWK"}
        claims = pyjwt.decode(
            req["jwt"],
            jwk.key,
            algorithms=[jwk.algorithm_name],
            issuer=req["issuer"],
            audience=req.get("audience"),
            options={"require": ["exp", "iat", "sub", "jti", "iss"], "verify_exp": False,
                     "verify_iat": False, "verify_nbf": False},
        )
        return {"ok": True, "claims": claims, "header": header}
    except Exception as e:
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}


def check_jwks(req):
    """Verify an envelope the way a service with only the JWKS URL would: PyJWKClient fetches
    the key set and picks the key by kid; the algorithm comes from that key."""
    try:
        client = pyjwt.PyJWKClient(req["jwks_uri"])
        key = client.get_signing_key_from_jwt(req["jwt"])
        claims = pyjwt.decode(req["jwt"], key.key, algorithms=[key.algorithm_name], issuer=req["issuer"],
                              audience=req.get("audience"), options={"require": ["exp", "iat", "sub", "iss"]})
        return {"ok": True, "claims": claims, "alg": key.algorithm_name}
    except Exception as e:
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}


COMMANDS = {"jwks": check_jwks, "verify": verify, "attenuate": attenuate, "mint": mint, "jwt": check_jwt, "jwk": check_jwk}

if __name__ == "__main__":
    request = json.load(sys.stdin)
    json.dump(COMMANDS[sys.argv[1]](request), sys.stdout)
