//! Parsing with a cache and a shape check: every document is measured (see [`document_shape`])
//! before async-graphql validates it, and documents that pass validation are kept parsed, so the
//! few operations a client sends again and again are parsed once. An operation whose validation
//! cannot depend on its variables' values (see [`validated_operations`]) is validated once, too.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, OnceLock},
};

use async_graphql::{
    Request, ServerError, ServerResult, ValidationResult,
    extensions::{
        Extension, ExtensionContext, ExtensionFactory, NextPrepareRequest, NextValidation,
    },
    parser::types::{DocumentOperations, ExecutableDocument, OperationDefinition},
};

use super::{
    document_shape::{self, ShapeLimits},
    error_codes::with_code,
    validated_operations::{self, variables_settle_validation},
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
    /// Fields whose complexity is computed from their arguments, read from the schema's registry
    /// by the first request (an extension factory never sees the registry).
    complexity_fields: Arc<OnceLock<HashSet<String>>>,
}

impl ParsedQueries {
    pub(super) fn new(limits: ShapeLimits) -> Self {
        ParsedQueries { cache: Arc::default(), limits, complexity_fields: Arc::default() }
    }
}

#[derive(Default)]
struct Cache {
    documents: HashMap<String, Parsed>,
    /// Estimated bytes held by `documents`.
    bytes: usize,
}

/// A document that passed validation for at least one of its operations.
struct Parsed {
    document: ExecutableDocument,
    /// Operations (by the name requests ask for them by) whose validation passed with variables
    /// that settle it, and what it measured: requests with settled variables reuse it.
    settled: Vec<(Option<String>, ValidationResult)>,
}

impl Cache {
    fn insert(&mut self, query: String, document: ExecutableDocument) {
        let bytes = query.len() * (DOCUMENT_BYTES_PER_QUERY_BYTE + 1);
        if self.bytes + bytes > MAX_CACHE_BYTES {
            self.documents.clear();
            self.bytes = 0;
        }
        let parsed = Parsed { document, settled: Vec::new() };
        if self.documents.insert(query, parsed).is_none() {
            self.bytes += bytes;
        }
    }

    /// Remembers that `operation` of `query` validated to `result` with settled variables.
    fn settle(&mut self, query: &str, operation: Option<String>, result: ValidationResult) {
        if let Some(parsed) = self.documents.get_mut(query)
            && !parsed.settled.iter().any(|(name, _)| *name == operation)
        {
            parsed.settled.push((operation, result));
        }
    }
}

impl ExtensionFactory for ParsedQueries {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(ParseStep {
            cache: self.cache.clone(),
            limits: self.limits,
            complexity_fields: self.complexity_fields.clone(),
            after_validation: Mutex::new(AfterValidation::Nothing),
        })
    }
}

/// One request's parse: measures what it parsed, and caches it once validation has passed.
struct ParseStep {
    cache: Arc<Mutex<Cache>>,
    limits: ShapeLimits,
    complexity_fields: Arc<OnceLock<HashSet<String>>>,
    /// What the parse decided about validation, for the validation hook that follows it.
    after_validation: Mutex<AfterValidation>,
}

/// What the validation hook does, decided while parsing (only the parse sees the request).
enum AfterValidation {
    /// Validate; nothing to remember.
    Nothing,
    /// Validate, and when it passes remember what the parse found: the document this request
    /// parsed (waiting for validation before it may be cached: caching invalid documents let
    /// anonymous clients pin memory with junk), and whether its operation validated with settled
    /// variables.
    Remember { query: String, parsed: Option<ExecutableDocument>, settled: Option<Option<String>> },
    /// Do not validate: this operation passed before with settled variables, and so does this
    /// request.
    Skip(ValidationResult),
}

impl ParseStep {
    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn after_validation(&self) -> std::sync::MutexGuard<'_, AfterValidation> {
        self.after_validation.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether `operation`'s complexity is computed from its variables (then it never settles).
    fn complexity_reads_variables(
        &self,
        ctx: &ExtensionContext<'_>,
        document: &ExecutableDocument,
        operation: &OperationDefinition,
    ) -> bool {
        let fields = self
            .complexity_fields
            .get_or_init(|| validated_operations::complexity_fields(&ctx.schema_env.registry));
        validated_operations::complexity_reads_variables(fields, document, operation)
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
        let name = request.operation_name.as_deref();
        let cacheable = request.query.len() <= MAX_CACHED_QUERY_BYTES;
        let cached = self.cache().documents.get(&request.query).map(|parsed| {
            let settled = parsed.settled.iter().find(|(settled, _)| settled.as_deref() == name);
            (parsed.document.clone(), settled.map(|(_, result)| *result))
        });
        let (document, settled_before, parsed) = match cached {
            Some((document, settled_before)) => (document, settled_before, None),
            None => match async_graphql::parser::parse_query(&request.query) {
                Ok(document) => {
                    let parsed = cacheable.then(|| document.clone());
                    (document, None, parsed)
                }
                // A syntax error is left for async-graphql to report in its usual form.
                Err(_) => return next.run(ctx, request).await,
            },
        };
        // Measured after the other operations are dropped: only what runs is validated, and
        // a cached document may be asked for another of its operations next time.
        let document = only_the_named_operation(document, name).ok_or_else(|| {
            let message = format!("Unknown operation named \"{}\"", name.unwrap_or_default());
            with_code(ServerError::new(message, None), "GRAPHQL_VALIDATION_FAILED")
        })?;
        let registry = &ctx.schema_env.registry;
        let operation = the_operation(&document, name);
        let settles = operation.is_some_and(|operation| {
            variables_settle_validation(registry, operation, &request.variables)
        });
        *self.after_validation() = match settled_before {
            // The shape check passed before too: it reads nothing but the document.
            Some(result) if settles => AfterValidation::Skip(result),
            _ => {
                document_shape::check(&document, &self.limits).map_err(|refusal| {
                    let message = refusal.to_string();
                    with_code(ServerError::new(message, None), "GRAPHQL_VALIDATION_FAILED")
                })?;
                // Here `settled_before` is `None` whenever `settles` holds. The walk is over the
                // whole document, so it is asked last, only when its answer is used.
                let settles = settles
                    && cacheable
                    && operation.is_some_and(|operation| {
                        !self.complexity_reads_variables(ctx, &document, operation)
                    });
                if parsed.is_some() || settles {
                    let settled = settles.then(|| request.operation_name.clone());
                    AfterValidation::Remember { query: request.query.clone(), parsed, settled }
                } else {
                    AfterValidation::Nothing
                }
            }
        };
        request.set_parsed_query(document);
        next.run(ctx, request).await
    }

    async fn validation(
        &self,
        ctx: &ExtensionContext<'_>,
        next: NextValidation<'_>,
    ) -> Result<ValidationResult, Vec<ServerError>> {
        let after = std::mem::replace(&mut *self.after_validation(), AfterValidation::Nothing);
        let (query, parsed, settled) = match after {
            AfterValidation::Skip(result) => return Ok(result),
            AfterValidation::Nothing => return next.run(ctx).await,
            AfterValidation::Remember { query, parsed, settled } => (query, parsed, settled),
        };
        let result = next.run(ctx).await?;
        let mut cache = self.cache();
        if let Some(document) = parsed {
            cache.insert(query.clone(), document);
        }
        if let Some(operation) = settled {
            cache.settle(&query, operation, result);
        }
        Ok(result)
    }
}

/// The operation a request runs, from a document [`only_the_named_operation`] has trimmed:
/// `None` when async-graphql will refuse the request for not naming one of several operations,
/// or for naming the one anonymous operation.
fn the_operation<'a>(
    document: &'a ExecutableDocument,
    name: Option<&str>,
) -> Option<&'a OperationDefinition> {
    match (&document.operations, name) {
        (DocumentOperations::Single(operation), None) => Some(&operation.node),
        (DocumentOperations::Single(_), Some(_)) => None,
        (DocumentOperations::Multiple(operations), Some(name)) => {
            operations.get(name).map(|operation| &operation.node)
        }
        (DocumentOperations::Multiple(operations), None) if operations.len() == 1 => {
            operations.values().next().map(|operation| &operation.node)
        }
        (DocumentOperations::Multiple(_), None) => None,
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
mod tests;
