//! The effective configuration as `--check-config` prints it: every value,
//! secrets replaced. A key is secret when its name says so (`password`,
//! `secret`, `token` in it) or when it holds a map of them (`auth.users`:
//! user → password); an unset secret stays `null` so an operator still sees
//! whether it is set.

use serde_json::Value;

use super::Config;

/// What a set secret prints as.
pub const REDACTED: &str = "<redacted>";

/// Keys whose every value is a secret (dotted paths).
const SECRET_MAPS: [&str; 1] = ["auth.users"];

/// `config` as JSON with its secrets replaced by [`REDACTED`].
pub fn redacted(config: &Config) -> Result<Value, serde_json::Error> {
    let mut value = serde_json::to_value(config)?;
    redact(&mut value, "");
    Ok(value)
}

fn is_secret_name(key: &str) -> bool {
    ["password", "secret", "token"]
        .iter()
        .any(|word| key.contains(word))
}

fn redact(value: &mut Value, path: &str) {
    let Value::Object(map) = value else {
        return;
    };
    let whole_map = SECRET_MAPS.contains(&path);
    for (key, v) in map.iter_mut() {
        let child = if path.is_empty() {
            key.clone()
        } else {
            format!("{path}.{key}")
        };
        if (whole_map || is_secret_name(key)) && !v.is_null() && !v.is_object() {
            *v = Value::String(REDACTED.into());
        } else {
            redact(v, &child);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_replaced_and_the_rest_kept() {
        let mut c = Config::default();
        c.sip.trunk.password = Some("trunk-pass-1".into());
        c.sip.trunk.username = Some("gw".into());
        c.auth.token_secret = Some("jwt-key-2".into());
        c.auth.users.insert("alice".into(), "alice-pass-3".into());
        let v = redacted(&c).unwrap();
        let text = v.to_string();
        for secret in ["trunk-pass-1", "jwt-key-2", "alice-pass-3"] {
            assert!(!text.contains(secret), "{secret} printed: {text}");
        }
        assert_eq!(v["sip"]["trunk"]["password"], REDACTED);
        assert_eq!(v["auth"]["token_secret"], REDACTED);
        assert_eq!(v["auth"]["users"]["alice"], REDACTED, "the user name stays");
        assert_eq!(v["sip"]["trunk"]["username"], "gw", "not a secret");
        assert_eq!(v["http"]["listen"], c.http.listen.to_string());

        let unset = redacted(&Config::default()).unwrap();
        assert!(
            unset["sip"]["trunk"]["password"].is_null(),
            "unset stays null"
        );
        assert!(unset["auth"]["token_secret"].is_null());
    }
}
