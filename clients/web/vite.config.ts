import { defineConfig, loadEnv } from "vite";

// `npm run build` writes dist/ (index.html + hashed assets), which Envoy serves next to grpc-web under a CSP that
// allows no inline script or style: keep everything in files (Vite's build does; check dist/index.html).
// `npm run dev` serves the UI on :5173; point it at a running stack at build time, never from the page's URL:
//   VITE_SMS_API_URL=http://127.0.0.1:8080 npm run dev   (and SMS_WEB_ORIGINS=http://localhost:5173 on the stack)
export default defineConfig(({ mode }) => {
  checkApiUrl(loadEnv(mode, ".", "VITE_").VITE_SMS_API_URL);
  return {
    base: "./",
    build: {
      outDir: "dist",
      emptyOutDir: true,
      target: "es2022",
      sourcemap: false,
      assetsDir: "assets",
    },
  };
});

/** The API address baked into the build receives the bearer token: a plain http(s) URL or nothing. */
function checkApiUrl(value: string | undefined): void {
  if (!value) return;
  let url: URL | null = null;
  try {
    url = new URL(value);
  } catch {
    // Reported below.
  }
  if (!url || !/^https?:$/.test(url.protocol) || url.search || url.hash || url.username || url.password) {
    throw new Error(`VITE_SMS_API_URL must be an http(s) URL without credentials, query or fragment: ${value}`);
  }
}
