//! Offers that can never connect are refused at once instead of holding
//! a call (and a shard's peer) until the setup timer fires: ICE needs a
//! `ice-ufrag` of 4-256 characters and an `ice-pwd` of 22-256 (RFC 8839
//! §5.4), DTLS a fingerprint whose digest has its hash's length (RFC 8122).

/// Why an offer cannot work, or `Ok` when its credentials can.
pub(super) fn check_credentials(offer: &str) -> Result<(), String> {
    let attr = |name: &str| {
        offer
            .lines()
            .filter_map(|l| l.trim().strip_prefix(name))
            .map(str::trim)
            .collect::<Vec<_>>()
    };
    let ice_char = |c: char| c.is_ascii_alphanumeric() || c == '+' || c == '/';
    for ufrag in attr("a=ice-ufrag:") {
        if !(4..=256).contains(&ufrag.len()) || !ufrag.chars().all(ice_char) {
            return Err(format!("ice-ufrag {ufrag:?} must be 4-256 ICE characters"));
        }
    }
    for pwd in attr("a=ice-pwd:") {
        if !(22..=256).contains(&pwd.len()) || !pwd.chars().all(ice_char) {
            return Err("ice-pwd must be 22-256 ICE characters".into());
        }
    }
    for fingerprint in attr("a=fingerprint:") {
        let (hash, digest) = fingerprint.split_once(' ').unwrap_or((fingerprint, ""));
        let want = match hash.to_ascii_lowercase().as_str() {
            "sha-1" => 20,
            "sha-224" => 28,
            "sha-256" => 32,
            "sha-384" => 48,
            "sha-512" => 64,
            _ => continue,
        };
        let bytes: Vec<&str> = digest.trim().split(':').collect();
        let hex = |b: &&str| b.len() == 2 && b.chars().all(|c| c.is_ascii_hexdigit());
        if bytes.len() != want || !bytes.iter().all(hex) {
            return Err(format!("the {hash} fingerprint must be {want} hex bytes"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_credentials;

    const GOOD: &str = "v=0\r\na=ice-ufrag:f9wh\r\na=ice-pwd:uiR2kYGKAxU5ymBi/k0Ve480\r\n\
        a=fingerprint:sha-256 63:4D:97:10:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55\r\n";

    #[test]
    fn a_chromium_like_offer_passes_and_broken_credentials_do_not() {
        assert_eq!(check_credentials(GOOD), Ok(()));
        let short_pwd = GOOD.replace("uiR2kYGKAxU5ymBi/k0Ve480", "abc");
        assert!(check_credentials(&short_pwd)
            .unwrap_err()
            .contains("ice-pwd"));
        let short_ufrag = GOOD.replace("a=ice-ufrag:f9wh", "a=ice-ufrag:ab");
        assert!(check_credentials(&short_ufrag)
            .unwrap_err()
            .contains("ice-ufrag"));
        let one_byte = GOOD.replace(
            "63:4D:97:10:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55",
            "63",
        );
        assert!(check_credentials(&one_byte)
            .unwrap_err()
            .contains("fingerprint"));
        // An unknown hash is str0m's to judge.
        let other = GOOD.replace("sha-256 63", "md2 63");
        assert_eq!(check_credentials(&other), Ok(()));
    }
}
