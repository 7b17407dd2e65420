// Apollo Client as a chat frontend sets it up: HttpLink for queries and mutations with the
// token in a header, GraphQLWsLink for subscriptions with the token in connectionParams, split
// by operation type; relay-style paging of the history with fetchMore.
import { createServer } from 'node:http';
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { ApolloClient, HttpLink, InMemoryCache, gql, split } from '@apollo/client';
import { SetContextLink } from '@apollo/client/link/context';
import { GraphQLWsLink } from '@apollo/client/link/subscriptions';
import { getMainDefinition, relayStylePagination } from '@apollo/client/utilities';
import { createClient } from 'graphql-ws';
import WebSocket from 'ws';
import { filter, firstValueFrom } from 'rxjs';
import { phoneNumber, startServer, waitUntil } from './support/server.mjs';
import * as ops from './support/operations.mjs';

let server;
before(async () => {
  server = await startServer();
});
after(() => server?.stop());

// --- README: Apollo Client setup (kept in step with README.md "Use it from a frontend") ---
function createApolloClient({ httpUrl, wsUrl, getToken, onClosed }) {
  const authLink = new SetContextLink(({ headers }) => {
    const token = getToken();
    return { headers: { ...headers, ...(token ? { authorization: `Bearer ${token}` } : {}) } };
  });
  const wsLink = new GraphQLWsLink(
    createClient({
      url: wsUrl,
      webSocketImpl: WebSocket, // in a browser, leave this out
      // Called on every (re)connect, so a refreshed token is picked up.
      connectionParams: () => ({ token: getToken() }),
      on: { closed: (event) => onClosed?.(event.code) },
    }),
  );
  const isSubscription = ({ query }) => {
    const definition = getMainDefinition(query);
    return definition.kind === 'OperationDefinition' && definition.operation === 'subscription';
  };
  return new ApolloClient({
    link: split(isSubscription, wsLink, authLink.concat(new HttpLink({ uri: httpUrl }))),
    cache: new InMemoryCache({
      typePolicies: { Query: { fields: { conversation: relayStylePagination(['withUserId']) } } },
    }),
  });
}
// --- end of README setup ---

/** A signed-up user with their own Apollo Client, like one browser tab. */
async function signUp(username) {
  const user = { token: null, closeCodes: [] };
  user.client = createApolloClient({
    httpUrl: server.url,
    wsUrl: server.wsUrl,
    getToken: () => user.token,
    onClosed: (code) => user.closeCodes.push(code),
  });
  const { data } = await user.client.mutate({
    mutation: gql(ops.REGISTER),
    variables: { input: { phoneNumber: phoneNumber(), username, password: 'correct-horse-battery' } },
  });
  user.token = data.register.token;
  user.id = data.register.profileId;
  return user;
}

function listen(user) {
  const received = [];
  const errors = [];
  const subscription = user.client.subscribe({ query: gql(ops.MESSAGE_RECEIVED) }).subscribe({
    next: (result) => (result.error ? errors.push(result.error) : received.push(result.data.messageReceived)),
    error: (error) => errors.push(error),
  });
  return { received, errors, stop: () => subscription.unsubscribe() };
}

async function sendFrom(user, to, content) {
  const { data } = await user.client.mutate({
    mutation: gql(ops.SEND_MESSAGE),
    variables: { input: { recipientId: to.id, content } },
  });
  return data.sendMessage;
}

test('Apollo Client: live messages, replay after reconnect, markDelivered, history paging, logout', async () => {
  const alice = await signUp('alice');
  const bob = await signUp('bob');

  // Live.
  let bobListens = listen(bob);
  await sendFrom(alice, bob, 'hi bob');
  await waitUntil(() => bobListens.received.length === 1, { what: 'the live message' });
  assert.equal(bobListens.received[0].sender.username, 'alice');
  await bob.client.mutate({ mutation: gql(ops.MARK_DELIVERED), variables: { ids: [bobListens.received[0].id] } });
  bobListens.stop();

  // Missed while away, replayed in order on the next subscription, then live again.
  for (const content of ['m1', 'm2', 'm3', 'm4']) await sendFrom(alice, bob, content);
  bobListens = listen(bob);
  await waitUntil(() => bobListens.received.length === 4, { what: 'the replay' });
  await sendFrom(alice, bob, 'm5');
  await waitUntil(() => bobListens.received.length === 5, { what: 'live after replay' });
  assert.deepEqual(bobListens.received.map((m) => m.content), ['m1', 'm2', 'm3', 'm4', 'm5']);

  // History, newest page first, then older pages with fetchMore merged by the cache.
  const query = bob.client.watchQuery({
    query: gql(ops.CONVERSATION),
    variables: { withUserId: alice.id, last: 4 },
  });
  const subscription = query.subscribe(() => {});
  let page = await firstValueFrom(query.pipe(filter((result) => result.dataState === 'complete')));
  assert.deepEqual(page.data.conversation.edges.map((e) => e.node.content), ['m2', 'm3', 'm4', 'm5']);
  assert.equal(page.data.conversation.pageInfo.hasPreviousPage, true);
  page = await query.fetchMore({ variables: { before: page.data.conversation.pageInfo.startCursor } });
  const merged = bob.client.readQuery({ query: gql(ops.CONVERSATION), variables: { withUserId: alice.id, last: 4 } });
  assert.deepEqual(merged.conversation.edges.map((e) => e.node.content), ['hi bob', 'm1', 'm2', 'm3', 'm4', 'm5']);

  // Logout ends the subscription with 4401, which the client treats as final.
  await bob.client.mutate({ mutation: gql(ops.LOGOUT) });
  await waitUntil(() => bobListens.errors.length === 1, { what: 'the subscription to end' });
  // (Earlier entries: 1000 each time the idle client closed its socket, answered cleanly.)
  assert.equal(bob.closeCodes.at(-1), 4401);
  assert.ok(!bob.closeCodes.includes(1006), `an unclean close: ${bob.closeCodes}`);
  bobListens.stop();
  subscription.unsubscribe();
  alice.client.stop();
  bob.client.stop();
});

test('Apollo Client: the chat list, and markRead updating it from the cache', async () => {
  const alice = await signUp('alice');
  const bob = await signUp('bob');
  const carol = await signUp('carol');
  await sendFrom(bob, alice, 'hi alice');
  const newest = await sendFrom(bob, alice, 'are you there?');
  await sendFrom(carol, alice, 'lunch?');

  const list = alice.client.watchQuery({ query: gql(ops.CHAT_LIST), variables: { first: 20 } });
  const seen = [];
  const subscription = list.subscribe((result) => {
    if (result.dataState === 'complete') seen.push(result.data.conversations.edges.map((e) => e.node));
  });
  await waitUntil(() => seen.length === 1, { what: 'the chat list' });
  assert.deepEqual(
    seen[0].map((c) => [c.with.username, c.lastMessage.content, c.unreadCount]),
    [['carol', 'lunch?', 1], ['bob', 'are you there?', 2]],
  );

  // The mutation returns the Conversation by id, so the watched list updates with no refetch.
  const { data } = await alice.client.mutate({
    mutation: gql(ops.MARK_READ),
    variables: { withUserId: bob.id, upTo: newest.id },
  });
  assert.equal(data.markRead.unreadCount, 0);
  assert.equal(data.markRead.lastMessage.status, 'READ');
  await waitUntil(() => seen.length === 2, { what: 'the cached list to update' });
  assert.deepEqual(seen[1].map((c) => [c.with.username, c.unreadCount]), [['carol', 1], ['bob', 0]]);

  // Bob, the sender, sees the ticks by querying his history.
  const history = await bob.client.query({
    query: gql(ops.CONVERSATION),
    variables: { withUserId: alice.id, last: 10 },
    fetchPolicy: 'network-only',
  });
  assert.deepEqual(
    history.data.conversation.edges.map((e) => [e.node.content, e.node.status]),
    [['hi alice', 'READ'], ['are you there?', 'READ']],
  );
  subscription.unsubscribe();
  for (const user of [alice, bob, carol]) user.client.stop();
});

test('Apollo Client: ticks update live in the sender\'s cache, and another device sees what was sent', async () => {
  const alice = await signUp('alice');
  const bob = await signUp('bob');
  // Alice's laptop: a second client, signed in as her.
  const laptop = createApolloClient({ httpUrl: server.url, wsUrl: server.wsUrl, getToken: () => alice.token });
  const listenToEvents = (client) => {
    const events = [];
    const subscription = client
      .subscribe({ query: gql(ops.CHAT_EVENTS) })
      .subscribe({ next: (result) => result.data && events.push(result.data.chatEvents) });
    return { events, stop: () => subscription.unsubscribe() };
  };
  const phoneEvents = listenToEvents(alice.client);
  const laptopEvents = listenToEvents(laptop);
  // Subscriptions start asynchronously and events are live only: probe until both hear one.
  const heardSent = (listener, id) => listener.events.some((e) => e.__typename === 'MessageSent' && e.message.id === id);
  await waitUntil(
    async () => {
      const probe = await sendFrom(alice, bob, 'probe');
      const deadline = Date.now() + 500;
      while (Date.now() < deadline) {
        if (heardSent(phoneEvents, probe.id) && heardSent(laptopEvents, probe.id)) return true;
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
      return false;
    },
    { what: 'both devices to listen' },
  );

  // Sent from the phone, shown on the laptop.
  const sent = await sendFrom(alice, bob, 'see you at 8');
  await waitUntil(() => heardSent(laptopEvents, sent.id), { what: 'the laptop to see the sent message' });
  assert.equal(laptopEvents.events.find((e) => e.message?.id === sent.id).message.content, 'see you at 8');

  // Alice's phone shows the conversation; the ticks change in its cache as events arrive.
  const history = alice.client.watchQuery({ query: gql(ops.CONVERSATION), variables: { withUserId: bob.id, last: 50 } });
  const statuses = [];
  const watching = history.subscribe((result) => {
    if (result.dataState !== 'complete') return;
    const node = result.data.conversation.edges.find((e) => e.node.id === sent.id)?.node;
    if (node && statuses.at(-1) !== node.status) statuses.push(node.status);
  });
  await waitUntil(() => statuses.length === 1, { what: 'the history' });
  await bob.client.mutate({ mutation: gql(ops.MARK_DELIVERED), variables: { ids: [sent.id] } });
  await waitUntil(() => statuses.at(-1) === 'DELIVERED', { what: 'the DELIVERED tick' });
  await bob.client.mutate({ mutation: gql(ops.MARK_READ), variables: { withUserId: alice.id, upTo: sent.id } });
  await waitUntil(() => statuses.at(-1) === 'READ', { what: 'the READ tick' });
  assert.deepEqual(statuses, ['SENT', 'DELIVERED', 'READ'], 'updated from the events, no refetch');

  watching.unsubscribe();
  phoneEvents.stop();
  laptopEvents.stop();
  for (const client of [alice.client, bob.client, laptop]) client.stop();
});

/** A stand-in SMS gateway: receives the webhook's POSTs and keeps the codes by phone number. */
async function startGateway() {
  const texts = [];
  const gateway = createServer((request, response) => {
    let body = '';
    request.on('data', (chunk) => (body += chunk));
    request.on('end', () => {
      texts.push({ body: JSON.parse(body), authorization: request.headers.authorization });
      response.writeHead(200).end();
    });
  });
  await new Promise((resolve) => gateway.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${gateway.address().port}/sms`,
    texts,
    lastCode: (phone) => texts.findLast((text) => text.body.phoneNumber === phone)?.body.code,
    close: () => new Promise((resolve) => gateway.close(resolve)),
  };
}

test('Apollo Client: sign-up with phone verification, the code arriving through the webhook', async () => {
  const gateway = await startGateway();
  const verifying = await startServer({
    PHONE_VERIFICATION: 'webhook',
    PHONE_VERIFICATION_WEBHOOK_URL: gateway.url,
    PHONE_VERIFICATION_WEBHOOK_TOKEN: 'gateway-token',
  });
  const codeOf = (error) => error.errors?.[0]?.extensions?.code;
  const signUpVerifying = async (username) => {
    const user = { token: null, phone: phoneNumber() };
    user.client = createApolloClient({ httpUrl: verifying.url, wsUrl: verifying.wsUrl, getToken: () => user.token });
    const { data } = await user.client.mutate({
      mutation: gql(ops.REGISTER),
      variables: { input: { phoneNumber: user.phone, username, password: 'correct-horse-battery' } },
    });
    user.token = data.register.token;
    user.id = data.register.profileId;
    assert.equal(data.register.user.phoneVerified, false, 'the app shows the code screen');
    return user;
  };
  const verify = (user, code) => user.client.mutate({ mutation: gql(ops.VERIFY_PHONE), variables: { code } });

  const bob = await signUpVerifying('bob');
  await verify(bob, gateway.lastCode(bob.phone));
  const alice = await signUpVerifying('alice');
  const text = gateway.texts.at(-1);
  assert.deepEqual(Object.keys(text.body).sort(), ['code', 'phoneNumber']);
  assert.equal(text.body.phoneNumber, alice.phone);
  assert.match(text.body.code, /^\d{6}$/);
  assert.equal(text.authorization, 'Bearer gateway-token');

  // Until verified, sending is refused with a code the app can branch on.
  const send = (user, to, content) =>
    user.client.mutate({ mutation: gql(ops.SEND_MESSAGE), variables: { input: { recipientId: to.id, content } } });
  await assert.rejects(send(alice, bob, 'too early'), (error) => codeOf(error) === 'PHONE_NOT_VERIFIED');
  const me = await alice.client.query({ query: gql(ops.ME) });
  assert.equal(me.data.me.phoneVerified, false);

  // A mistyped code, then "send me a new code", then the right one.
  const first = gateway.lastCode(alice.phone);
  const mistyped = String((Number(first) + 1) % 1_000_000).padStart(6, '0');
  await assert.rejects(verify(alice, mistyped), (error) => codeOf(error) === 'BAD_USER_INPUT');
  const { data: resent } = await alice.client.mutate({ mutation: gql(ops.RESEND_VERIFICATION_CODE) });
  assert.ok(Date.parse(resent.resendVerificationCode.expiresAt) > Date.now());
  await waitUntil(() => gateway.texts.filter((t) => t.body.phoneNumber === alice.phone).length === 2, {
    what: 'the second text',
  });
  const { data: verified } = await verify(alice, gateway.lastCode(alice.phone));
  assert.equal(verified.verifyPhone.phoneVerified, true);
  // The cached `me` was updated from the mutation's result (same User id), no refetch.
  const cached = alice.client.readQuery({ query: gql(ops.ME) });
  assert.equal(cached.me.phoneVerified, true);

  // Now a full member: Bob receives her message live.
  const received = [];
  const subscription = bob.client
    .subscribe({ query: gql(ops.MESSAGE_RECEIVED) })
    .subscribe({ next: (result) => result.data && received.push(result.data.messageReceived) });
  const sent = await send(alice, bob, 'verified and here');
  await waitUntil(() => received.some((m) => m.id === sent.data.sendMessage.id), { what: 'the message to Bob' });

  subscription.unsubscribe();
  for (const user of [alice, bob]) user.client.stop();
  await verifying.stop();
  await gateway.close();
});
