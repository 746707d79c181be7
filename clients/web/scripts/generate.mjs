#!/usr/bin/env node
// Generates src/gen from ../../protos with buf and the local protoc-gen-es (see buf.gen.yaml).
//   node scripts/generate.mjs           regenerate src/gen in place
//   node scripts/generate.mjs --check   generate into a temp dir; exit 1 if it differs from src/gen
// buf is taken from $BUF, else the repo's venv (../../.venv/bin/buf), else `buf` on PATH.
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const webDir = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const genDir = join(webDir, "src", "gen");
const check = process.argv.includes("--check");

function findBuf() {
  if (process.env.BUF) return process.env.BUF;
  const venvBuf = resolve(webDir, "../../.venv/bin/buf");
  return existsSync(venvBuf) ? venvBuf : "buf";
}

function runBuf(outBase) {
  const plugin = join(webDir, "node_modules", ".bin", "protoc-gen-es");
  if (!existsSync(plugin)) {
    console.error(`missing ${relative(webDir, plugin)}: run \`npm ci\` first`);
    process.exit(2);
  }
  const args = ["generate", "--template", "buf.gen.yaml"];
  if (outBase) args.push("-o", outBase);
  const res = spawnSync(findBuf(), args, { cwd: webDir, stdio: "inherit" });
  if (res.error) {
    console.error(`cannot run buf: ${res.error.message}`);
    process.exit(2);
  }
  if (res.status !== 0) process.exit(res.status ?? 1);
}

function listFiles(dir) {
  const out = [];
  if (!existsSync(dir)) return out;
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) for (const f of listFiles(p)) out.push(join(name, f));
    else out.push(name);
  }
  return out.sort();
}

if (!check) {
  runBuf(null);
  console.log(`generated ${listFiles(genDir).length} files into ${relative(process.cwd(), genDir) || "."}`);
  process.exit(0);
}

const tmp = mkdtempSync(join(tmpdir(), "sms-web-gen-"));
try {
  runBuf(tmp);
  const fresh = join(tmp, "src", "gen");
  const want = listFiles(fresh);
  const have = listFiles(genDir);
  const problems = [];
  for (const f of want) {
    if (!have.includes(f)) problems.push(`missing: src/gen/${f}`);
    else if (!readFileSync(join(fresh, f)).equals(readFileSync(join(genDir, f)))) problems.push(`differs: src/gen/${f}`);
  }
  for (const f of have) if (!want.includes(f)) problems.push(`extra: src/gen/${f}`);
  if (problems.length) {
    console.error("src/gen is out of date with protos/ (run `npm run generate` and commit):");
    for (const p of problems) console.error(`  ${p}`);
    process.exit(1);
  }
  console.log(`src/gen is up to date (${want.length} files)`);
} finally {
  rmSync(tmp, { recursive: true, force: true });
}
