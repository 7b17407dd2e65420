//! The GraphQL face of phone verification: `verifyPhone` and `resendVerificationCode`.

use async_graphql::{Context, Object, SimpleObject};

use super::{Timestamp, context::ContextExt, users::UserNode};
use crate::{domain::VerificationCode, verification::PhoneVerification};

/// The outcome of `resendVerificationCode`.
#[derive(SimpleObject)]
pub struct VerificationCodeSent {
    /// A human-readable outcome.
    pub message: String,
    /// When the new code stops being accepted.
    pub expires_at: Timestamp,
}

/// Proving the caller owns their phone number.
#[derive(Default)]
pub struct VerificationMutation;

#[Object]
impl VerificationMutation {
    /// Verifies the caller's phone number with the code texted to it at registration (or by
    /// `resendVerificationCode`); spaces and dashes in `code` are ignored. From then on the
    /// account can send, be found by number and receive. Each code is good for a few minutes
    /// and 5 tries; a wrong, expired or used-up code is `BAD_USER_INPUT` and the message says
    /// which. On an account already verified it changes nothing and returns the user. Limited
    /// per caller with the other account changes (`RATE_LIMITED`).
    async fn verify_phone(
        &self,
        ctx: &Context<'_>,
        code: String,
    ) -> async_graphql::Result<UserNode> {
        let viewer = ctx.viewer().await?;
        let code = VerificationCode::parse(&code)?;
        let user = ctx.service::<PhoneVerification>()?.verify(&viewer, &code).await?;
        Ok(UserNode::caller(user))
    }

    /// Texts the caller a new code; the previous one stops working. Limited per phone number
    /// and per client address (`RATE_LIMITED`, with `retryAfter`). `BAD_USER_INPUT` if the
    /// number is already verified or the server does not verify numbers; `SERVICE_UNAVAILABLE`
    /// if the text could not be handed to the SMS gateway.
    async fn resend_verification_code(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<VerificationCodeSent> {
        let viewer = ctx.viewer().await?;
        let verification = ctx.service::<PhoneVerification>()?;
        let sent = verification.resend(ctx.client_network(), &viewer).await?;
        Ok(VerificationCodeSent {
            message: "A new code is on its way".into(),
            expires_at: Timestamp(sent.expires_at),
        })
    }
}
