//! Every YAML (and JSON) file meshwork reads goes through [`from_str`], so an error always has
//! one shape: `line L column C: field.path[0].name: what is wrong`. serde-saphyr parses and knows
//! the position; serde_path_to_error knows the field, which serde's own messages (`invalid
//! u32`) leave out.

use std::fmt;

use serde::de::DeserializeOwned;

/// Why a document did not deserialize: where, which field, and what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct YamlError {
    /// 1-based line and column, when the parser knows them.
    pub position: Option<(u64, u64)>,
    /// The field path (`listeners[0].tls.cert`), empty at the top level.
    pub path: String,
    pub message: String,
}

impl fmt::Display for YamlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some((line, column)) = self.position {
            write!(f, "line {line} column {column}: ")?;
        }
        if !self.path.is_empty() && self.path != "." {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for YamlError {}

/// Deserializes one YAML document (JSON is YAML too).
pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, YamlError> {
    let mut path = String::new();
    let result = serde_saphyr::with_deserializer_from_str(text, |de| {
        serde_path_to_error::deserialize(de).map_err(|e| {
            path = e.path().to_string();
            e.into_inner()
        })
    });
    result.map_err(|e| describe(&e, path))
}

fn describe(e: &serde_saphyr::Error, path: String) -> YamlError {
    let text = e.without_snippet().to_string();
    let mut message = text.trim_start_matches("error: ").replace('\n', " ");
    let position = e.location().map(|at| (at.line(), at.column()));
    if let Some((line, column)) = position {
        // The parser's rendering repeats the position; it is said once, first.
        message = message.replace(&format!(" at line {line}, column {column}"), "");
    }
    YamlError { position, path, message: message.trim().to_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code, reason = "fields are only deserialized")]
    struct Doc {
        name: String,
        items: Vec<Item>,
    }

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code, reason = "fields are only deserialized")]
    struct Item {
        count: u32,
    }

    #[test]
    fn errors_say_where_and_which_field() {
        let e = from_str::<Doc>("name: a\nitems:\n  - count: -1\n").unwrap_err();
        assert_eq!(e.path, "items[0].count");
        assert_eq!(e.position.map(|p| p.0), Some(3));
        assert!(e.to_string().starts_with("line 3 column "), "{e}");
        assert!(e.to_string().contains(": items[0].count: "), "{e}");

        let e = from_str::<Doc>("name: a\nitems: [{count: 1, colour: red}]\n").unwrap_err();
        assert!(e.to_string().contains("items[0].colour: unknown field `colour`"), "{e}");

        let e = from_str::<Doc>("items: []\n").unwrap_err();
        assert!(e.message.contains("missing field `name`"), "{e}");
    }

    #[test]
    fn documents_parse() {
        let d: Doc = from_str("{\"name\": \"x\", \"items\": [{\"count\": 3}]}").unwrap();
        assert_eq!(d.items[0].count, 3);
    }
}
