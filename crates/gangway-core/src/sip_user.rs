//! The one rule for a SIP URI user part, shared by routing, sign-in and the
//! SIP leg's own checks, so a user who can sign in can also be called.

/// Longest user part accepted.
pub const MAX_SIP_USER_LEN: usize = 64;

/// RFC 3261 `user` characters (unreserved, escaped, user-unreserved) minus
/// those that would need care in a header (`;`, `?`, `/`), plus `#`, which
/// PBX feature codes use.
pub fn is_sip_user_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-_.!~*'()%&=+$,#".contains(c)
}

/// A user part we are willing to put in a URI: 1-64 such characters.
pub fn valid_sip_user(user: &str) -> bool {
    (1..=MAX_SIP_USER_LEN).contains(&user.len()) && user.chars().all(is_sip_user_char)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phone_numbers_feature_codes_and_names_are_users() {
        for ok in [
            "1000",
            "+4930123",
            "*97#",
            "o'brien",
            "alice.smith",
            "a%40b",
        ] {
            assert!(valid_sip_user(ok), "{ok}");
        }
    }

    #[test]
    fn anything_that_breaks_out_of_a_uri_is_not() {
        let long = "1".repeat(MAX_SIP_USER_LEN + 1);
        for bad in [
            "",
            "a@b",
            "a;b",
            "a b",
            "a?b",
            "a/b",
            "a<b",
            "a\r\nb",
            long.as_str(),
        ] {
            assert!(!valid_sip_user(bad), "{bad:?}");
        }
    }
}
