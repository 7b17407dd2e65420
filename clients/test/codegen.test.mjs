// graphql-codegen's client preset, as a frontend team runs it: types generated from the live
// server's introspection (on default settings) and from the checked-in schema.graphql must be
// identical and compile under `tsc --strict`.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';
import { generate } from '@graphql-codegen/cli';
import { startServer } from './support/server.mjs';

const CLIENTS = fileURLToPath(new URL('../', import.meta.url));
const OUT = `${CLIENTS}.generated/`;

let server;
before(async () => {
  server = await startServer();
});
after(() => server?.stop());

// --- README: codegen config (kept in step with README.md "Use it from a frontend") ---
const codegenConfig = (schema) => ({
  schema,
  documents: ['operations/*.graphql'],
  generates: {
    'src/gql/': {
      preset: 'client',
      config: { scalars: { DateTime: 'string' }, enumsAsTypes: true },
    },
  },
});
// --- end of README config ---

async function generateFrom(schema) {
  const config = { ...codegenConfig(schema), cwd: CLIENTS, silent: true };
  const files = await generate(config, false);
  return Object.fromEntries(files.map((file) => [file.filename, file.content]));
}

test('codegen from the live server equals codegen from schema.graphql, and type-checks', async () => {
  const fromUrl = await generateFrom(server.url);
  const fromFile = await generateFrom('../schema.graphql');
  assert.deepEqual(Object.keys(fromUrl).sort(), Object.keys(fromFile).sort());
  for (const name of Object.keys(fromUrl)) assert.equal(fromUrl[name], fromFile[name], `${name} differs`);

  const types = fromUrl['src/gql/graphql.ts'];
  // The DateTime scalar is mapped to string, not left as any.
  assert.match(types, /sentAt: string/);
  assert.doesNotMatch(types, /: any/);
  assert.match(types, /export const SendMessageDocument/);

  await rm(OUT, { recursive: true, force: true });
  await mkdir(`${OUT}gql`, { recursive: true });
  for (const [name, content] of Object.entries(fromUrl)) {
    await writeFile(`${OUT}${name.replace('src/', '')}`, content);
  }
  // What a component would write; a wrong field or type fails to compile.
  await writeFile(
    `${OUT}usage.ts`,
    `import { SendMessageDocument, type SendMessageMutation, type ConversationQueryVariables } from './gql/graphql';
export const document = SendMessageDocument;
export function sentAt(result: SendMessageMutation): Date {
  return new Date(result.sendMessage.sentAt);
}
export const variables: ConversationQueryVariables = { withUserId: 'u1', last: 20 };
`,
  );
  await writeFile(
    `${OUT}tsconfig.json`,
    JSON.stringify({
      compilerOptions: { strict: true, noEmit: true, module: 'esnext', moduleResolution: 'bundler', target: 'es2022', skipLibCheck: true },
      include: ['**/*.ts'],
    }),
  );
  const tsc = fileURLToPath(new URL('../node_modules/typescript/bin/tsc', import.meta.url));
  try {
    await promisify(execFile)(process.execPath, [tsc, '-p', OUT]);
  } catch (error) {
    assert.fail(`tsc --strict failed:\n${error.stdout}${error.stderr}`);
  }
  // Nothing else of the preset's output is needed to compile.
  assert.ok((await readFile(`${OUT}gql/gql.ts`, 'utf8')).includes('export function graphql'));
});
