import { defineConfig } from "vite";

// `npm run build` writes dist/ (index.html + hashed assets), which Envoy serves next to grpc-web.
// `npm run dev` serves the UI on :5173; point it at a running stack with ?api=http://127.0.0.1:8080.
export default defineConfig({
  base: "./",
  build: {
    outDir: "dist",
    emptyOutDir: true,
    target: "es2022",
    sourcemap: false,
    assetsDir: "assets",
  },
});
