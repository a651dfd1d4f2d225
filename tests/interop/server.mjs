// Real Better Auth server (email+password, JWT plugin, in-memory DB) for the Python interop tests.
// Env: PORT (0 = free port), BETTER_AUTH_SECRET, JWT_ALG (default EdDSA/Ed25519; ES256, ES512, RS256, PS256, ...),
// JWT_EXP_OFFSET (see below).
// Prints exactly one line, "READY http://127.0.0.1:<port>", once it accepts requests.
import http from "node:http";
import { betterAuth } from "better-auth";
import { memoryAdapter } from "better-auth/adapters/memory";
import { toNodeHandler } from "better-auth/node";
import { createJwk, jwt } from "better-auth/plugins/jwt";

const port = Number(process.env.PORT ?? 0);
const secret = process.env.BETTER_AUTH_SECRET || "interop-test-secret-0123456789-abcdefghij";
const alg = process.env.JWT_ALG;
// JWT_EXP_OFFSET (seconds, may be negative): every token expires at server start + offset, for expiry tests.
const expOffset = process.env.JWT_EXP_OFFSET;
const jwtOptions = {
  ...(alg && alg !== "EdDSA" ? { jwks: { keyPairConfig: { alg } } } : {}),
  ...(expOffset ? { jwt: { expirationTime: Math.floor(Date.now() / 1000) + Number(expOffset) } } : {}),
};
const db = { user: [], session: [], account: [], verification: [], jwks: [] };

const server = http.createServer();
server.listen(port, "127.0.0.1", async () => {
  const baseURL = `http://127.0.0.1:${server.address().port}`;
  const auth = betterAuth({
    baseURL,
    secret,
    database: memoryAdapter(db),
    emailAndPassword: { enabled: true },
    plugins: [jwt(jwtOptions)],
    rateLimit: { enabled: false },
    telemetry: { enabled: false },
  });
  const authHandler = toNodeHandler(auth);

  // Better Auth signs with the newest live key (by createdAt, ms resolution), so adding a key
  // rotates: new tokens get the new kid, older keys stay in the JWKS.
  const addSigningKey = async () => {
    await new Promise((r) => setTimeout(r, 2)); // never tie with the previous key's createdAt
    return createJwk({ context: await auth.$context }, jwtOptions);
  };

  server.on("request", async (req, res) => {
    try {
      if (req.url.startsWith("/api/auth/")) return await authHandler(req, res);
      if (req.method === "POST" && req.url === "/test/rotate-keys") {
        const key = await addSigningKey();
        res.writeHead(200, { "content-type": "application/json" });
        return res.end(JSON.stringify({ kid: key.id, keys: db.jwks.map((k) => k.id) }));
      }
      res.writeHead(404).end();
    } catch (err) {
      console.error(err);
      if (!res.headersSent) res.writeHead(500);
      res.end();
    }
  });

  try {
    await addSigningKey(); // create the first key now: the JWKS is stable from READY on (no lazy-creation race)
  } catch (err) {
    console.error(err);
    process.exit(1);
  }
  process.stdout.write(`READY ${baseURL}\n`);
});

for (const sig of ["SIGINT", "SIGTERM"]) process.on(sig, () => process.exit(0));
