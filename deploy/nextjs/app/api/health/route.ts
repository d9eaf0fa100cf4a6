// Drop-in App Router route: GET /api/health for the admin panel, answered from Guardian's
// cached /api/health (no shell, no `sc query`, no `wmic`). Copy `app/api/health/route.ts`
// and `lib/guardian-health.mjs` (+ `.d.mts`) into the panel; set GUARDIAN_URL if Guardian
// does not listen on http://127.0.0.1:8787. See ../../../README.md.
import { handleHealth } from "../../../lib/guardian-health.mjs";

export const dynamic = "force-dynamic"; // never cache: it is a health check
export const runtime = "nodejs";

export async function GET(): Promise<Response> {
  return handleHealth();
}
