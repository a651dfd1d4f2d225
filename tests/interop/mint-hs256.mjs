// Mints an HS256 token the way a frontend would with the shared BETTER_AUTH_SECRET.
// Usage: BETTER_AUTH_SECRET=... [JWT_ISSUER=...] [JWT_AUDIENCE=...] node mint-hs256.mjs '{"sub":"abc","email":"a@b.c"}'
import { SignJWT } from "jose";

const secret = process.env.BETTER_AUTH_SECRET;
if (!secret) {
  console.error("BETTER_AUTH_SECRET is required");
  process.exit(2);
}
const claims = JSON.parse(process.argv[2] ?? "{}");
let token = new SignJWT(claims).setProtectedHeader({ alg: "HS256" }).setIssuedAt().setExpirationTime("15m");
if (process.env.JWT_ISSUER) token = token.setIssuer(process.env.JWT_ISSUER);
if (process.env.JWT_AUDIENCE) token = token.setAudience(process.env.JWT_AUDIENCE);
process.stdout.write((await token.sign(new TextEncoder().encode(secret))) + "\n");
