// graphql-http's server audit: the reference checks of the GraphQL-over-HTTP spec, the ones
// Apollo Server, GraphQL Yoga and Mercurius publish results for. Every MUST and every SHOULD
// must pass; MAY items are reported.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { serverAudits } from 'graphql-http';
import { startServer } from './support/server.mjs';

let server;
before(async () => {
  server = await startServer();
});
after(() => server?.stop());

test('graphql-http server audit: every MUST and SHOULD passes', async () => {
  const results = [];
  for (const audit of serverAudits({ url: () => server.url, fetchFn: fetch })) {
    results.push({ name: audit.name, ...(await audit.fn()) });
  }
  const level = (name) => name.split(' ')[0];
  const failed = results.filter((result) => result.status !== 'ok');
  const summary = {};
  for (const result of results) {
    const key = `${level(result.name)} ${result.status}`;
    summary[key] = (summary[key] ?? 0) + 1;
  }
  console.log('audit summary', JSON.stringify(summary));
  for (const result of failed) console.log(`${result.status}: ${result.name}: ${result.reason}`);
  const mustOrShould = failed.filter((result) => ['MUST', 'SHOULD'].includes(level(result.name)));
  assert.deepEqual(mustOrShould.map((result) => result.name), []);
});
