// Transport, client and the small helpers around them: auth header, JWT claims, readable errors.
import { Code, ConnectError, createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { SmsService } from "./gen/sms/v1/sms_pb.js";

export type SmsClient = Client<typeof SmsService>;

/**
 * Where the API is: the origin the page was served from (Envoy serves the UI and grpc-web), or VITE_SMS_API_URL
 * when the build set it (a UI served apart from the API, e.g. `npm run dev`). Never from the page's URL: every call
 * carries the bearer token, and a link must not be able to send it to another host.
 */
export function apiBaseUrl(): string {
  const built = import.meta.env.VITE_SMS_API_URL;
  return built ? built.replace(/\/+$/, "") : window.location.origin;
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

/** An error's message (for gRPC errors the server's, which may quote what a user sent) and its readable code. */
export interface ErrorParts {
  message: string;
  code: string;
}

export function errorParts(err: unknown): ErrorParts {
  if (err instanceof ConnectError) {
    const code = (Code[err.code] ?? String(err.code)).replace(/([a-z])([A-Z])/g, "$1 $2").toLowerCase();
    return { message: err.rawMessage, code };
  }
  return { message: err instanceof Error ? err.message : String(err), code: "" };
}

/** A human-readable line for any error, gRPC ones with their code: `<message> (<code>)`. */
export function errorText(err: unknown): string {
  const { message, code } = errorParts(err);
  if (!code) return message;
  return message ? `${message} (${code})` : code;
}

export function errorCode(err: unknown): Code | undefined {
  return err instanceof ConnectError ? err.code : undefined;
}
