// The graphql-ws client (what Apollo, urql and GraphiQL use underneath) against the real
// server: the whole chat flow, and the client's own retry decision for each close code.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { createClient } from 'graphql-ws';
import WebSocket, { WebSocketServer } from 'ws';
import { gql, register, send, startServer, waitUntil } from './support/server.mjs';

const MESSAGE_RECEIVED = 'subscription { messageReceived { id content sender { username } sentAt } }';

/** A graphql-ws client with quick retries, recording what it does. */
function client(url, connectionParams, options = {}) {
  const events = { connecting: 0, connected: 0, closed: [] };
  const wsClient = createClient({
    url,
    webSocketImpl: WebSocket,
    connectionParams,
    lazy: true,
    retryAttempts: 3,
    retryWait: () => new Promise((resolve) => setTimeout(resolve, 50)),
    on: {
      connecting: () => events.connecting++,
      connected: () => events.connected++,
      closed: (event) => events.closed.push(event.code),
    },
    ...options,
  });
  return { wsClient, events };
}

/** Subscribes and collects results; `done` resolves when the stream completes or errors. */
function subscribe(wsClient, query) {
  const results = [];
  let error;
  const done = new Promise((resolve) => {
    wsClient.subscribe({ query }, {
      next: (result) => results.push(result),
      error: (err) => {
        error = err;
        resolve();
      },
      complete: resolve,
    });
  });
  return { results, done, error: () => error };
}

describe('chat flow over graphql-ws', () => {
  let server;
  before(async () => {
    server = await startServer();
  });
  after(() => server?.stop());

  test('replays what was missed, in order, then streams live; markDelivered stops the replay', async () => {
    const alice = await register(server, 'alice');
    const bob = await register(server, 'bob');
    for (const content of ['one', 'two', 'three']) await send(server, alice, bob, content);

    const { wsClient } = client(server.wsUrl, () => ({ token: bob.token }));
    const stream = subscribe(wsClient, MESSAGE_RECEIVED);
    await waitUntil(() => stream.results.length === 3, { what: 'the replay' });
    await send(server, alice, bob, 'four');
    await waitUntil(() => stream.results.length === 4, { what: 'the live message' });
    const received = stream.results.map((result) => result.data.messageReceived);
    assert.deepEqual(received.map((m) => m.content), ['one', 'two', 'three', 'four']);
    assert.equal(received[0].sender.username, 'alice');
    assert.ok(!Number.isNaN(Date.parse(received[0].sentAt)));
    await wsClient.dispose();

    // Acknowledge the first two; a new subscription replays only the rest.
    const ack = await gql(
      server,
      'mutation($ids: [ID!]!) { markDelivered(messageIds: $ids) { id deliveredAt } }',
      { ids: received.slice(0, 2).map((m) => m.id) },
      bob.token,
    );
    assert.equal(ack.data.markDelivered.length, 2);
    const again = client(server.wsUrl, () => ({ token: bob.token }));
    const replay = subscribe(again.wsClient, MESSAGE_RECEIVED);
    await waitUntil(() => replay.results.length === 2, { what: 'the second replay' });
    assert.deepEqual(replay.results.map((r) => r.data.messageReceived.content), ['three', 'four']);
    await again.wsClient.dispose();
  });

  test('a token in an Authorization-style connection param works as in GraphiQL', async () => {
    const alice = await register(server, 'carol');
    const bob = await register(server, 'dave');
    const { wsClient } = client(server.wsUrl, { Authorization: `Bearer ${bob.token}` });
    const stream = subscribe(wsClient, MESSAGE_RECEIVED);
    await send(server, alice, bob, 'hello');
    await waitUntil(() => stream.results.length === 1, { what: 'the message' });
    await wsClient.dispose();
  });

  test("the client's own close is answered: it sees 1000, not 1006", async () => {
    const heidi = await register(server, 'heidi');
    const { wsClient, events } = client(server.wsUrl, { token: heidi.token });
    const stream = subscribe(wsClient, MESSAGE_RECEIVED);
    await waitUntil(() => events.connected === 1, { what: 'the connection' });
    await wsClient.dispose();
    await stream.done;
    await waitUntil(() => events.closed.length === 1, { what: 'the close' });
    assert.deepEqual(events.closed, [1000]);
  });
});

describe("the graphql-ws client's retry decision for the server's close codes", () => {
  let server;
  before(async () => {
    server = await startServer({ WS_INIT_TIMEOUT: '300ms', WS_MAX_CONNECTIONS_PER_USER: '1' });
  });
  after(() => server?.stop());

  test('a token that can never work: 4401, final (the app learns at once to sign in)', async () => {
    const { wsClient, events } = client(server.wsUrl, { token: 'not-a-token' }, { retryAttempts: 2 });
    const stream = subscribe(wsClient, MESSAGE_RECEIVED);
    await stream.done;
    assert.deepEqual(events.closed, [4401]);
    assert.equal(events.connecting, 1, 'not retried');
  });

  test('an expired token: 4403, retried with whatever connectionParams returns then', async () => {
    const shortLived = await startServer({ JWT_TTL: '1s' });
    try {
      const ivan = await register(shortLived, 'ivan');
      await new Promise((resolve) => setTimeout(resolve, 1100)); // the token's own lifetime
      const { wsClient, events } = client(shortLived.wsUrl, { token: ivan.token }, { retryAttempts: 1 });
      await subscribe(wsClient, MESSAGE_RECEIVED).done;
      assert.deepEqual(events.closed, [4403, 4403]);
      assert.equal(events.connecting, 2, 'retried');
    } finally {
      await shortLived.stop();
    }
  });

  test('connection_init too late: 4408, retried', async () => {
    const { wsClient, events } = client(
      server.wsUrl,
      () => new Promise((resolve) => setTimeout(() => resolve({}), 1000)),
      { retryAttempts: 1, connectionAckWaitTimeout: 0 },
    );
    const stream = subscribe(wsClient, MESSAGE_RECEIVED);
    await stream.done;
    assert.equal(events.closed[0], 4408);
    assert.equal(events.connecting, 2, 'retried');
  });

  test('logout while connected: 4401, final (the app must sign in again)', async () => {
    const erin = await register(server, 'erin');
    const { wsClient, events } = client(server.wsUrl, { token: erin.token });
    const stream = subscribe(wsClient, MESSAGE_RECEIVED);
    await waitUntil(() => events.connected === 1, { what: 'the connection' });
    await gql(server, 'mutation { logout { message } }', {}, erin.token);
    await stream.done;
    assert.deepEqual(events.closed, [4401]);
    assert.equal(events.connecting, 1, 'not retried');
  });

  test('too many connections for one user: 1008, final', async () => {
    const frank = await register(server, 'frank');
    const first = client(server.wsUrl, { token: frank.token });
    subscribe(first.wsClient, MESSAGE_RECEIVED);
    await waitUntil(() => first.events.connected === 1, { what: 'the first connection' });
    const second = client(server.wsUrl, { token: frank.token });
    const stream = subscribe(second.wsClient, MESSAGE_RECEIVED);
    await stream.done;
    assert.deepEqual(second.events.closed, [1008]);
    assert.equal(second.events.connecting, 1, 'not retried');
    await first.wsClient.dispose();
  });

  test('the server shutting down: 1012, retried (to this server once back, or another)', async () => {
    const leaving = await startServer();
    const judy = await register(leaving, 'judy');
    const { wsClient, events } = client(leaving.wsUrl, { token: judy.token }, { retryAttempts: 1 });
    const stream = subscribe(wsClient, MESSAGE_RECEIVED);
    await waitUntil(() => events.connected === 1, { what: 'the connection' });
    await leaving.stop(); // SIGTERM
    await stream.done;
    assert.equal(events.closed[0], 1012);
    assert.equal(events.connecting, 2, 'it tried to reconnect');
  });

  test('a message over the size limit: 1009, final', async () => {
    const grace = await register(server, 'grace');
    const { wsClient, events } = client(server.wsUrl, { token: grace.token });
    const stream = subscribe(wsClient, `subscription { messageReceived { id } } # ${'x'.repeat(70_000)}`);
    await stream.done;
    assert.deepEqual(events.closed, [1009]);
    assert.equal(events.connecting, 1, 'not retried');
  });
});

describe("README's close-code table says what graphql-ws does", () => {
  // Codes the real client never provokes (protocol violations, keep-alive) are sent by a stub
  // server, so every row of the table is checked against the client's own decision.
  let stub;
  let nextCode;
  before(async () => {
    stub = new WebSocketServer({ port: 0, host: '127.0.0.1', handleProtocols: () => 'graphql-transport-ws' });
    stub.on('connection', (socket) => socket.once('message', () => socket.close(nextCode, 'test')));
    await new Promise((resolve) => stub.once('listening', resolve));
  });
  after(() => new Promise((resolve) => stub.close(resolve)));

  test('every code in the table is retried or final as documented', async () => {
    const readme = await readFile(new URL('../../README.md', import.meta.url), 'utf8');
    const table = readme.split('### Websocket close codes')[1].split('\n\n').find((part) => part.startsWith('| Code'));
    const rows = table.split('\n').slice(2).map((line) => line.split('|').map((cell) => cell.trim()));
    assert.ok(rows.length >= 8, 'the table lists the codes');
    for (const [, code, , documented] of rows) {
      nextCode = Number(code);
      const { wsClient, events } = client(`ws://127.0.0.1:${stub.address().port}`, {}, { retryAttempts: 1 });
      await subscribe(wsClient, MESSAGE_RECEIVED).done;
      const retried = events.connecting > 1;
      assert.equal(retried ? 'retries' : 'gives up', documented.startsWith('retries') ? 'retries' : 'gives up', `close code ${code}`);
    }
  });
});
