/// <reference types="vite/client" />

interface ImportMetaEnv {
  /** The API's base URL, fixed at build time (see vite.config.ts); unset: the origin the UI is served from. */
  readonly VITE_SMS_API_URL?: string;
}

interface ImportMeta {
  readonly env: ImportMetaEnv;
}
