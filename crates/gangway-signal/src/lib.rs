//! The JSON-over-WebSocket API (v1) that browsers speak to Gangway.
//!
//! This crate owns the wire format only: typed messages, decoding with
//! machine-readable errors, their mapping to the call core's requests and
//! notifications ([`core_map`]), and the static browser assets. It holds no
//! call logic.
//! The exact format is documented in `docs/protocol.md`.

pub mod core_map;
mod protocol;
pub mod sip_ws;

pub use protocol::{
    decode, encode, valid_dtmf, ApiError, CallId, ClientMessage, EndReason, ErrorCode, Feature,
    HoldParty, IceCandidate, ResumedCall, ResumedCallState, ServerMessage, MAX_DTMF_DIGITS,
    MAX_RESUME_TOKEN_LEN, PROTOCOL_VERSION, REJECT_CODES,
};

/// Browser assets served by the gateway.
pub mod assets {
    /// The demo page, served at `/`.
    pub const INDEX_HTML: &str = include_str!("../assets/index.html");
    /// The dependency-free ES module client, served at `/client.js`.
    pub const CLIENT_JS: &str = include_str!("../assets/client.js");
    /// TypeScript typings for the client, served at `/client.d.ts`.
    pub const CLIENT_DTS: &str = include_str!("../assets/client.d.ts");
    /// The npm package (`gangway-client`) of those same two files.
    pub const PACKAGE_JSON: &str = include_str!("../assets/package.json");
}

#[cfg(test)]
mod tests {
    use super::assets::{CLIENT_JS, PACKAGE_JSON};
    use super::PROTOCOL_VERSION;

    /// The package's major version is the protocol version, and so is the
    /// version the client checks `hello.version` against.
    #[test]
    fn package_version_follows_the_protocol() {
        let package: serde_json::Value = serde_json::from_str(PACKAGE_JSON).unwrap();
        assert_eq!(package["name"], "gangway-client");
        let version = package["version"].as_str().unwrap();
        let major = version.split('.').next().unwrap();
        assert_eq!(major, PROTOCOL_VERSION.to_string(), "version {version}");
        let constant = format!("\nconst PROTOCOL_VERSION = {PROTOCOL_VERSION};\n");
        assert!(CLIENT_JS.contains(&constant), "client.js: {constant:?}");
        assert_eq!(package["type"], "module");
        assert_eq!(package["exports"]["."]["default"], "./client.js");
        assert_eq!(package["exports"]["."]["types"], "./client.d.ts");
    }
}
