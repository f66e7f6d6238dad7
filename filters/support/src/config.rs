//! A filter's JSON configuration, the one way every meshwork filter reads it: a `Config` type
//! deriving `Deserialize` with `deny_unknown_fields` (a typo must not silently mean
//! "default"), parsed by [`parse`], whose errors name the field's path
//! (`targets[0].cluster: invalid type…`).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

/// Parses configuration bytes into `T`. An empty (or blank) configuration is `{}`.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) { b"{}" } else { bytes };
    let mut json = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut json).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            format!("configuration is not JSON: {inner}")
        } else if path == "." {
            format!("{inner}")
        } else {
            format!("{path}: {inner}")
        }
    })?;
    json.end().map_err(|e| format!("configuration is not JSON: {e}"))?;
    Ok(value)
}

/// For a section that is on with its defaults when absent: `#[serde(default = "on",
/// deserialize_with = "on_unless_null")]`; `null` turns it off.
pub fn on<T: DeserializeOwned>() -> Option<T> {
    // The section's own field defaults, as if it were given as `{}`.
    serde_json::from_value(serde_json::Value::Object(serde_json::Map::new())).ok()
}

/// See [`on`].
pub fn on_unless_null<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    Option::<T>::deserialize(d)
}

/// A header name a proxy-wasm host accepts: an HTTP token, in lower case as hosts present them.
pub fn header_name(field: &str, name: &str) -> Result<String, String> {
    let valid = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !valid {
        return Err(format!("{field} {name:?} is not a valid header name"));
    }
    Ok(name.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize, Debug, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Section {
        #[serde(default)]
        depth: u32,
    }

    #[derive(Deserialize, Debug, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Example {
        rate: u32,
        #[serde(default)]
        list: Vec<Section>,
        #[serde(default = "on", deserialize_with = "on_unless_null")]
        section: Option<Section>,
    }

    #[test]
    fn sections_are_on_unless_null() {
        let c: Example = parse(br#"{"rate": 5}"#).unwrap();
        assert_eq!(c.section, Some(Section { depth: 0 }), "absent: on with its defaults");
        let c: Example = parse(br#"{"rate": 5, "section": null}"#).unwrap();
        assert_eq!(c.section, None, "null: off");
        let c: Example = parse(br#"{"rate": 5, "section": {"depth": 2}}"#).unwrap();
        assert_eq!(c.section, Some(Section { depth: 2 }));
    }

    #[test]
    fn errors_name_the_field_path() {
        let e = |json: &[u8]| parse::<Example>(json).unwrap_err();
        assert!(e(br#"{"rate": "five"}"#).starts_with("rate: invalid type"), "{}", e(br#"{"rate": "five"}"#));
        assert!(e(br#"{"rate": 1, "typo": 1}"#).contains("unknown field `typo`"));
        assert!(e(br#"{"rate": 1, "list": [{}, {"deep": 1}]}"#).starts_with("list[1].deep: unknown field `deep`"));
        assert!(e(b"{").starts_with("configuration is not JSON"));
        assert!(e(b"").contains("missing field `rate`"), "an empty configuration is {{}}");
    }

    #[test]
    fn header_names_are_tokens_in_lower_case() {
        assert_eq!(header_name("header", "X-Version").unwrap(), "x-version");
        assert_eq!(header_name("header", "bad name").unwrap_err(), r#"header "bad name" is not a valid header name"#);
        assert!(header_name("header", "").is_err());
    }
}
