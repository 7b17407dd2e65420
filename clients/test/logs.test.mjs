// Even at RUST_LOG=trace, the server's log carries no token and no phone number from a GET
// query string (before: full URIs, and websocket frames with the connection_init token).
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createClient } from 'graphql-ws';
import WebSocket from 'ws';
import { gql, register, startServer, waitUntil } from './support/server.mjs';

let server;
before(async () => {
  server = await startServer({ RUST_LOG: 'trace' });
});
after(() => server?.stop());

test('trace logs keep tokens and looked-up phone numbers out', async () => {
  const alice = await register(server, 'alice');
  const query = encodeURIComponent('{ userByPhoneNumber(phoneNumber: "+12025550777") { id } }');
  const response = await fetch(`${server.url}?query=${query}`, { headers: { authorization: `Bearer ${alice.token}` } });
  assert.equal(response.status, 200);

  const client = createClient({ url: server.wsUrl, webSocketImpl: WebSocket, connectionParams: { token: alice.token } });
  let connected = false;
  const unsubscribe = client.subscribe({ query: 'subscription { messageReceived { id } }' }, { next() {}, error() {}, complete() {} });
  client.on('connected', () => (connected = true));
  await waitUntil(() => connected, { what: 'the websocket' });
  unsubscribe();
  await client.dispose();

  const log = server.log();
  assert.ok(log.includes('/graphql'), 'requests are logged');
  assert.ok(!log.includes('12025550777'), 'a looked-up phone number is in the log');
  assert.ok(!log.includes(alice.token), 'a token is in the log');
  assert.ok(!log.includes(alice.token.split('.')[2]), 'a token signature is in the log');
});

test('PHONE_VERIFICATION=log: a developer reads the code in the log, and it verifies', async () => {
  const dev = await startServer({ PHONE_VERIFICATION: 'log' });
  try {
    const alice = await register(dev, 'alice');
    const line = await waitUntil(() => dev.log().split('\n').find((l) => /verification code.*code=|code=.*verification code/.test(l)), {
      what: 'the code in the log',
    });
    const code = line.match(/code="?(\d{6})/)?.[1];
    assert.ok(code, `no code in ${line}`);
    const verify = 'mutation($code: String!) { verifyPhone(code: $code) { phoneVerified } }';
    const body = await gql(dev, verify, { code }, alice.token);
    assert.deepEqual(body, { data: { verifyPhone: { phoneVerified: true } } });
    assert.ok(!dev.log().includes(alice.token), 'a token is in the log');
  } finally {
    await dev.stop();
  }
});
