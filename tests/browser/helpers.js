// Shared test helpers: run the real hubbub binary, launch Debian's Chromium.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
export const HUBBUB_BIN = resolve(here, process.env.HUBBUB_BIN || '../../target/debug/hubbub');
export const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
export const CLIENT_JS = resolve(here, '../../clients/js/hubbub.js');

export function tempDir(prefix) {
  return mkdtempSync(join(tmpdir(), prefix));
}

/** A TCP port that was free a moment ago. */
export function freePort() {
  return new Promise((ok, fail) => {
    const srv = createServer();
    srv.on('error', fail);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => ok(port));
    });
  });
}

async function waitUntil(what, check, timeoutMs = 15000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Start hubbub (demo mode: no secret) and wait until it answers /health.
 * Pass `port` and `dataDir` to restart on the same address and history. */
export async function startServer({ port, dataDir } = {}) {
  port ??= await freePort();
  dataDir ??= tempDir('hubbub-data-');
  const args = ['--listen', `127.0.0.1:${port}`, '--data-dir', dataDir, '--workers', '2', '--log', 'warn'];
  const proc = spawn(HUBBUB_BIN, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  proc.stderr.on('data', (d) => { stderr = (stderr + d).slice(-4000); });
  const exited = new Promise((r) => proc.once('exit', (code, signal) => r({ code, signal })));
  let gone = false;
  exited.then(() => { gone = true; });

  const base = `http://127.0.0.1:${port}`;
  await waitUntil(`hubbub on port ${port}`, async () => {
    if (gone) throw new Error(`hubbub exited early: ${stderr}`);
    try { return (await fetch(`${base}/health`)).ok; } catch { return false; }
  });

  return {
    port,
    dataDir,
    base,
    wsUrl: `ws://127.0.0.1:${port}/ws/chat`,
    /** SIGTERM (a graceful shutdown) and wait for the process to exit. */
    async stop(signal = 'SIGTERM') {
      if (!gone) proc.kill(signal);
      const result = await exited;
      return result;
    },
    /** Stop, then remove the data directory. */
    async destroy() {
      await this.stop('SIGKILL');
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/** A fresh demo-mode token for `name`. */
export async function demoToken(server, name) {
  const res = await fetch(`${server.base}/demo/token?name=${encodeURIComponent(name)}`);
  if (!res.ok) throw new Error(`token for ${name}: HTTP ${res.status}`);
  return (await res.json()).token;
}

/** Chromium with a fresh profile directory. Returns { context, close }. */
export async function launchBrowser() {
  const { chromium } = await import('playwright-core');
  const profile = tempDir('hubbub-chromium-');
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 1000, height: 700 },
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
  });
  return {
    context,
    async close() {
      await context.close().catch(() => {});
      rmSync(profile, { recursive: true, force: true });
    },
  };
}

export { waitUntil };
