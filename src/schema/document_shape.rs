//! The shape of a GraphQL document, measured right after parsing and before async-graphql
//! validates it, in time linear in the document.
//!
//! Why this exists: async-graphql's validation (its depth and complexity visitors in particular)
//! walks every fragment spread by inlining it, without remembering what a fragment costs. A
//! fragment that spreads the next one twice, 30 levels deep, is under a kilobyte of text and
//! stands for 2^30 fields: validating it never finishes. Here every fragment is measured once,
//! in dependency order, and each spread adds the remembered figures, so the whole measurement is
//! one pass over the text. Documents whose inlined size is far beyond what the complexity limit
//! allows are refused before validation ever sees them, as are fragment cycles and directive
//! floods.
//!
//! The same pass computes the query depth, which is enforced here rather than by async-graphql
//! because introspection needs different rules: the standard introspection query that GraphiQL,
//! codegen and Apollo tooling send nests `ofType` a dozen levels deep (harmless: each level is one
//! object), while a field depth limit is what protects the schema's own fields. Introspection is
//! instead limited by how many *lists* it nests (`types { fields { args ... } }` multiplies;
//! `ofType` does not).

use std::collections::HashMap;

use async_graphql::parser::types::{
    Directive, ExecutableDocument, FragmentDefinition, Selection, SelectionSet,
};
use async_graphql::{Name, Positioned};

/// Most directives on one field, fragment or operation (`@include`, `@skip`, … one or two are
/// the norm).
pub const MAX_DIRECTIVES_PER_LOCATION: usize = 10;
/// Most directives in a whole document.
pub const MAX_DIRECTIVES: usize = 100;
/// How many introspection lists may nest inside one another. The standard introspection query
/// needs three (`__schema { types { fields { args { … } } } }`); each further level multiplies
/// the answer by the size of a list.
pub const INTROSPECTION_MAX_LIST_NESTING: u32 = 3;
/// How far past the complexity limit a document's inlined size may be before it is refused
/// unvalidated. Complexity weighs list fields by their size argument, so a document well under
/// the complexity limit can still have more fields than the limit; far past it, it never can.
pub const INLINED_FIELDS_PER_COMPLEXITY_POINT: u64 = 4;

/// Fields of the introspection types that return lists of objects.
const INTROSPECTION_LISTS: [&str; 8] = [
    "types",
    "fields",
    "args",
    "inputFields",
    "interfaces",
    "possibleTypes",
    "enumValues",
    "directives",
];

/// The limits a document is measured against.
#[derive(Debug, Clone, Copy)]
pub struct ShapeLimits {
    /// Most fields the document may stand for with every fragment inlined.
    pub max_inlined_fields: u64,
    /// Deepest nesting of the schema's own fields (`GRAPHQL_MAX_DEPTH`).
    pub max_depth: u32,
    /// Whether `__schema` and `__type` may be asked for (`GRAPHQL_INTROSPECTION`).
    pub introspection: bool,
}

/// Why a document was refused. The `Display` text is what the client reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    #[error("Fragment \"{0}\" spreads itself (directly or through other fragments).")]
    FragmentCycle(String),
    #[error("Query is too complex.")]
    TooLarge,
    #[error("Query is nested too deep.")]
    TooDeep,
    #[error(
        "Too many directives: at most {MAX_DIRECTIVES_PER_LOCATION} on one field, fragment or operation, and {MAX_DIRECTIVES} in a document."
    )]
    TooManyDirectives,
    #[error(
        "Introspection nests too many lists: at most {INTROSPECTION_MAX_LIST_NESTING} (as in `__schema {{ types {{ fields {{ args }} }} }}`)."
    )]
    IntrospectionTooNested,
    #[error("Introspection is disabled on this server (GRAPHQL_INTROSPECTION=false).")]
    IntrospectionDisabled,
}

/// What a selection set stands for once every fragment in it is inlined.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Summary {
    /// Fields, saturating (a hostile document can stand for more than `u64::MAX`).
    fields: u64,
    /// Deepest nesting of schema fields.
    depth: u32,
    /// Deepest nesting of introspection lists.
    introspection_lists: u32,
    /// Whether `__schema` or `__type` is asked for.
    introspection: bool,
}

impl Summary {
    /// Two selections side by side: sizes add up, depths take the larger.
    fn beside(self, other: Summary) -> Summary {
        Summary {
            fields: self.fields.saturating_add(other.fields),
            depth: self.depth.max(other.depth),
            introspection_lists: self.introspection_lists.max(other.introspection_lists),
            introspection: self.introspection || other.introspection,
        }
    }
}

/// Whether a selection set is read as the schema's own fields or inside `__schema`/`__type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Mode {
    Schema,
    Introspection,
}

const MODES: [Mode; 2] = [Mode::Schema, Mode::Introspection];

/// Measures `document` against `limits` in time linear in its size.
pub fn check(document: &ExecutableDocument, limits: &ShapeLimits) -> Result<(), ShapeError> {
    check_directives(document)?;
    let fragments = &document.fragments;
    let mut memo: HashMap<(&str, Mode), Summary> = HashMap::new();
    for name in dependency_order(document)? {
        let fragment = &fragments[name];
        for mode in MODES {
            let summary = summarize(&fragment.node.selection_set.node, mode, &memo);
            memo.insert((name, mode), summary);
        }
    }
    let mut total = Summary::default();
    for (_, operation) in document.operations.iter() {
        total = total.beside(summarize(&operation.node.selection_set.node, Mode::Schema, &memo));
    }
    if total.introspection && !limits.introspection {
        return Err(ShapeError::IntrospectionDisabled);
    }
    if total.fields > limits.max_inlined_fields {
        return Err(ShapeError::TooLarge);
    }
    if total.depth > limits.max_depth {
        return Err(ShapeError::TooDeep);
    }
    if total.introspection_lists > INTROSPECTION_MAX_LIST_NESTING {
        return Err(ShapeError::IntrospectionTooNested);
    }
    Ok(())
}

/// The selection set's summary, with spreads looked up in `memo` (fragments it does not hold
/// are unknown; validation reports those). Recursion follows the text's own nesting, which the
/// parser caps at 64 levels.
fn summarize(set: &SelectionSet, mode: Mode, memo: &HashMap<(&str, Mode), Summary>) -> Summary {
    set.items.iter().fold(Summary::default(), |summary, item| {
        let inner = match &item.node {
            Selection::Field(field) => {
                let field = &field.node;
                let name = field.name.node.as_str();
                let children = &field.selection_set.node;
                match mode {
                    Mode::Schema if name == "__schema" || name == "__type" => {
                        let inner = summarize(children, Mode::Introspection, memo);
                        Summary { depth: 1, introspection: true, ..inner }
                    }
                    Mode::Schema => {
                        let inner = summarize(children, Mode::Schema, memo);
                        Summary { depth: inner.depth + 1, ..inner }
                    }
                    Mode::Introspection => {
                        let inner = summarize(children, Mode::Introspection, memo);
                        let is_list =
                            INTROSPECTION_LISTS.contains(&name) && !children.items.is_empty();
                        Summary {
                            introspection_lists: inner.introspection_lists + u32::from(is_list),
                            ..inner
                        }
                    }
                }
                .beside(Summary { fields: 1, ..Summary::default() })
            }
            Selection::InlineFragment(fragment) => {
                summarize(&fragment.node.selection_set.node, mode, memo)
            }
            Selection::FragmentSpread(spread) => memo
                .get(&(spread.node.fragment_name.node.as_str(), mode))
                .copied()
                .unwrap_or_default(),
        };
        summary.beside(inner)
    })
}

/// The document's fragments, each after every fragment it spreads; a cycle is refused. Iterative,
/// so a long chain of fragments cannot exhaust the stack.
fn dependency_order(document: &ExecutableDocument) -> Result<Vec<&str>, ShapeError> {
    #[derive(Clone, Copy, PartialEq)]
    enum Visit {
        InProgress,
        Done,
    }
    let fragments = &document.fragments;
    let mut spreads: HashMap<&str, Vec<&str>> = HashMap::new();
    for (name, fragment) in fragments {
        let mut names = Vec::new();
        collect_spreads(&fragment.node.selection_set.node, &mut names);
        names.retain(|spread| fragments.contains_key(*spread));
        spreads.insert(name.as_str(), names);
    }
    let mut state: HashMap<&str, Visit> = HashMap::new();
    let mut order = Vec::with_capacity(fragments.len());
    for root in fragments.keys().map(Name::as_str) {
        if state.contains_key(root) {
            continue;
        }
        // Each stack entry is a fragment and how many of its spreads have been followed.
        let mut stack = vec![(root, 0usize)];
        state.insert(root, Visit::InProgress);
        while let Some((name, next)) = stack.last_mut() {
            let name = *name;
            match spreads[name].get(*next) {
                Some(&child) => {
                    *next += 1;
                    match state.get(child) {
                        Some(Visit::InProgress) => {
                            return Err(ShapeError::FragmentCycle(child.to_string()));
                        }
                        Some(Visit::Done) => {}
                        None => {
                            state.insert(child, Visit::InProgress);
                            stack.push((child, 0));
                        }
                    }
                }
                None => {
                    state.insert(name, Visit::Done);
                    order.push(name);
                    stack.pop();
                }
            }
        }
    }
    Ok(order)
}

/// The names of the fragments spread anywhere in `set`, nested selections included.
pub(super) fn collect_spreads<'a>(set: &'a SelectionSet, names: &mut Vec<&'a str>) {
    for item in &set.items {
        match &item.node {
            Selection::Field(field) => collect_spreads(&field.node.selection_set.node, names),
            Selection::InlineFragment(fragment) => {
                collect_spreads(&fragment.node.selection_set.node, names)
            }
            Selection::FragmentSpread(spread) => {
                names.push(spread.node.fragment_name.node.as_str())
            }
        }
    }
}

/// Refuses directive floods: async-graphql reports each unknown directive as its own error, so
/// twenty thousand of them made a 2.5 MB answer.
fn check_directives(document: &ExecutableDocument) -> Result<(), ShapeError> {
    let mut total = 0usize;
    let mut count = |directives: &[Positioned<Directive>]| {
        total += directives.len();
        if directives.len() > MAX_DIRECTIVES_PER_LOCATION || total > MAX_DIRECTIVES {
            Err(ShapeError::TooManyDirectives)
        } else {
            Ok(())
        }
    };
    for (_, operation) in document.operations.iter() {
        let operation = &operation.node;
        count(&operation.directives)?;
        for variable in &operation.variable_definitions {
            count(&variable.node.directives)?;
        }
        count_in_set(&operation.selection_set.node, &mut count)?;
    }
    for fragment in document.fragments.values() {
        let FragmentDefinition { directives, selection_set, .. } = &fragment.node;
        count(directives)?;
        count_in_set(&selection_set.node, &mut count)?;
    }
    Ok(())
}

fn count_in_set(
    set: &SelectionSet,
    count: &mut impl FnMut(&[Positioned<Directive>]) -> Result<(), ShapeError>,
) -> Result<(), ShapeError> {
    for item in &set.items {
        match &item.node {
            Selection::Field(field) => {
                count(&field.node.directives)?;
                count_in_set(&field.node.selection_set.node, count)?;
            }
            Selection::InlineFragment(fragment) => {
                count(&fragment.node.directives)?;
                count_in_set(&fragment.node.selection_set.node, count)?;
            }
            Selection::FragmentSpread(spread) => count(&spread.node.directives)?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ShapeLimits =
        ShapeLimits { max_inlined_fields: 1000, max_depth: 10, introspection: true };

    fn check_text(query: &str) -> Result<(), ShapeError> {
        check(&async_graphql::parser::parse_query(query).expect("parses"), &LIMITS)
    }

    /// `fragment F0 on Query { ...F1 ...F1 … }` down to `F{levels}`, `fan_out` spreads each.
    fn fan_out(fan_out: usize, levels: usize) -> String {
        let mut query = String::from("query { ...F0 }\n");
        for level in 0..levels {
            let spreads = format!("...F{} ", level + 1).repeat(fan_out);
            query.push_str(&format!("fragment F{level} on Query {{ {spreads}}}\n"));
        }
        query.push_str(&format!("fragment F{levels} on Query {{ __typename }}\n"));
        query
    }

    #[test]
    fn exponential_fragment_fan_out_is_refused_without_inlining() {
        assert_eq!(check_text(&fan_out(2, 30)), Err(ShapeError::TooLarge));
        assert_eq!(check_text(&fan_out(10, 30)), Err(ShapeError::TooLarge));
        // Saturates rather than overflowing: 10^200 fields.
        assert_eq!(check_text(&fan_out(10, 200)), Err(ShapeError::TooLarge));
        // Small fan-outs are counted exactly: 2^9 = 512 fields is allowed, 2^10 is not.
        assert_eq!(check_text(&fan_out(2, 9)), Ok(()));
        assert_eq!(check_text(&fan_out(2, 10)), Err(ShapeError::TooLarge));
    }

    #[test]
    fn fragment_cycles_are_refused() {
        let query = "{ ...A } fragment A on Query { ...B } fragment B on Query { me { ...C } } fragment C on User { ...A }";
        assert!(matches!(check_text(query), Err(ShapeError::FragmentCycle(_))));
        assert!(matches!(
            check_text("{ ...A } fragment A on Query { ...A }"),
            Err(ShapeError::FragmentCycle(name)) if name == "A"
        ));
    }

    #[test]
    fn long_fragment_chains_do_not_recurse() {
        let mut query = String::from("{ ...F0 }\n");
        for level in 0..20_000 {
            query.push_str(&format!("fragment F{level} on Query {{ ...F{} }}\n", level + 1));
        }
        query.push_str("fragment F20000 on Query { __typename }");
        assert_eq!(check_text(&query), Ok(()));
    }

    #[test]
    fn depth_counts_schema_fields_through_fragments() {
        let ten = "{ a { a { a { a { a { a { a { a { a { a } } } } } } } } } }";
        assert_eq!(check_text(ten), Ok(()));
        let eleven = "{ b { ...Ten } } fragment Ten on Query { a { a { a { a { a { a { a { a { a { a } } } } } } } } } }";
        assert_eq!(check_text(eleven), Err(ShapeError::TooDeep));
    }

    #[test]
    fn introspection_is_limited_by_nested_lists_not_depth() {
        let of_type = "ofType { ".repeat(12) + "name " + &"}".repeat(12);
        let deep_single_objects =
            format!("{{ __schema {{ types {{ fields {{ type {{ name {of_type} }} }} }} }} }}");
        assert_eq!(check_text(&deep_single_objects), Ok(()));
        let standard = "{ __schema { types { fields { args { type { name } } } } } }";
        assert_eq!(check_text(standard), Ok(()));
        let multiplying = "{ __schema { types { fields { type { fields { type { name } } } } } } }";
        assert_eq!(check_text(multiplying), Ok(()));
        let too_many = "{ __schema { types { fields { type { fields { args { name } } } } } } }";
        assert_eq!(check_text(too_many), Err(ShapeError::IntrospectionTooNested));
        // The same through a fragment, which is measured in introspection mode.
        let through_fragment = "{ __type(name: \"User\") { ...T } } fragment T on __Type { fields { type { fields { type { fields { args { name } } } } } } }";
        assert_eq!(check_text(through_fragment), Err(ShapeError::IntrospectionTooNested));
    }

    #[test]
    fn introspection_can_be_refused() {
        let off = ShapeLimits { introspection: false, ..LIMITS };
        let parse = |query| async_graphql::parser::parse_query(query).unwrap();
        assert_eq!(check(&parse("{ __typename }"), &off), Ok(()));
        assert_eq!(
            check(&parse("{ ...F } fragment F on Query { __type(name: \"User\") { name } }"), &off),
            Err(ShapeError::IntrospectionDisabled)
        );
    }

    #[test]
    fn directive_floods_are_refused() {
        let on_one_field =
            format!("{{ me {} {{ id }} }}", "@a".repeat(MAX_DIRECTIVES_PER_LOCATION + 1));
        assert_eq!(check_text(&on_one_field), Err(ShapeError::TooManyDirectives));
        let spread_out: String =
            (0..=MAX_DIRECTIVES).map(|n| format!("f{n}: __typename @include(if: true) ")).collect();
        assert_eq!(check_text(&format!("{{ {spread_out} }}")), Err(ShapeError::TooManyDirectives));
        assert_eq!(check_text("{ me @include(if: true) @skip(if: false) { id } }"), Ok(()));
    }
}
