//! Parsing with a cache and a shape check: every document is measured (see [`document_shape`])
//! before async-graphql validates it, and documents that pass validation are kept parsed, so the
//! few operations a client sends again and again are parsed once.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
};

use async_graphql::{
    Request, ServerError, ServerResult, ValidationResult,
    extensions::{
        Extension, ExtensionContext, ExtensionFactory, NextPrepareRequest, NextValidation,
    },
    parser::types::{DocumentOperations, ExecutableDocument},
};

use super::{
    document_shape::{self, ShapeLimits},
    error_codes::with_code,
};

/// Longer queries are parsed each time (they are rare, and would make the cache large).
const MAX_CACHED_QUERY_BYTES: usize = 4096;
/// Most memory the cache may hold, by the estimate below. When full it starts over, so a flood
/// of distinct queries costs nothing but cache misses.
const MAX_CACHE_BYTES: usize = 16 * 1024 * 1024;
/// A parsed document's size per byte of query text, roughly: each name, value and selection
/// becomes a positioned node of a hundred bytes or more (the security review saw 512 distinct
/// 4 KB queries pin about 300 MB, some 150 bytes per byte of text; the old cache measured
/// +140 MB here for short field names).
pub(super) const DOCUMENT_BYTES_PER_QUERY_BYTE: usize = 160;

/// The shared cache; [`ExtensionFactory::create`] hands each request its own [`ParseStep`].
pub(super) struct ParsedQueries {
    cache: Arc<Mutex<Cache>>,
    limits: ShapeLimits,
}

impl ParsedQueries {
    pub(super) fn new(limits: ShapeLimits) -> Self {
        ParsedQueries { cache: Arc::default(), limits }
    }
}

#[derive(Default)]
struct Cache {
    documents: HashMap<String, ExecutableDocument>,
    /// Estimated bytes held by `documents`.
    bytes: usize,
}

impl Cache {
    fn insert(&mut self, query: String, document: ExecutableDocument) {
        let bytes = query.len() * (DOCUMENT_BYTES_PER_QUERY_BYTE + 1);
        if self.bytes + bytes > MAX_CACHE_BYTES {
            self.documents.clear();
            self.bytes = 0;
        }
        if self.documents.insert(query, document).is_none() {
            self.bytes += bytes;
        }
    }
}

impl ExtensionFactory for ParsedQueries {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(ParseStep {
            cache: self.cache.clone(),
            limits: self.limits,
            unvalidated: Mutex::default(),
        })
    }
}

/// One request's parse: measures what it parsed, and caches it once validation has passed.
struct ParseStep {
    cache: Arc<Mutex<Cache>>,
    limits: ShapeLimits,
    /// The document this request parsed, waiting for validation before it may be cached:
    /// caching invalid documents let anonymous clients pin memory with junk.
    unvalidated: Mutex<Option<(String, ExecutableDocument)>>,
}

impl ParseStep {
    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[async_trait::async_trait]
impl Extension for ParseStep {
    /// Parses here rather than in the `parse_query` hook: async-graphql runs its own recursion
    /// check inside the parse step, and that check inlines every fragment spread, so an
    /// exponential document must be refused before it.
    async fn prepare_request(
        &self,
        ctx: &ExtensionContext<'_>,
        mut request: Request,
        next: NextPrepareRequest<'_>,
    ) -> ServerResult<Request> {
        let cached = self.cache().documents.get(&request.query).cloned();
        let document = match cached {
            Some(document) => document,
            None => match async_graphql::parser::parse_query(&request.query) {
                Ok(document) => {
                    if request.query.len() <= MAX_CACHED_QUERY_BYTES {
                        *self.unvalidated.lock().unwrap_or_else(|p| p.into_inner()) =
                            Some((request.query.clone(), document.clone()));
                    }
                    document
                }
                // A syntax error is left for async-graphql to report in its usual form.
                Err(_) => return next.run(ctx, request).await,
            },
        };
        // Measured after the other operations are dropped: only what runs is validated, and
        // a cached document may be asked for another of its operations next time.
        let name = request.operation_name.as_deref();
        let document = only_the_named_operation(document, name).ok_or_else(|| {
            let message = format!("Unknown operation named \"{}\"", name.unwrap_or_default());
            with_code(ServerError::new(message, None), "GRAPHQL_VALIDATION_FAILED")
        })?;
        document_shape::check(&document, &self.limits).map_err(|refusal| {
            with_code(ServerError::new(refusal.to_string(), None), "GRAPHQL_VALIDATION_FAILED")
        })?;
        request.set_parsed_query(document);
        next.run(ctx, request).await
    }

    async fn validation(
        &self,
        ctx: &ExtensionContext<'_>,
        next: NextValidation<'_>,
    ) -> Result<ValidationResult, Vec<ServerError>> {
        let result = next.run(ctx).await?;
        let validated = self.unvalidated.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some((query, document)) = validated {
            self.cache().insert(query, document);
        }
        Ok(result)
    }
}

/// Keeps only the operation the request names, and the fragments it reaches.
///
/// async-graphql validates every operation of a document against the one request's variables
/// (its pull request #1669 is open), so a document holding several operations with different
/// variables, as a GraphiQL tab or a shared operations file does, failed with "Variable ... is
/// not defined". Only the named operation runs, so only it is validated. `None` when the
/// document has several operations and none of that name (async-graphql would report the
/// other operations' validation errors instead of the unknown name).
fn only_the_named_operation(
    mut document: ExecutableDocument,
    name: Option<&str>,
) -> Option<ExecutableDocument> {
    let (Some(name), DocumentOperations::Multiple(operations)) = (name, &mut document.operations)
    else {
        return Some(document);
    };
    if !operations.contains_key(name) {
        return None;
    }
    if operations.len() < 2 {
        return Some(document);
    }
    operations.retain(|operation, _| operation.as_str() == name);
    let mut reached = HashSet::new();
    let mut pending = Vec::new();
    for operation in operations.values() {
        document_shape::collect_spreads(&operation.node.selection_set.node, &mut pending);
    }
    let mut pending: Vec<String> = pending.into_iter().map(String::from).collect();
    while let Some(fragment) = pending.pop() {
        if !reached.insert(fragment.clone()) {
            continue;
        }
        if let Some(definition) = document.fragments.get(fragment.as_str()) {
            let mut spreads = Vec::new();
            document_shape::collect_spreads(&definition.node.selection_set.node, &mut spreads);
            pending.extend(spreads.into_iter().map(String::from));
        }
    }
    document.fragments.retain(|fragment, _| reached.contains(fragment.as_str()));
    Some(document)
}

#[cfg(test)]
mod tests {
    use async_graphql::{EmptyMutation, EmptySubscription, Object, Schema};

    use super::*;

    struct Query;

    #[Object]
    impl Query {
        async fn value(&self) -> i32 {
            1
        }
    }

    /// Before: every parsed document was cached, so 512 distinct junk queries pinned hundreds
    /// of megabytes.
    #[tokio::test]
    async fn only_documents_that_validate_are_cached() {
        let limits = ShapeLimits { max_inlined_fields: 100, max_depth: 10, introspection: true };
        let extension = ParsedQueries::new(limits);
        let cache = extension.cache.clone();
        let schema =
            Schema::build(Query, EmptyMutation, EmptySubscription).extension(extension).finish();
        let cached = || cache.lock().unwrap().documents.len();
        for junk in ["{ nope }", "{ value nope }", "{ value(x: 1) }"] {
            assert!(schema.execute(junk).await.is_err());
        }
        assert_eq!(cached(), 0);
        assert!(schema.execute("{ value }").await.is_ok());
        assert_eq!(cached(), 1);
        // The cached document serves the next request.
        assert_eq!(schema.execute("{ value }").await.data.to_string(), "{value: 1}");
    }

    #[test]
    fn the_cache_is_bounded_by_bytes() {
        let mut cache = Cache::default();
        let document = async_graphql::parser::parse_query("{ __typename }").unwrap();
        let query_bytes = 4000;
        for n in 0..1000 {
            let query = format!("{n:0>query_bytes$}");
            cache.insert(query, document.clone());
            assert!(cache.bytes <= MAX_CACHE_BYTES);
        }
        assert!(
            cache.documents.len()
                <= MAX_CACHE_BYTES / (query_bytes * DOCUMENT_BYTES_PER_QUERY_BYTE)
        );
        assert!(!cache.documents.is_empty());
    }
}
