// README.md's frontend setups are the ones this suite runs: each block marked
// "--- README: … ---" in a test file must appear in README.md exactly.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';

test('README quotes the tested Apollo, urql and codegen setups exactly', async () => {
  const readme = await readFile(new URL('../../README.md', import.meta.url), 'utf8');
  for (const file of ['apollo.test.mjs', 'urql.test.mjs', 'codegen.test.mjs']) {
    const source = await readFile(new URL(file, import.meta.url), 'utf8');
    const block = source.split(/^\/\/ --- README: .*$/m)[1]?.split(/^\/\/ --- end of README .*$/m)[0];
    assert.ok(block, `${file} has no README block`);
    assert.ok(readme.includes(block.trim()), `README.md does not quote the setup in ${file}`);
  }
});
