//! Users: the `User` type as the schema shows it and the queries that find users. What a user
//! is, and the rules for phone numbers, usernames and passwords, live in [`crate::domain`].

pub mod graphql;
