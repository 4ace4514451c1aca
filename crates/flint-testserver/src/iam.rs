//! IAM initial setup: the one-time creation of the first organization and admin, and the checks
//! that catch a client sending more than a public key.

use serde::Deserialize;
use serde_json::{Value, json};

/// A bootstrap request that passed every check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bootstrap {
    pub org: String,
    pub admin: String,
    pub public_key: String,
}

impl Bootstrap {
    /// `{"org", "admin": {"name"}}`: what a 201 and a 409 show; never the key.
    pub fn summary(&self) -> Value {
        json!({"org": self.org, "admin": {"name": self.admin}})
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    org: String,
    admin: Admin,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Admin {
    name: String,
    public_key: String,
}

/// Fields that must never leave the node, at any depth of the body.
const SECRET_FIELDS: [&str; 3] = ["private_key", "password", "secret"];

/// Refuses a body that carries a secret, whatever else is wrong with it: this check is about the
/// client's conduct, so it runs before any fault could hide it.
pub fn screen(body: &[u8]) -> Result<(), String> {
    if contains(body, b"PRIVATE KEY") {
        return Err(
            "the body carries a private key (\"PRIVATE KEY\"); send the public key only".into(),
        );
    }
    if let Ok(value) = serde_json::from_slice::<Value>(body)
        && let Some(field) = find_field(&value, &SECRET_FIELDS)
    {
        return Err(format!(
            "the body has a field {field:?}; no private key or password may leave the node"
        ));
    }
    Ok(())
}

/// Checks a bootstrap body. The message is for the client's error output, so it names the field
/// at fault but never echoes a value.
pub fn parse(body: &[u8]) -> Result<Bootstrap, String> {
    screen(body)?;
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}"))?;
    let req: Request = serde_json::from_value(value).map_err(|e| {
        format!(
            "expected {{\"org\": NAME, \"admin\": {{\"name\": NAME, \"public_key\": PEM}}}}: {e}"
        )
    })?;
    if req.org.trim().is_empty() {
        return Err("\"org\" is empty".into());
    }
    if req.admin.name.trim().is_empty() {
        return Err("\"admin.name\" is empty".into());
    }
    let key = req.admin.public_key.trim();
    if !(key.starts_with("-----BEGIN ") && key.contains("PUBLIC KEY-----")) {
        return Err(
            "\"admin.public_key\" is not a PEM public key (-----BEGIN PUBLIC KEY-----)".into(),
        );
    }
    Ok(Bootstrap {
        org: req.org,
        admin: req.admin.name,
        public_key: req.admin.public_key,
    })
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn find_field<'a>(value: &Value, names: &[&'a str]) -> Option<&'a str> {
    match value {
        Value::Object(map) => map.iter().find_map(|(k, v)| {
            names
                .iter()
                .find(|n| k.eq_ignore_ascii_case(n))
                .copied()
                .or_else(|| find_field(v, names))
        }),
        Value::Array(items) => items.iter().find_map(|v| find_field(v, names)),
        _ => None,
    }
}

/// The IAM service's stored state, shared by every listener as it would be on one flaredb.
#[derive(Clone, Debug, Default)]
pub struct Iam {
    created: Option<Bootstrap>,
}

impl Iam {
    pub fn created(&self) -> Option<&Bootstrap> {
        self.created.as_ref()
    }

    /// The first call creates; every later one gets back what was created, to compare with.
    pub fn bootstrap(&mut self, req: Bootstrap) -> Result<&Bootstrap, &Bootstrap> {
        match self.created {
            Some(ref existing) => Err(existing),
            None => Ok(self.created.insert(req)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "-----BEGIN PUBLIC KEY-----\\nMCowBQYDK2VwAyEA\\n-----END PUBLIC KEY-----\\n";

    fn body(org: &str, name: &str) -> String {
        format!(r#"{{"org":"{org}","admin":{{"name":"{name}","public_key":"{KEY}"}}}}"#)
    }

    #[test]
    fn first_creates_then_shows_what_exists() {
        let mut iam = Iam::default();
        let req = parse(body("acme", "alice").as_bytes()).unwrap();
        assert!(req.public_key.contains("BEGIN PUBLIC KEY"));
        assert_eq!(
            iam.bootstrap(req).unwrap().summary(),
            json!({"org": "acme", "admin": {"name": "alice"}})
        );
        let other = parse(body("other", "bob").as_bytes()).unwrap();
        assert_eq!(iam.bootstrap(other).unwrap_err().org, "acme");
        assert_eq!(iam.created().unwrap().admin, "alice");
    }

    #[test]
    fn refuses_secrets_and_shapes_it_does_not_know() {
        let private = body("a", "b").replace("PUBLIC", "PRIVATE");
        assert!(
            parse(private.as_bytes())
                .unwrap_err()
                .contains("private key")
        );
        let field = r#"{"org":"a","admin":{"name":"b","public_key":"k","private_key":"x"}}"#;
        assert!(
            parse(field.as_bytes())
                .unwrap_err()
                .contains("\"private_key\"")
        );
        let password = r#"{"org":"a","admin":{"name":"b","Password":"x"}}"#;
        assert!(parse(password.as_bytes()).unwrap_err().contains("password"));
        let extra = body("a", "b").replacen('{', r#"{"region":"x","#, 1);
        assert!(parse(extra.as_bytes()).unwrap_err().contains("region"));
        assert!(parse(b"{").unwrap_err().contains("not JSON"));
        assert!(parse(body("", "b").as_bytes()).unwrap_err().contains("org"));
        let not_pem = r#"{"org":"a","admin":{"name":"b","public_key":"ssh-ed25519 AAAA"}}"#;
        assert!(parse(not_pem.as_bytes()).unwrap_err().contains("PEM"));
    }
}
