//! The gateway with its SIP leg pointed at sipp, as the load generators
//! that go through the SIP leg start it, and its metrics.

use std::net::SocketAddr;
use std::path::Path;

use crate::GatewayProcess;
use gangway_tests::sip_peers::{free_udp_port, free_udp_range, Sipp};

/// sipp answering every call (and echoing RTP with `-rtp_echo`) and the
/// gateway whose trunk it is. Dropping it stops both.
pub struct SipLeg {
    pub gateway: GatewayProcess,
    pub sipp: Sipp,
    pub http: SocketAddr,
}

/// Starts sipp's `uas_answer_wait_bye.xml` for `calls` calls, echoing RTP,
/// and the release gateway at `binary` with its trunk pointed at it, RTP
/// ports for `calls` calls, and `settings` (more `GANGWAY_*` variables,
/// which win over these).
pub fn start(binary: &Path, calls: usize, settings: &[(&str, String)]) -> SipLeg {
    let calls_text = calls.to_string();
    let sipp = Sipp::uas(
        "uas_answer_wait_bye.xml",
        0,
        &["-rtp_echo", "-m", &calls_text],
    );
    with_sipp(binary, sipp, calls, settings)
}

/// Like [`start`] with a sipp of the caller's (another scenario).
pub fn with_sipp(binary: &Path, sipp: Sipp, calls: usize, settings: &[(&str, String)]) -> SipLeg {
    let http: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
    let ports = (calls * 2 + 8) as u16;
    let rtp = free_udp_range(ports);
    let mut env = vec![
        ("GANGWAY_WEBRTC__LISTEN", "127.0.0.1:0".into()),
        ("GANGWAY_CALLS__SETUP_TIMEOUT_SECS", "60".into()),
        ("GANGWAY_SIP__ENABLED", "true".into()),
        ("GANGWAY_SIP__LISTEN", "127.0.0.1:0".into()),
        ("GANGWAY_SIP__RTP_PORT_MIN", rtp.to_string()),
        ("GANGWAY_SIP__RTP_PORT_MAX", (rtp + ports - 1).to_string()),
        ("GANGWAY_SIP__TRUNK__HOST", "127.0.0.1".into()),
        ("GANGWAY_SIP__TRUNK__PORT", sipp.port().to_string()),
        ("GANGWAY_SIP__TRUNK__DOMAIN", "pbx.test".into()),
        // sipp's UAS would take an OPTIONS probe for a failed call.
        ("GANGWAY_SIP__KEEPALIVE_INTERVAL_SECS", "0".into()),
    ];
    env.extend_from_slice(settings);
    let gateway = GatewayProcess::start(binary, http, &env);
    SipLeg {
        gateway,
        sipp,
        http,
    }
}

/// The gateway's `/metrics` text ("" if it cannot be read).
pub fn metrics(http: SocketAddr) -> String {
    use std::io::{Read, Write};
    let Ok(mut conn) = std::net::TcpStream::connect(http) else {
        return String::new();
    };
    let _ = conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: gangway\r\n\r\n");
    let mut text = String::new();
    let _ = conn.read_to_string(&mut text);
    text
}

/// The sum of every sample of metric `name` (all label sets) in `text`.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The gateway's packet counters, to tell where loss happened, and its
/// transcoding counters, to tell whether it transcoded.
pub fn counters(http: SocketAddr) -> String {
    let text = metrics(http);
    if text.is_empty() {
        return "metrics unavailable".into();
    }
    text.lines()
        .filter(|l| {
            [
                "gangway_webrtc_packets_",
                "gangway_webrtc_bytes_",
                "gangway_webrtc_send_drops",
                "gangway_webrtc_unmatched",
                "gangway_rtp_packets_",
                "gangway_rtp_bytes_",
                "gangway_rtp_dropped",
                "gangway_browser_opus_packets",
                "gangway_concealed_frames",
            ]
            .iter()
            .any(|p| l.starts_with(p))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The codec of the first payload type on the `m=audio` line of `sdp`
/// (`PCMU`, `opus`, …), or "" if it names none.
pub fn answered_codec(sdp: &str) -> String {
    let pt = sdp
        .lines()
        .find(|l| l.starts_with("m=audio"))
        .and_then(|l| l.split_whitespace().nth(3))
        .unwrap_or("");
    let prefix = format!("a=rtpmap:{pt} ");
    sdp.lines()
        .find_map(|l| l.trim_end().strip_prefix(&prefix))
        .and_then(|codec| codec.split('/').next())
        .unwrap_or("")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::{answered_codec, metric_sum};

    #[test]
    fn sums_every_label_set_of_one_metric_only() {
        let text = "# HELP x\n\
                    gangway_rtp_packets_sent_total 10\n\
                    gangway_browser_opus_packets_total{bandwidth=\"narrow\"} 3\n\
                    gangway_browser_opus_packets_total{bandwidth=\"wide\"} 4\n\
                    gangway_rtp_packets_sent_total_extra 99\n";
        assert_eq!(metric_sum(text, "gangway_rtp_packets_sent_total"), 10.0);
        assert_eq!(metric_sum(text, "gangway_browser_opus_packets_total"), 7.0);
        assert_eq!(metric_sum(text, "gangway_absent_total"), 0.0);
    }

    #[test]
    fn finds_the_first_payload_types_codec() {
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0 101\r\n\
                   a=rtpmap:101 telephone-event/8000\r\na=rtpmap:0 PCMU/8000\r\n";
        assert_eq!(answered_codec(sdp), "PCMU");
        assert_eq!(answered_codec("v=0\r\n"), "");
    }
}
