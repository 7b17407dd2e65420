// urql as a chat frontend sets it up: fetchExchange with the token in a header, and
// subscriptionExchange forwarding subscriptions to a graphql-ws client.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { Client, fetchExchange, gql, subscriptionExchange } from '@urql/core';
import { createClient as createWsClient } from 'graphql-ws';
import WebSocket from 'ws';
import { phoneNumber, startServer, waitUntil } from './support/server.mjs';
import * as ops from './support/operations.mjs';

let server;
before(async () => {
  server = await startServer();
});
after(() => server?.stop());

// --- README: urql setup (kept in step with README.md "Use it from a frontend") ---
function createUrqlClient({ httpUrl, wsUrl, getToken, onClosed }) {
  const wsClient = createWsClient({
    url: wsUrl,
    webSocketImpl: WebSocket, // in a browser, leave this out
    connectionParams: () => ({ token: getToken() }),
    on: { closed: (event) => onClosed?.(event.code) },
  });
  return new Client({
    url: httpUrl,
    fetchOptions: () => {
      const token = getToken();
      return token ? { headers: { authorization: `Bearer ${token}` } } : {};
    },
    exchanges: [
      fetchExchange,
      subscriptionExchange({
        forwardSubscription(request) {
          const input = { ...request, query: request.query || '' };
          return {
            subscribe(sink) {
              const unsubscribe = wsClient.subscribe(input, sink);
              return { unsubscribe };
            },
          };
        },
      }),
    ],
  });
}
// --- end of README setup ---

async function signUp(username) {
  const user = { token: null, closeCodes: [] };
  user.client = createUrqlClient({
    httpUrl: server.url,
    wsUrl: server.wsUrl,
    getToken: () => user.token,
    onClosed: (code) => user.closeCodes.push(code),
  });
  const result = await user.client
    .mutation(gql(ops.REGISTER), { input: { phoneNumber: phoneNumber(), username, password: 'correct-horse-battery' } })
    .toPromise();
  assert.equal(result.error, undefined);
  user.token = result.data.register.token;
  user.id = result.data.register.profileId;
  return user;
}

function listen(user) {
  const received = [];
  const errors = [];
  const { unsubscribe } = user.client.subscription(gql(ops.MESSAGE_RECEIVED), {}).subscribe((result) => {
    if (result.error) errors.push(result.error);
    else received.push(result.data.messageReceived);
  });
  return { received, errors, stop: unsubscribe };
}

async function sendFrom(user, to, content) {
  const result = await user.client.mutation(gql(ops.SEND_MESSAGE), { input: { recipientId: to.id, content } }).toPromise();
  assert.equal(result.error, undefined);
  return result.data.sendMessage;
}

test('urql: live messages, replay after reconnect, markDelivered, history paging, logout', async () => {
  const alice = await signUp('alice');
  const bob = await signUp('bob');

  let bobListens = listen(bob);
  await sendFrom(alice, bob, 'hi bob');
  await waitUntil(() => bobListens.received.length === 1, { what: 'the live message' });
  const ack = await bob.client.mutation(gql(ops.MARK_DELIVERED), { ids: [bobListens.received[0].id] }).toPromise();
  assert.ok(ack.data.markDelivered[0].deliveredAt);
  bobListens.stop();

  for (const content of ['m1', 'm2', 'm3']) await sendFrom(alice, bob, content);
  bobListens = listen(bob);
  await waitUntil(() => bobListens.received.length === 3, { what: 'the replay' });
  await sendFrom(alice, bob, 'm4');
  await waitUntil(() => bobListens.received.length === 4, { what: 'live after replay' });
  assert.deepEqual(bobListens.received.map((m) => m.content), ['m1', 'm2', 'm3', 'm4']);

  // History pages, newest first; `before` walks back.
  const page = (before) =>
    bob.client.query(gql(ops.CONVERSATION), { withUserId: alice.id, last: 3, before }).toPromise();
  const newest = await page(undefined);
  assert.deepEqual(newest.data.conversation.edges.map((e) => e.node.content), ['m2', 'm3', 'm4']);
  const older = await page(newest.data.conversation.pageInfo.startCursor);
  assert.deepEqual(older.data.conversation.edges.map((e) => e.node.content), ['hi bob', 'm1']);
  assert.equal(older.data.conversation.pageInfo.hasPreviousPage, false);

  await bob.client.mutation(gql(ops.LOGOUT), {}).toPromise();
  await waitUntil(() => bobListens.errors.length === 1, { what: 'the subscription to end' });
  assert.equal(bob.closeCodes.at(-1), 4401);
  assert.ok(!bob.closeCodes.includes(1006), `an unclean close: ${bob.closeCodes}`);
  bobListens.stop();
});

test('urql: typing and presence arrive on chatEvents', async () => {
  const alice = await signUp('alice');
  const bob = await signUp('bob');
  await sendFrom(alice, bob, 'hi bob'); // now they share a conversation

  const events = [];
  const { unsubscribe } = bob.client.subscription(gql(ops.CHAT_EVENTS), {}).subscribe((result) => {
    if (result.data) events.push(result.data.chatEvents);
  });
  // Events are live only: probe with a message of Bob's own until his subscription hears it.
  await waitUntil(
    async () => {
      const probe = await sendFrom(bob, alice, 'probe');
      await new Promise((resolve) => setTimeout(resolve, 300));
      return events.some((e) => e.__typename === 'MessageSent' && e.message.id === probe.id);
    },
    { what: "Bob's chatEvents to listen" },
  );
  const typingEvents = () => events.filter((e) => e.__typename === 'TypingChanged');
  const presenceEvents = () => events.filter((e) => e.__typename === 'PresenceChanged');

  // Typing: shown, then stopped.
  const typing = (value) => alice.client.mutation(gql(ops.SET_TYPING), { withUserId: bob.id, typing: value }).toPromise();
  assert.equal((await typing(true)).data.setTyping, true);
  await waitUntil(() => typingEvents().length === 1, { what: 'typing…' });
  assert.deepEqual([typingEvents()[0].user.username, typingEvents()[0].typing], ['alice', true]);
  await typing(false);
  await waitUntil(() => typingEvents().length === 2, { what: 'typing to stop' });
  assert.equal(typingEvents()[1].typing, false);

  // Presence: Alice opens a subscription (her client connects), then closes it.
  const presence = async () =>
    (await bob.client.query(gql(ops.PRESENCE), { id: alice.id }, { requestPolicy: 'network-only' }).toPromise()).data.user;
  assert.equal((await presence()).online, false);
  const aliceListens = listen(alice);
  await waitUntil(() => presenceEvents().some((e) => e.online), { what: 'Alice to come online' });
  assert.equal(presenceEvents().at(-1).user.id, alice.id);
  assert.equal((await presence()).online, true);
  aliceListens.stop(); // graphql-ws closes an idle lazy connection
  await waitUntil(() => presenceEvents().some((e) => !e.online), { what: 'Alice to go offline' });
  const seen = await presence();
  assert.equal(seen.online, false);
  assert.equal(seen.lastSeenAt, presenceEvents().at(-1).lastSeenAt);
  unsubscribe();
});
