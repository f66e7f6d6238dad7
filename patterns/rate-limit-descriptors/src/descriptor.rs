//! A descriptor: the ordered (key, value) entries a request is counted by, as in Envoy's
//! `RateLimitDescriptor`.

use alloc::string::String;
use alloc::vec::Vec;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
pub struct Entry {
    pub key: String,
    #[cfg_attr(feature = "serde", serde(default))]
    pub value: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
pub struct Descriptor {
    pub entries: Vec<Entry>,
}

impl Descriptor {
    pub fn new(entries: impl IntoIterator<Item = (impl Into<String>, impl Into<String>)>) -> Descriptor {
        Descriptor { entries: entries.into_iter().map(|(k, v)| Entry { key: k.into(), value: v.into() }).collect() }
    }
}
