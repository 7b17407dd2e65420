//! The operations in `tests/operations/operations.graphql`, by name, each with the fragments it spreads:
//! what the integration tests (`tests/api/helpers.rs`) and the load tool (`bench`, which
//! includes this file) send, so both exercise the same documents, and each request carries
//! only its own operation.

use std::{collections::HashMap, sync::OnceLock};

/// The whole shared document: definitions separated by blank lines.
const DOCUMENT: &str = include_str!("operations.graphql");

/// The text of operation `name` and the fragments it spreads; panics on a name the document
/// does not define (a typo in a test or in the tool).
pub fn operation(name: &str) -> &'static str {
    static BY_NAME: OnceLock<HashMap<String, String>> = OnceLock::new();
    let by_name = BY_NAME.get_or_init(|| {
        let definitions: Vec<&str> = DOCUMENT
            .split("\n\n")
            .map(str::trim)
            .filter(|block| !block.is_empty() && !block.starts_with('#'))
            .collect();
        let name_of = |block: &str| block.split([' ', '(', '{']).nth(1).unwrap_or("").to_string();
        let fragments: HashMap<String, &str> = definitions
            .iter()
            .filter(|block| block.starts_with("fragment "))
            .map(|block| (name_of(block), *block))
            .collect();
        definitions
            .iter()
            .filter(|block| !block.starts_with("fragment "))
            .map(|block| {
                let mut text = block.to_string();
                for (fragment, definition) in &fragments {
                    if block.contains(&format!("...{fragment}")) {
                        text = format!("{definition}\n\n{text}");
                    }
                }
                (name_of(block), text)
            })
            .collect()
    });
    by_name
        .get(name)
        .unwrap_or_else(|| panic!("no operation {name} in tests/operations/operations.graphql"))
}
