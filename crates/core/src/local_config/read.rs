//! Reading a local config document so that one unreadable `policies` entry fails closed in its
//! scope instead of rejecting the file. A rejected file keeps the previous state, which never
//! enforces the new entry: a typo in a DENY would allow exactly what it was written to stop.
//!
//! serde-saphyr reads a stream of events and cannot resume inside a value that failed, so the
//! document is read again with each failed entry set aside: one more pass per unreadable entry,
//! at most [`MAX_UNREADABLE`]. A set-aside entry is read only for what places it (name,
//! namespace, scope, action, dryRun; see `PolicyHead`). Anything else that fails (the YAML
//! itself, a workload, a service, an entry without a readable name and namespace) still
//! rejects the whole file.

use std::cell::Cell;
use std::collections::{BTreeMap, HashSet};
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use serde_saphyr::Spanned;

use super::schema::{Lined, LocalConfig, LocalPolicy, PolicyEntry, PolicyHead};
use crate::yaml::{self, YamlError};

/// More unreadable entries than this reject the file: each costs one more pass.
const MAX_UNREADABLE: usize = 32;

const FIELDS: &[&str] = &["workloads", "services", "policies"];

pub(super) fn read(text: &str) -> Result<LocalConfig, YamlError> {
    let mut set_aside = BTreeMap::new();
    loop {
        let failed_at = Cell::new(None);
        let e = match yaml::from_str_seed(text, Document { set_aside: &set_aside, failed_at: &failed_at }) {
            Ok(doc) => return Ok(doc),
            Err(e) => e,
        };
        let Some(i) = failed_at.get() else { return Err(e) };
        if set_aside.contains_key(&i) {
            let why = "its name and namespace cannot be read, so it has no scope to fail closed in";
            return Err(YamlError { message: format!("policies[{i}]: {}; {why}", e.message), ..e });
        }
        if set_aside.len() == MAX_UNREADABLE {
            return Err(YamlError { message: format!("{} (and more than {MAX_UNREADABLE} policies are unreadable)", e.message), ..e });
        }
        set_aside.insert(i, e);
    }
}

/// The top-level map, read like `#[serde(deny_unknown_fields)]` would, with `policies` read by
/// [`Policies`].
#[derive(Clone, Copy)]
struct Document<'a> {
    set_aside: &'a BTreeMap<usize, YamlError>,
    /// The index of the entry whose reading failed, if the failure was inside one.
    failed_at: &'a Cell<Option<usize>>,
}

impl<'de> DeserializeSeed<'de> for Document<'_> {
    type Value = LocalConfig;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<LocalConfig, D::Error> {
        d.deserialize_struct("LocalConfig", FIELDS, self)
    }
}

impl<'de> Visitor<'de> for Document<'_> {
    type Value = LocalConfig;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a map of workloads, services and policies")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<LocalConfig, A::Error> {
        let mut doc = LocalConfig::default();
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(de::Error::custom(format_args!("duplicate field `{key}`")));
            }
            match key.as_str() {
                "workloads" => doc.workloads = lined(map.next_value()?),
                "services" => doc.services = lined(map.next_value()?),
                "policies" => doc.policies = map.next_value_seed(Policies(self))?,
                other => return Err(de::Error::unknown_field(other, FIELDS)),
            }
        }
        Ok(doc)
    }
}

fn lined<T>(v: Vec<Spanned<T>>) -> Vec<Lined<T>> {
    v.into_iter().map(Lined::from).collect()
}

/// The `policies` list: each entry as written, or its head when it is set aside.
struct Policies<'a>(Document<'a>);

impl<'de> DeserializeSeed<'de> for Policies<'_> {
    type Value = Vec<Lined<PolicyEntry>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<Lined<PolicyEntry>>, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Policies<'_> {
    type Value = Vec<Lined<PolicyEntry>>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of policies")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Lined<PolicyEntry>>, A::Error> {
        let mut out = Vec::new();
        loop {
            let i = out.len();
            let next = match self.0.set_aside.get(&i) {
                None => seq.next_element::<Spanned<LocalPolicy>>().map(|p| p.map(|p| Lined::from(p).map(PolicyEntry::Read))),
                Some(error) => seq
                    .next_element::<Spanned<PolicyHead>>()
                    .map(|h| h.map(|h| Lined::from(h).map(|head| PolicyEntry::Unreadable { head, error: error.clone() }))),
            };
            match next {
                Ok(Some(entry)) => out.push(entry),
                Ok(None) => return Ok(out),
                Err(e) => {
                    self.0.failed_at.set(Some(i));
                    return Err(e);
                }
            }
        }
    }
}
