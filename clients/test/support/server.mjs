// Starts the real chatapp binary on 127.0.0.1 with a free port and a fresh data directory, the
// way a frontend developer runs it, and gives typed helpers for plain GraphQL over HTTP.
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const REPO = fileURLToPath(new URL('../../../', import.meta.url));
/** The server binary: `CHATAPP_BIN`, else the debug build `cargo test` leaves behind. */
export const SERVER_BIN = process.env.CHATAPP_BIN ?? join(REPO, 'target/debug/chatapp');

const ANSI = /\x1b\[[0-9;]*m/g;

/**
 * Starts a server. `settings` are environment variables on top of test defaults (bcrypt cost 4,
 * sign-in limits out of the way). Resolves once it listens.
 */
export async function startServer(settings = {}) {
  const dataDir = await mkdtemp(join(tmpdir(), 'chatapp-clients-'));
  const env = {
    PATH: process.env.PATH,
    PORT: '0',
    BIND_ADDRESS: '127.0.0.1',
    DATA_DIR: dataDir,
    BCRYPT_COST: '4',
    RATE_LIMIT_AUTH_PER_ADDRESS: '100000',
    RATE_LIMIT_AUTH_PER_PHONE: '100000',
    RATE_LIMIT_MESSAGES_PER_USER: '100000',
    RUST_LOG: 'chatapp=info',
    ...settings,
  };
  const child = spawn(SERVER_BIN, [], { cwd: dataDir, env, stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  const address = await new Promise((resolve, reject) => {
    const onData = (chunk) => {
      log += chunk.toString().replace(ANSI, '');
      const match = log.match(/listening on http:\/\/([^/\s]+)\/graphql/);
      if (match) resolve(match[1]);
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.on('exit', (code) => reject(new Error(`server exited with ${code} before listening:\n${log}`)));
    child.on('error', reject);
  });
  const url = `http://${address}/graphql`;
  return {
    url,
    wsUrl: `ws://${address}/graphql`,
    origin: `http://${address}`,
    pid: child.pid,
    log: () => log,
    async stop() {
      if (child.exitCode === null) {
        const exited = new Promise((resolve) => child.once('exit', resolve));
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
        await exited;
        clearTimeout(timer);
      }
      await rm(dataDir, { recursive: true, force: true });
    },
  };
}

/** POSTs one operation as JSON and returns the parsed body. */
export async function gql(server, query, variables = {}, token) {
  const headers = { 'content-type': 'application/json', accept: 'application/graphql-response+json' };
  if (token) headers.authorization = `Bearer ${token}`;
  const response = await fetch(server.url, { method: 'POST', headers, body: JSON.stringify({ query, variables }) });
  return response.json();
}

let nextPhone = 0;
/** A fresh, valid phone number for each call within one test process. */
export function phoneNumber() {
  nextPhone += 1;
  return `+1202555${String(1000 + nextPhone).slice(-4)}`;
}

/** Registers a user over HTTP; returns `{ id, token, phoneNumber, username }`. */
export async function register(server, username) {
  const phone = phoneNumber();
  const body = await gql(
    server,
    'mutation($input: RegisterInput!) { register(input: $input) { token profileId } }',
    { input: { phoneNumber: phone, username, password: 'correct-horse-battery' } },
  );
  if (!body.data?.register) throw new Error(`register failed: ${JSON.stringify(body)}`);
  return { id: body.data.register.profileId, token: body.data.register.token, phoneNumber: phone, username };
}

/** Sends a message over HTTP and returns it. */
export async function send(server, from, to, content) {
  const body = await gql(
    server,
    'mutation($input: SendMessageInput!) { sendMessage(input: $input) { id content } }',
    { input: { recipientId: to.id, content } },
    from.token,
  );
  if (!body.data?.sendMessage) throw new Error(`send failed: ${JSON.stringify(body)}`);
  return body.data.sendMessage;
}

/** Resolves once `condition()` is truthy, polling; rejects after `timeout` ms. */
export async function waitUntil(condition, { timeout = 10_000, what = 'condition' } = {}) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const value = await condition();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}
