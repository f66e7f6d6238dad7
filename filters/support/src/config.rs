//! A filter's JSON configuration, read field by field: every error names its field, and a field
//! nobody took is refused with the list of known ones (a typo must not silently mean "default").

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// The configuration object while its fields are being taken out of it.
pub struct ConfigObject(Map<String, Value>);

impl ConfigObject {
    /// The configuration bytes as a JSON object.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        match serde_json::from_slice(bytes).map_err(|e| format!("configuration is not JSON: {e}"))? {
            Value::Object(object) => Ok(ConfigObject(object)),
            _ => Err("configuration must be a JSON object".into()),
        }
    }

    /// Takes field `name`; `None` when absent.
    pub fn take<T: DeserializeOwned>(&mut self, name: &str) -> Result<Option<T>, String> {
        self.0.remove(name).map(|v| serde_json::from_value(v).map_err(|e| format!("{name}: {e}"))).transpose()
    }

    /// Takes a section that is on with its defaults when absent and off when `null`.
    pub fn section<T: DeserializeOwned>(&mut self, name: &str) -> Result<Option<T>, String> {
        match self.0.remove(name) {
            Some(Value::Null) => Ok(None),
            value => serde_json::from_value(value.unwrap_or_else(|| Value::Object(Map::new())))
                .map(Some)
                .map_err(|e| format!("{name}: {e}")),
        }
    }

    /// Refuses the first field that was not taken.
    pub fn finish(self, known: &[&str]) -> Result<(), String> {
        match self.0.keys().next() {
            Some(field) => Err(format!("unknown field {field:?} (known: {})", known.join(", "))),
            None => Ok(()),
        }
    }
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

    #[test]
    fn fields_are_taken_and_leftovers_refused() {
        let mut c = ConfigObject::parse(br#"{"rate": 5, "typo": 1, "section": null}"#).unwrap();
        assert_eq!(c.take::<u32>("rate").unwrap(), Some(5));
        assert_eq!(c.take::<u32>("absent").unwrap(), None);
        assert_eq!(c.section::<Map<String, Value>>("section").unwrap(), None);
        assert_eq!(c.section::<Map<String, Value>>("other").unwrap(), Some(Map::new()));
        assert_eq!(c.finish(&["rate", "section"]).unwrap_err(), r#"unknown field "typo" (known: rate, section)"#);
    }

    #[test]
    fn errors_name_the_field() {
        let mut c = ConfigObject::parse(br#"{"rate": "five"}"#).unwrap();
        assert!(c.take::<u32>("rate").unwrap_err().starts_with("rate: "));
        assert_eq!(ConfigObject::parse(b"[1]").err().unwrap(), "configuration must be a JSON object");
        assert!(ConfigObject::parse(b"{").err().unwrap().starts_with("configuration is not JSON"));
    }

    #[test]
    fn header_names_are_tokens_in_lower_case() {
        assert_eq!(header_name("header", "X-Version").unwrap(), "x-version");
        assert_eq!(header_name("header", "bad name").unwrap_err(), r#"header "bad name" is not a valid header name"#);
        assert!(header_name("header", "").is_err());
    }
}
