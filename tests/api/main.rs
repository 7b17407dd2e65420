//! Integration tests: each starts the real server on 127.0.0.1:0 and talks to it as a client
//! would, over HTTP and graphql-transport-ws websockets. `TEST_LOG=1` shows server logs.

mod abuse;
mod account;
mod auth;
mod blocking;
mod chat_events;
mod chat_list;
mod deletion;
mod full_disk;
mod helpers;
mod hostile;
mod http;
mod lifecycle;
mod limits;
mod messages;
mod protocol;
mod scale_out;
mod sessions;
mod sign_in_limits;
mod store_outage;
mod subscriptions;
mod verification;
