//! `catalog list` and `search`: items by kind, category, compatibility, technology and text.

use crate::item::{Category, Kind};
use crate::load::Entry;

#[derive(Clone, Debug, Default)]
pub struct Query {
    pub kind: Option<Kind>,
    pub category: Option<Category>,
    /// Every one must be listed by the item.
    pub compatibility: Vec<String>,
    pub technology: Option<String>,
    /// Words that must all appear (any case) in the name, display name, description or keywords.
    pub text: Option<String>,
}

impl Query {
    pub fn matches(&self, entry: &Entry) -> bool {
        let item = &entry.item;
        if self.kind.is_some_and(|k| k != item.kind) || self.category.is_some_and(|c| c != item.category) {
            return false;
        }
        if !self.compatibility.iter().all(|c| item.compatibility.iter().any(|i| i.eq_ignore_ascii_case(c))) {
            return false;
        }
        if self.technology.as_ref().is_some_and(|t| !item.technology.iter().any(|i| i.eq_ignore_ascii_case(t))) {
            return false;
        }
        match &self.text {
            None => true,
            Some(text) => {
                let haystack =
                    format!("{} {} {} {}", item.name, item.display_name, item.description, item.keywords.join(" "))
                        .to_lowercase();
                text.to_lowercase().split_whitespace().all(|w| haystack.contains(w))
            }
        }
    }

    pub fn run<'a>(&self, entries: &'a [Entry]) -> Vec<&'a Entry> {
        entries.iter().filter(|e| self.matches(e)).collect()
    }
}
