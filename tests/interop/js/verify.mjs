// Verify a Tessera envelope the way a Node service with only the JWKS URL would:
// jose's createRemoteJWKSet fetches the key set, jwtVerify picks the key by kid and checks the
// signature, issuer and audience. Reads {jwks_uri, jwt, issuer, audience} on stdin, prints JSON.
import { createRemoteJWKSet, jwtVerify } from "jose";

let input = "";
for await (const chunk of process.stdin) input += chunk;
const req = JSON.parse(input);
try {
  const jwks = createRemoteJWKSet(new URL(req.jwks_uri));
  const { payload, protectedHeader } = await jwtVerify(req.jwt, jwks, {
    issuer: req.issuer,
    audience: req.audience,
    algorithms: ["ES256", "EdDSA"],
  });
  console.log(JSON.stringify({ ok: true, payload, alg: protectedHeader.alg }));
} catch (e) {
  console.log(JSON.stringify({ ok: false, error: `${e.code ?? e.name}: ${e.message}` }));
}
