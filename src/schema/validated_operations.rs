//! When an operation that validated once needs no second validation.
//!
//! async-graphql validates every request in full: twenty-two rules and three measuring visitors
//! over the document (about a tenth of the server's CPU per `sendMessage`, most of it spent
//! proving again what the previous request with the same text proved). All of those rules but
//! one look only at the document and the schema, so their verdict for a given text and operation
//! never changes. The one that looks at the request is `ArgumentsOfCorrectType`: it puts each
//! variable's value into the argument that uses it and checks the result against the argument's
//! type. Complexity also depends on variables, but only where a field's complexity function reads
//! an argument that a variable fills (`first: $n`).
//!
//! So an operation settles (see `parsed_queries`) when it passes validation with variables that
//! [`variables_settle_validation`]: every variable it defines has a value of a scalar, enum or
//! input-object type that the type accepts, by the rules async-graphql's check applies (through
//! the same registry entries), and no variable fills an argument of a field whose complexity is
//! computed ([`complexity_reads_variables`]). Later requests for the operation whose variables
//! settle it too skip validation: its result would be the same. Anything else (lists, oneof
//! inputs, null for a required variable, a missing variable, `first: $n` on a paged field) is
//! validated in full, as before.
//!
//! Why the variable's declared type is enough: validation (`VariableInAllowedPosition`) only lets
//! a variable fill an argument of the same named type, no stricter than the variable's, so a
//! value its own type accepts is accepted where it is used. And a missing variable does not
//! settle, because async-graphql then skips checking the whole argument around it, literal
//! parts included, which a later request that supplies it would not. Nothing else a request
//! carries reaches validation here: no type or field of the schema is `visible` only to some
//! requests (that would make validation read the request's data).
//!
//! This leans on async-graphql's internals as of 7.2.1 (pinned by `Cargo.lock`): the rule list in
//! its `validation/mod.rs`, `is_valid_input_value` in `validation/utils.rs`, and the registry it
//! exposes (doc-hidden) as `ExtensionContext::schema_env`. An upgrade re-reads those three.

use std::collections::HashSet;

use async_graphql::{
    Value, Variables,
    parser::types::{BaseType, ExecutableDocument, OperationDefinition, Selection, SelectionSet},
    registry::{MetaType, MetaTypeName, Registry},
};

/// Whether every variable `operation` defines has a value in `variables` that its type accepts,
/// judged only where the judgement is certain (else `false`: validate in full).
pub(super) fn variables_settle_validation(
    registry: &Registry,
    operation: &OperationDefinition,
    variables: &Variables,
) -> bool {
    operation.variable_definitions.iter().all(|definition| {
        let definition = &definition.node;
        let ty = &definition.var_type.node;
        let BaseType::Named(name) = &ty.base else { return false };
        variables
            .get(&definition.name.node)
            .is_some_and(|value| accepts(registry, name, ty.nullable, value))
    })
}

/// Whether the named type `name` (nullable or not) accepts `value`: async-graphql's
/// `is_valid_input_value` where it says yes, `false` for lists and oneof inputs (not needed).
fn accepts(registry: &Registry, name: &str, nullable: bool, value: &Value) -> bool {
    if let Value::Null = value {
        return nullable;
    }
    match (registry.types.get(name), value) {
        (Some(MetaType::Scalar { is_valid, .. }), value) => {
            is_valid.as_ref().is_none_or(|is_valid| is_valid(value))
        }
        (Some(MetaType::Enum { enum_values, .. }), Value::Enum(item)) => {
            enum_values.contains_key(item.as_str())
        }
        (Some(MetaType::Enum { enum_values, .. }), Value::String(item)) => {
            enum_values.contains_key(item.as_str())
        }
        (Some(MetaType::InputObject { input_fields, oneof: false, .. }), Value::Object(values)) => {
            values.keys().all(|key| input_fields.contains_key(key.as_str()))
                && input_fields.values().all(|field| {
                    let ty = MetaTypeName::create(&field.ty);
                    let (named, nullable) = match ty {
                        MetaTypeName::NonNull(inner) => (MetaTypeName::create(inner), false),
                        other => (other, true),
                    };
                    match (named, values.get(field.name.as_str())) {
                        (_, Some(Value::Null)) => nullable,
                        (MetaTypeName::Named(name), Some(value)) => {
                            accepts(registry, name, nullable, value)
                        }
                        (_, Some(_)) => false,
                        (_, None) => nullable || field.default_value.is_some(),
                    }
                })
        }
        _ => false,
    }
}

/// The names of fields whose complexity is computed from their arguments: a variable in their
/// arguments can change an operation's complexity.
pub(super) fn complexity_fields(registry: &Registry) -> HashSet<String> {
    registry
        .types
        .values()
        .filter_map(MetaType::fields)
        .flat_map(|fields| fields.values())
        .filter(|field| field.compute_complexity.is_some() && !field.args.is_empty())
        .map(|field| field.name.clone())
        .collect()
}

/// Whether a variable fills an argument of a field named in `complexity_fields` anywhere in
/// `operation` or in `document`'s fragments (by name alone, whatever type the field is on: a
/// coincidence only makes this more careful).
pub(super) fn complexity_reads_variables(
    complexity_fields: &HashSet<String>,
    document: &ExecutableDocument,
    operation: &OperationDefinition,
) -> bool {
    let reads = |set: &SelectionSet| reads_variables(complexity_fields, set);
    reads(&operation.selection_set.node)
        || document.fragments.values().any(|fragment| reads(&fragment.node.selection_set.node))
}

fn reads_variables(complexity_fields: &HashSet<String>, set: &SelectionSet) -> bool {
    set.items.iter().any(|item| match &item.node {
        Selection::Field(field) => {
            let field = &field.node;
            (complexity_fields.contains(field.name.node.as_str())
                && field
                    .arguments
                    .iter()
                    .any(|(_, value)| value.node.clone().into_const().is_none()))
                || reads_variables(complexity_fields, &field.selection_set.node)
        }
        Selection::InlineFragment(fragment) => {
            reads_variables(complexity_fields, &fragment.node.selection_set.node)
        }
        Selection::FragmentSpread(_) => false,
    })
}

#[cfg(test)]
mod tests {
    use async_graphql::{Enum, InputObject, Object, OutputType, parser::parse_query};
    use serde_json::json;

    use super::*;

    #[derive(Enum, Clone, Copy, PartialEq, Eq)]
    enum Color {
        Red,
    }

    #[derive(InputObject)]
    struct Note {
        text: String,
        to: async_graphql::ID,
        color: Option<Color>,
        #[graphql(default = 1)]
        weight: i32,
        tags: Option<Vec<String>>,
    }

    struct Query;

    #[Object]
    impl Query {
        async fn echo(&self, text: String, id: async_graphql::ID, flag: Option<bool>) -> String {
            let _ = (id, flag);
            text
        }

        async fn note(&self, note: Note) -> String {
            let _ = (note.to, note.color, note.weight, note.tags);
            note.text
        }

        #[graphql(complexity = "usize::try_from(first).unwrap_or(0) * child_complexity")]
        async fn page(&self, first: i32) -> Vec<i32> {
            (0..first).collect()
        }
    }

    /// The types `Query` reaches, as a schema built on it registers them.
    fn registry() -> Registry {
        let mut registry = Registry::default();
        <Query as OutputType>::create_type_info(&mut registry);
        registry
    }

    fn settles(document: &str, variables: serde_json::Value) -> bool {
        let document = parse_query(document).unwrap();
        let (_, operation) = document.operations.iter().next().unwrap();
        variables_settle_validation(&registry(), &operation.node, &Variables::from_json(variables))
    }

    const ECHO: &str =
        "query($t: String!, $i: ID!, $f: Boolean) { echo(text: $t, id: $i, flag: $f) }";
    const NOTE: &str = "query($n: Note!) { note(note: $n) }";

    #[test]
    fn values_the_types_accept_settle_validation() {
        assert!(settles(ECHO, json!({"t": "hi", "i": "u1", "f": true})));
        assert!(settles(ECHO, json!({"t": "hi", "i": 7, "f": null})));
        assert!(settles("{ echo(text: \"x\", id: 1) }", json!({})));
        assert!(settles(NOTE, json!({"n": {"text": "hi", "to": "u1"}})));
        assert!(settles(
            NOTE,
            json!({"n": {"text": "hi", "to": "u1", "color": "RED", "weight": 2}})
        ));
        assert!(settles(NOTE, json!({"n": {"text": "hi", "to": "u1", "tags": null}})));
    }

    #[test]
    fn anything_validation_might_judge_differently_does_not() {
        let refused = [
            // Values the type refuses, and null for a required variable.
            (ECHO, json!({"t": 5, "i": "u1", "f": true})),
            (ECHO, json!({"t": "hi", "i": 1.5, "f": true})),
            (ECHO, json!({"t": null, "i": "u1", "f": true})),
            (ECHO, json!({"t": "hi", "i": "u1", "f": "yes"})),
            (NOTE, json!({"n": {"text": "hi"}})),
            (NOTE, json!({"n": {"text": "hi", "to": "u1", "extra": 1}})),
            (NOTE, json!({"n": {"text": "hi", "to": "u1", "color": "BLUE"}})),
            (NOTE, json!({"n": {"text": 3, "to": "u1"}})),
            (NOTE, json!({"n": "hi"})),
            // A missing variable: async-graphql then skips the argument around it.
            (ECHO, json!({"t": "hi", "i": "u1"})),
            // Lists, even valid ones, are validated in full.
            (NOTE, json!({"n": {"text": "hi", "to": "u1", "tags": ["a"]}})),
            ("query($t: [String!]!) { echo(text: \"x\", id: 1) }", json!({"t": []})),
        ];
        for (document, variables) in refused {
            assert!(!settles(document, variables.clone()), "{document} {variables}");
        }
    }

    #[test]
    fn complexity_read_from_a_variable_is_found_in_fragments_too() {
        let fields = complexity_fields(&registry());
        assert_eq!(fields, HashSet::from(["page".to_owned()]));
        let reads = |text: &str| {
            let document = parse_query(text).unwrap();
            let (_, operation) = document.operations.iter().next().unwrap();
            complexity_reads_variables(&fields, &document, &operation.node)
        };
        assert!(reads("query($n: Int!) { page(first: $n) }"));
        assert!(reads("query($n: Int!) { ...F } fragment F on Query { page(first: $n) }"));
        assert!(reads("query($n: Int!) { ... on Query { page(first: $n) } }"));
        assert!(!reads("query { page(first: 3) }"));
        assert!(!reads("query($t: String!) { echo(text: $t, id: 1) page(first: 2) }"));
    }
}
