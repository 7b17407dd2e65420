// The chat API the conventional Node.js way, for side-by-side benchmarks with chatapp
// (BENCHMARKS.md, "How we compare"): Apollo Server 4 on Express, graphql-ws on the same port,
// better-sqlite3 in WAL mode with every commit fsynced before the reply (synchronous=FULL),
// bcrypt, JWTs. It serves the operations loadtest sends (tests/operations/operations.graphql):
// register, login, sendMessage, markDelivered, and messageReceived (undelivered backlog
// oldest first, then live, without a gap or duplicate at the seam). No rate limits: the load
// tool is one client sending for everyone. Not part of the product.
//
//   npm ci && PORT=5100 BCRYPT_COST=4 node server.js
//
// Settings: PORT (5100), BIND_ADDRESS (127.0.0.1), DATA_DIR (a new temporary directory),
// BCRYPT_COST (12), JWT_SECRET (random per start).

import { randomBytes, randomUUID } from 'node:crypto';
import { mkdtempSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { ApolloServer } from '@apollo/server';
import { expressMiddleware } from '@apollo/server/express4';
import { ApolloServerPluginDrainHttpServer } from '@apollo/server/plugin/drainHttpServer';
import { makeExecutableSchema } from '@graphql-tools/schema';
import bcrypt from 'bcrypt';
import Database from 'better-sqlite3';
import express from 'express';
import { GraphQLError } from 'graphql';
import { useServer } from 'graphql-ws/lib/use/ws';
import jwt from 'jsonwebtoken';
import { WebSocketServer } from 'ws';

const PORT = Number(process.env.PORT ?? 5100);
const BIND_ADDRESS = process.env.BIND_ADDRESS ?? '127.0.0.1';
const DATA_DIR = process.env.DATA_DIR ?? mkdtempSync(join(tmpdir(), 'chat-node-peer-'));
const BCRYPT_COST = Number(process.env.BCRYPT_COST ?? 12);
const JWT_SECRET = process.env.JWT_SECRET ?? randomBytes(32).toString('hex');

const db = new Database(join(DATA_DIR, 'chat.db'));
db.pragma('journal_mode = WAL');
db.pragma('synchronous = FULL');
db.exec(`
  CREATE TABLE IF NOT EXISTS users (
    id TEXT PRIMARY KEY,
    phone_number TEXT NOT NULL UNIQUE,
    username TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    created_at TEXT NOT NULL
  );
  CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    sender_id TEXT NOT NULL REFERENCES users(id),
    recipient_id TEXT NOT NULL REFERENCES users(id),
    content TEXT NOT NULL,
    client_message_id TEXT,
    sent_at TEXT NOT NULL,
    delivered_at TEXT
  );
  CREATE INDEX IF NOT EXISTS undelivered ON messages (recipient_id, seq) WHERE delivered_at IS NULL;
`);

const statements = {
  insertUser: db.prepare(
    'INSERT INTO users (id, phone_number, username, password_hash, created_at) VALUES (?, ?, ?, ?, ?)',
  ),
  userById: db.prepare('SELECT id, username FROM users WHERE id = ?'),
  userByPhone: db.prepare('SELECT id, password_hash FROM users WHERE phone_number = ?'),
  insertMessage: db.prepare(
    `INSERT INTO messages (id, sender_id, recipient_id, content, client_message_id, sent_at)
     VALUES (?, ?, ?, ?, ?, ?) RETURNING *`,
  ),
  undelivered: db.prepare(
    `SELECT * FROM messages WHERE recipient_id = ? AND delivered_at IS NULL AND seq > ?
     ORDER BY seq LIMIT 500`,
  ),
  markDelivered: db.prepare(
    `UPDATE messages SET delivered_at = coalesce(delivered_at, ?)
     WHERE id = ? AND recipient_id = ? RETURNING *`,
  ),
};

const PHONE = /^\+[1-9][0-9]{7,14}$/;

function fail(message, code) {
  return new GraphQLError(message, { extensions: { code } });
}

function issueToken(userId) {
  return jwt.sign({ sub: userId }, JWT_SECRET, { expiresIn: '7d' });
}

function viewerFrom(token) {
  if (!token) return null;
  try {
    return jwt.verify(token, JWT_SECRET).sub;
  } catch {
    return null;
  }
}

function requireViewer(context) {
  if (!context.viewer) throw fail('authentication required', 'UNAUTHENTICATED');
  return context.viewer;
}

// Live messages per recipient: each open messageReceived registers a listener.
const listeners = new Map();

function listen(userId, listener) {
  let set = listeners.get(userId);
  if (!set) listeners.set(userId, (set = new Set()));
  set.add(listener);
  return () => {
    set.delete(listener);
    if (set.size === 0) listeners.delete(userId);
  };
}

function publish(message) {
  for (const listener of listeners.get(message.recipient_id) ?? []) listener(message);
}

// The backlog oldest first, then live messages; subscribed before the backlog is read, and
// live messages the backlog already held are skipped by their sequence number.
async function* replayThenLive(userId) {
  const queue = [];
  let wake = null;
  const stop = listen(userId, (message) => {
    queue.push(message);
    if (wake) wake();
  });
  try {
    let last = 0;
    for (;;) {
      const page = statements.undelivered.all(userId, last);
      for (const message of page) {
        last = message.seq;
        yield { messageReceived: message };
      }
      if (page.length < 500) break;
    }
    for (;;) {
      while (queue.length > 0) {
        const message = queue.shift();
        if (message.seq > last) {
          last = message.seq;
          yield { messageReceived: message };
        }
      }
      await new Promise((resolve) => (wake = resolve));
      wake = null;
    }
  } finally {
    stop();
  }
}

const typeDefs = `#graphql
  type User { id: ID! username: String! }
  type Message {
    id: ID!
    senderId: ID!
    recipientId: ID!
    content: String!
    sentAt: String!
    deliveredAt: String
    clientMessageId: String
    sender: User!
    recipient: User!
  }
  type Session { token: String! profileId: ID! user: User! }
  input RegisterInput { phoneNumber: String! username: String! password: String! }
  input LoginInput { phoneNumber: String! password: String! }
  input SendMessageInput { recipientId: ID! content: String! clientMessageId: String }
  type Query { me: User }
  type Mutation {
    register(input: RegisterInput!): Session!
    login(input: LoginInput!): Session!
    sendMessage(input: SendMessageInput!): Message!
    markDelivered(messageIds: [ID!]!): [Message!]!
  }
  type Subscription { messageReceived: Message! }
`;

const session = (userId) => ({ token: issueToken(userId), profileId: userId, user: { id: userId } });

const resolvers = {
  Query: {
    me: (_, __, context) => statements.userById.get(requireViewer(context)) ?? null,
  },
  Mutation: {
    async register(_, { input }) {
      const { phoneNumber, username, password } = input;
      if (!PHONE.test(phoneNumber)) throw fail('invalid phone number', 'BAD_USER_INPUT');
      if (username.length < 3 || username.length > 32) throw fail('invalid username', 'BAD_USER_INPUT');
      if (password.length < 8) throw fail('password too short', 'BAD_USER_INPUT');
      const hash = await bcrypt.hash(password, BCRYPT_COST);
      const id = randomUUID();
      try {
        statements.insertUser.run(id, phoneNumber, username, hash, new Date().toISOString());
      } catch (error) {
        if (error.code === 'SQLITE_CONSTRAINT_UNIQUE') throw fail('phone number taken', 'CONFLICT');
        throw error;
      }
      return session(id);
    },
    async login(_, { input }) {
      const user = statements.userByPhone.get(input.phoneNumber);
      const ok = user && (await bcrypt.compare(input.password, user.password_hash));
      if (!ok) throw fail('wrong phone number or password', 'UNAUTHENTICATED');
      return session(user.id);
    },
    sendMessage(_, { input }, context) {
      const sender = requireViewer(context);
      const content = input.content.trim();
      if (content.length === 0 || content.length > 4000) throw fail('invalid content', 'BAD_USER_INPUT');
      if (!statements.userById.get(input.recipientId)) throw fail('no such recipient', 'NOT_FOUND');
      const message = statements.insertMessage.get(
        randomUUID(),
        sender,
        input.recipientId,
        content,
        input.clientMessageId ?? null,
        new Date().toISOString(),
      );
      publish(message);
      return message;
    },
    markDelivered(_, { messageIds }, context) {
      const viewer = requireViewer(context);
      const now = new Date().toISOString();
      return db.transaction(() =>
        messageIds.map((id) => statements.markDelivered.get(now, id, viewer)).filter(Boolean),
      )();
    },
  },
  Subscription: {
    messageReceived: {
      subscribe: (_, __, context) => replayThenLive(requireViewer(context)),
    },
  },
  Message: {
    senderId: (message) => message.sender_id,
    recipientId: (message) => message.recipient_id,
    sentAt: (message) => message.sent_at,
    deliveredAt: (message) => message.delivered_at,
    clientMessageId: (message) => message.client_message_id,
    sender: (message) => statements.userById.get(message.sender_id),
    recipient: (message) => statements.userById.get(message.recipient_id),
  },
};

const schema = makeExecutableSchema({ typeDefs, resolvers });
const app = express();
const httpServer = createServer(app);
const wsServer = new WebSocketServer({ server: httpServer, path: '/graphql' });
const wsCleanup = useServer(
  {
    schema,
    context: (ctx) => ({ viewer: ctx.extra.viewer }),
    onConnect: (ctx) => {
      const token = ctx.connectionParams?.token ?? ctx.connectionParams?.authorization?.replace(/^Bearer /, '');
      ctx.extra.viewer = viewerFrom(token);
      return Boolean(ctx.extra.viewer);
    },
  },
  wsServer,
);
const apollo = new ApolloServer({
  schema,
  plugins: [
    ApolloServerPluginDrainHttpServer({ httpServer }),
    { async serverWillStart() { return { async drainServer() { await wsCleanup.dispose(); } }; } },
  ],
});
await apollo.start();
app.get('/healthz', (_, res) => res.json({ status: 'ok' }));
app.use(
  '/graphql',
  express.json({ limit: '1mb' }),
  expressMiddleware(apollo, {
    context: async ({ req }) => ({
      viewer: viewerFrom(req.headers.authorization?.replace(/^Bearer /, '')),
    }),
  }),
);
httpServer.listen(PORT, BIND_ADDRESS, () => {
  console.log(`node peer on http://${BIND_ADDRESS}:${PORT}/graphql (bcrypt cost ${BCRYPT_COST}, data ${DATA_DIR})`);
});
