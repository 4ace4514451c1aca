//! What the node binary and the boot server share to read the files operators write
//! (`cluster-config.json`, the inventory) and to print what a file or a server says: small enough
//! that the node binary links it without linking any boot crate.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};

/// `s` with its control characters escaped (`\n`, `\r`, `\u{1b}`...), so a hostile key or value
/// cannot forge a log line or move a terminal's cursor.
pub fn one_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// What went wrong under an HTTP client's own error, whose top line ("client error (Connect)",
/// "error reading a body from connection") says nothing an operator can act on: its causes,
/// each once, joined with `: `; the error itself when it has none.
pub fn causes(err: &dyn std::error::Error) -> String {
    let Some(first) = err.source() else {
        return err.to_string();
    };
    let mut text = first.to_string();
    let mut cause = first.source();
    while let Some(e) = cause {
        let part = e.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = e.source();
    }
    text
}

/// A JSON object read into a map where a key given twice is an error naming it: serde's own
/// maps keep the last value silently, so a node listed twice in an inventory, or an initial
/// member named twice, would lose one of its lines without a word. (serde_with's
/// `MapPreventDuplicates` refuses the file too, but its error does not say which key.)
pub fn unique_keys<'de, D, K, V>(deserializer: D) -> Result<Option<BTreeMap<K, V>>, D::Error>
where
    D: Deserializer<'de>,
    K: Deserialize<'de> + Ord + fmt::Display,
    V: Deserialize<'de>,
{
    deserializer
        .deserialize_map(UniqueKeys(PhantomData))
        .map(Some)
}

/// The same for a map the file must have.
pub fn unique_keys_required<'de, D, K, V>(deserializer: D) -> Result<BTreeMap<K, V>, D::Error>
where
    D: Deserializer<'de>,
    K: Deserialize<'de> + Ord + fmt::Display,
    V: Deserialize<'de>,
{
    deserializer.deserialize_map(UniqueKeys(PhantomData))
}

struct UniqueKeys<K, V>(PhantomData<(K, V)>);

impl<'de, K, V> Visitor<'de> for UniqueKeys<K, V>
where
    K: Deserialize<'de> + Ord + fmt::Display,
    V: Deserialize<'de>,
{
    type Value = BTreeMap<K, V>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object whose keys are all different")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = BTreeMap::new();
        while let Some(key) = map.next_key::<K>()? {
            if out.contains_key(&key) {
                return Err(serde::de::Error::custom(format_args!(
                    "duplicate key `{}`",
                    one_line(&key.to_string())
                )));
            }
            let value = map.next_value()?;
            out.insert(key, value);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    struct Doc {
        #[serde(default, deserialize_with = "unique_keys")]
        map: Option<BTreeMap<String, u32>>,
    }

    #[test]
    fn a_key_given_twice_is_named() {
        let doc: Doc = serde_json::from_str(r#"{"map": {"a": 1, "b": 2}}"#).unwrap();
        assert_eq!(doc.map.unwrap().len(), 2);
        assert!(serde_json::from_str::<Doc>("{}").unwrap().map.is_none());
        let err = serde_json::from_str::<Doc>(r#"{"map": {"a": 1, "b\n": 2, "b\n": 3}}"#)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains(r"duplicate key `b\n`"), "{err}");
    }

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl fmt::Display for Layer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    #[test]
    fn causes_skip_the_clients_own_line_and_repeats() {
        let refused = Layer("Connection refused (os error 111)", None);
        let wrapped = Layer(
            "tcp connect error: Connection refused (os error 111)",
            Some(Box::new(refused)),
        );
        let top = Layer("client error (Connect)", Some(Box::new(wrapped)));
        assert_eq!(
            causes(&top),
            "tcp connect error: Connection refused (os error 111)"
        );
        assert_eq!(causes(&Layer("alone", None)), "alone");
    }
}
