// Transport, client and the small helpers around them: auth header, JWT claims, readable errors.
import { Code, ConnectError, createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { SmsService } from "./gen/sms/v1/sms_pb.js";

export type SmsClient = Client<typeof SmsService>;

/** Same origin as the page (Envoy serves the UI and grpc-web); `?api=<url>` overrides it for development. */
export function apiBaseUrl(): string {
  const override = new URLSearchParams(window.location.search).get("api");
  if (override) return override.replace(/\/+$/, "");
  return window.location.origin;
}

export function makeClient(getToken: () => string | null): SmsClient {
  const auth: Interceptor = (next) => async (req) => {
    const token = getToken();
    if (token) req.header.set("authorization", `Bearer ${token}`);
    return next(req);
  };
  const transport = createGrpcWebTransport({
    baseUrl: apiBaseUrl(),
    useBinaryFormat: true,
    interceptors: [auth],
  });
  return createClient(SmsService, transport);
}

export interface Claims {
  sub: string;
  role: string;
  exp?: number;
}

/** The JWT's payload, unverified (the server verifies it); throws when it is not a JWT. */
export function decodeJwt(token: string): Claims {
  const parts = token.trim().split(".");
  if (parts.length !== 3) throw new Error("That is not a JWT (expected three dot-separated parts).");
  let json: unknown;
  try {
    const b64 = parts[1].replace(/-/g, "+").replace(/_/g, "/");
    const padded = b64 + "=".repeat((4 - (b64.length % 4)) % 4);
    const bytes = Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
    json = JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    throw new Error("The token's payload is not readable JSON.");
  }
  if (!json || typeof json !== "object") throw new Error("The token's payload is not an object.");
  const obj = json as Record<string, unknown>;
  if (typeof obj.sub !== "string" || !obj.sub) throw new Error("The token has no subject (sub).");
  return {
    sub: obj.sub,
    role: typeof obj.role === "string" ? obj.role : "agent",
    exp: typeof obj.exp === "number" ? obj.exp : undefined,
  };
}

/** A human-readable line for any error, gRPC ones with their code. */
export function errorText(err: unknown): string {
  if (err instanceof ConnectError) {
    const code = Code[err.code] ?? String(err.code);
    const name = code.replace(/([a-z])([A-Z])/g, "$1 $2").toLowerCase();
    return err.rawMessage ? `${err.rawMessage} (${name})` : name;
  }
  if (err instanceof Error) return err.message;
  return String(err);
}

export function errorCode(err: unknown): Code | undefined {
  return err instanceof ConnectError ? err.code : undefined;
}
