// Types for guardian-health.mjs, so route.ts type-checks without allowJs.
export type Overall = "healthy" | "degraded" | "unhealthy" | "unknown";

export interface PanelService {
  status: string;
  state: string;
  pid: number | null;
  restarts: number;
  breaker_open: boolean;
  last_restart: string | null;
}

export interface PanelHealth {
  status: Overall;
  overall: Overall;
  timestamp: string;
  services: Record<string, PanelService>;
  comfy: {
    online: boolean;
    status: string;
    reason: string;
    version: string | null;
    cuda: boolean;
    queue: { running: number | null; pending: number | null };
    vram: { free_mb: number | null; total_mb: number | null } | null;
    devices: Array<Record<string, string | number | null>>;
    checked_at: string | null;
  } | null;
  system: {
    disks: Array<Record<string, string | number | null>>;
    memory: Record<string, number | null> | null;
    gpus: Array<Record<string, unknown>>;
  };
  guardian: Record<string, unknown> & { reachable: boolean; url: string };
}

export interface HealthOptions {
  url?: string;
  timeoutMs?: number;
  fetchImpl?: typeof fetch;
}

export const DEFAULT_GUARDIAN_URL: string;
export const DEFAULT_TIMEOUT_MS: number;
export const MAX_BODY_BYTES: number;
export function toPanelHealth(body: unknown, url: string): PanelHealth;
export function unreachable(url: string, error: unknown): PanelHealth;
export function guardianHealth(
  opts?: HealthOptions,
): Promise<{ httpStatus: number; body: PanelHealth }>;
export function handleHealth(opts?: HealthOptions): Promise<Response>;
