//! Every error a client sees carries an `extensions.code`.

use std::sync::Arc;

use async_graphql::{
    Response, ServerError, ServerResult, ValidationResult, Variables,
    extensions::{
        Extension, ExtensionContext, ExtensionFactory, NextExecute, NextParseQuery, NextValidation,
    },
    parser::types::ExecutableDocument,
};

/// Most validation errors reported for one document. A 64 KiB document of unknown fields would
/// otherwise answer with tens of thousands of errors, megabytes of them; the first few are
/// what a developer reads anyway.
pub const MAX_REPORTED_ERRORS: usize = 20;

/// Gives every error an `extensions.code`, so clients can branch on codes alone: syntax errors
/// are `GRAPHQL_PARSE_FAILED`, documents the schema rejects (unknown fields, wrong argument
/// types, depth and complexity limits) are `GRAPHQL_VALIDATION_FAILED`, and values that fail
/// to convert while executing are `BAD_USER_INPUT`. Errors already coded keep their code.
pub(super) struct ErrorCodes;

impl ExtensionFactory for ErrorCodes {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(ErrorCodes)
    }
}

#[async_trait::async_trait]
impl Extension for ErrorCodes {
    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        next.run(ctx, query, variables)
            .await
            .map_err(|error| with_code(error, "GRAPHQL_PARSE_FAILED"))
    }

    async fn validation(
        &self,
        ctx: &ExtensionContext<'_>,
        next: NextValidation<'_>,
    ) -> Result<ValidationResult, Vec<ServerError>> {
        next.run(ctx).await.map_err(|errors| {
            let total = errors.len();
            let mut errors: Vec<_> = errors
                .into_iter()
                .take(MAX_REPORTED_ERRORS)
                .map(|error| with_code(error, "GRAPHQL_VALIDATION_FAILED"))
                .collect();
            if total > MAX_REPORTED_ERRORS {
                let more = total - MAX_REPORTED_ERRORS;
                let message = format!("…and {more} more validation errors, not shown.");
                errors
                    .push(with_code(ServerError::new(message, None), "GRAPHQL_VALIDATION_FAILED"));
            }
            errors
        })
    }

    async fn execute(
        &self,
        ctx: &ExtensionContext<'_>,
        operation_name: Option<&str>,
        next: NextExecute<'_>,
    ) -> Response {
        let mut response = next.run(ctx, operation_name).await;
        code_execution_errors(&mut response);
        response
    }
}

/// Codes the errors of an executed operation: values that failed to convert are
/// `BAD_USER_INPUT`; errors already coded keep their code.
pub(super) fn code_execution_errors(response: &mut Response) {
    let errors = std::mem::take(&mut response.errors);
    response.errors = errors.into_iter().map(|error| with_code(error, "BAD_USER_INPUT")).collect();
}

/// Sets `extensions.code` unless the error has one already.
pub(super) fn with_code(mut error: ServerError, code: &str) -> ServerError {
    let extensions = error.extensions.get_or_insert_with(Default::default);
    if extensions.get("code").is_none() {
        extensions.set("code", code);
    }
    error
}
