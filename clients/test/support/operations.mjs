// The operations in operations/chat.graphql, by name, as query strings: the Apollo and urql
// flows send exactly what graphql-codegen generates types for.
import { readFileSync } from 'node:fs';
import { parse, print } from 'graphql';

const document = parse(readFileSync(new URL('../../operations/chat.graphql', import.meta.url), 'utf8'));
const byName = Object.fromEntries(document.definitions.map((definition) => [definition.name.value, print(definition)]));

export const REGISTER = byName.Register;
export const VERIFY_PHONE = byName.VerifyPhone;
export const RESEND_VERIFICATION_CODE = byName.ResendVerificationCode;
export const ME = byName.Me;
export const SEND_MESSAGE = byName.SendMessage;
export const MARK_DELIVERED = byName.MarkDelivered;
export const LOGOUT = byName.Logout;
export const MESSAGE_RECEIVED = byName.MessageReceived;
export const CONVERSATION = byName.Conversation;
export const CHAT_LIST = byName.ChatList;
export const MARK_READ = byName.MarkRead;
export const CHAT_EVENTS = byName.ChatEvents;
export const SET_TYPING = byName.SetTyping;
export const PRESENCE = byName.Presence;
