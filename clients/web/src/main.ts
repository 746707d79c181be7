// Entry point: sign-in by pasted token, then the inbox.
import "./style.css";
import { apiBaseUrl, decodeJwt } from "./api.js";
import { InboxApp } from "./app.js";
import { h } from "./dom.js";
import { brand } from "./views.js";

const TOKEN_KEY = "sms-gateway.token";
const root = document.getElementById("app") as HTMLElement;
let current: InboxApp | null = null;

function readToken(): string | null {
  try {
    return localStorage.getItem(TOKEN_KEY);
  } catch {
    return null;
  }
}

function writeToken(token: string | null): void {
  try {
    if (token) localStorage.setItem(TOKEN_KEY, token);
    else localStorage.removeItem(TOKEN_KEY);
  } catch {
    // Private mode without storage: the session lasts until reload.
  }
}

function showSignIn(message: Node | string = ""): void {
  current = null;
  document.title = "Sign in · SMS Inbox";
  const input = h("textarea", {
    class: "input token",
    id: "token",
    rows: 5,
    spellcheck: "false",
    autocomplete: "off",
    "data-testid": "token-input",
    placeholder: "eyJhbGciOiJIUzI1NiIs…",
  }) as HTMLTextAreaElement;
  const error = h("div", { class: "form-error", "data-testid": "sign-in-error", role: "alert" }, message);
  const submit = (e: SubmitEvent) => {
    e.preventDefault();
    const token = input.value.trim().replace(/^Bearer\s+/i, "");
    if (!token) {
      error.textContent = "Paste your access token.";
      return;
    }
    try {
      const claims = decodeJwt(token);
      if (claims.exp && claims.exp * 1000 < Date.now()) {
        error.textContent = `This token expired at ${new Date(claims.exp * 1000).toLocaleString()}.`;
        return;
      }
    } catch (err) {
      error.textContent = err instanceof Error ? err.message : String(err);
      return;
    }
    writeToken(token);
    start(token);
  };
  root.replaceChildren(
    h(
      "div",
      { class: "signin-wrap" },
      h(
        "form",
        { class: "signin", onsubmit: submit, "data-testid": "sign-in-form" },
        brand("big"),
        h("label", { for: "token" }, "Access token"),
        h("p", { class: "hint" }, "Paste the JWT your administrator gave you. It stays in this browser until you sign out."),
        input,
        error,
        h("button", { class: "btn btn-primary wide", type: "submit", "data-testid": "sign-in" }, "Sign in"),
        h("p", { class: "hint small" }, `Server: ${apiBaseUrl()}`),
      ),
    ),
  );
  input.focus();
}

function start(token: string): void {
  let claims;
  try {
    claims = decodeJwt(token);
  } catch (err) {
    writeToken(null);
    showSignIn(err instanceof Error ? err.message : String(err));
    return;
  }
  current?.destroy();
  document.title = "SMS Inbox";
  const app = new InboxApp(token, claims, (message) => {
    writeToken(null);
    if (window.location.hash) history.replaceState(null, "", window.location.pathname + window.location.search);
    showSignIn(message);
  });
  current = app;
  root.replaceChildren(app.el);
  app.start();
}

const saved = readToken();
if (saved) start(saved);
else showSignIn();
