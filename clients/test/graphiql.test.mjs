// GraphiQL in headless Chromium, as a developer first meets the API: the page loads with no
// request leaving the server, the docs explorer lists the schema, a mutation runs from the
// editor, and a subscription shows a message the moment it is sent.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { chromium } from 'playwright-core';
import { register, send, startServer } from './support/server.mjs';

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--no-first-run'];

let server;
let browser;
before(async () => {
  server = await startServer();
  browser = await chromium.launch({ executablePath: CHROMIUM, args: FLAGS });
});
after(async () => {
  await browser?.close();
  await server?.stop();
});

/** Sets the text of the CodeMirror editor inside `selector`. */
async function setEditor(page, selector, text) {
  await page.evaluate(([selector, text]) => document.querySelector(`${selector} .CodeMirror`).CodeMirror.setValue(text), [selector, text]);
}

async function responseText(page) {
  return page.evaluate(() => document.querySelector('.graphiql-response .CodeMirror').CodeMirror.getValue());
}

test('GraphiQL works offline: docs, a mutation, a live subscription', { skip: !existsSync(CHROMIUM) && `no browser at ${CHROMIUM}` }, async () => {
  const context = await browser.newContext();
  const outside = [];
  // Anything not served by chatapp itself is recorded and refused: the page must not need it.
  await context.route('**/*', (route) => {
    const url = route.request().url();
    if (url.startsWith(server.origin)) return route.continue();
    outside.push(url);
    return route.abort();
  });
  const page = await context.newPage();
  const problems = [];
  page.on('console', (message) => message.type() === 'error' && problems.push(message.text()));
  page.on('pageerror', (error) => problems.push(error.message));
  const sockets = [];
  page.on('websocket', (socket) => {
    sockets.push(socket.url());
    socket.on('framesent', (frame) => process.env.DEBUG_WS && console.log('sent', frame.payload));
    socket.on('framereceived', (frame) => process.env.DEBUG_WS && console.log('received', frame.payload));
  });

  await page.goto(`${server.origin}/graphql`);
  await page.waitForSelector('.graphiql-container');

  // The docs explorer knows the schema, so introspection worked on default settings.
  await page.getByLabel('Show Documentation Explorer').click();
  await page.locator('.graphiql-doc-explorer').getByText('Mutation', { exact: true }).click();
  await page.locator('.graphiql-doc-explorer').getByText('sendMessage').first().waitFor();

  // A mutation typed into the editor.
  await setEditor(page, '.graphiql-query-editor', 'mutation SignUp { register(input: { phoneNumber: "+12025550190", username: "gina", password: "correct-horse-battery" }) { username token } }');
  await waitUntilParsed(page, 'SignUp');
  await page.getByLabel('Execute query (Ctrl-Enter)').click();
  await page.waitForFunction(() => document.querySelector('.graphiql-response .CodeMirror').CodeMirror.getValue().includes('"token"'));
  assert.match(await responseText(page), /"username": "gina"/);

  // A subscription, authenticated from the Headers panel.
  const alice = await register(server, 'alice');
  const bob = await register(server, 'bob');
  await page.getByText('Headers', { exact: true }).click();
  await setEditor(page, '.graphiql-editor-tool .graphiql-editor:not(.hidden)', JSON.stringify({ Authorization: `Bearer ${bob.token}` }));
  await setEditor(page, '.graphiql-query-editor', 'subscription OnMessage { messageReceived { content sender { username } } }');
  // GraphiQL parses the editor a moment after a change; it runs what it last parsed.
  await waitUntilParsed(page, 'OnMessage');
  await page.getByLabel('Execute query (Ctrl-Enter)').click();
  try {
    await sendAndWaitForIt(page, alice, bob);
  } catch (error) {
    await page.screenshot({ path: `${process.env.TMPDIR ?? '/tmp'}/graphiql-failure.png` });
    throw new Error(`${error.message}; response pane: ${await responseText(page)}; sockets: ${sockets}; problems: ${problems}`);
  }

  assert.deepEqual(outside, [], 'requests left the server');
  assert.ok(sockets.length > 0 && sockets.every((url) => url.startsWith(server.wsUrl)), `websockets: ${sockets}`);
  assert.deepEqual(problems, [], 'console errors (CSP violations show here)');
  await context.close();
});

/** Waits until GraphiQL has parsed the editor's operation (it records it in its tab state). */
async function waitUntilParsed(page, operationName) {
  await page.waitForFunction((name) => {
    const state = JSON.parse(localStorage.getItem('graphiql:tabState') ?? '{"tabs":[]}');
    return state.tabs.some((tab) => tab.operationName === name);
  }, operationName);
}

/** Sends a message to `bob` and waits until the subscription pane shows it. */
async function sendAndWaitForIt(page, alice, bob) {
  await send(server, alice, bob, 'hello from the test');
  await page.waitForFunction(
    () => document.querySelector('.graphiql-response .CodeMirror').CodeMirror.getValue().includes('hello from the test'),
    undefined,
    { timeout: 10_000 },
  );
}
