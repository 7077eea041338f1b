//! Asking the browser for narrowband Opus (RFC 7587 §6.1) by editing our
//! SDP answer: str0m 0.25's `FormatParams` cannot express
//! `maxplaybackrate`. When the other leg is 8 kHz G.711, whatever Opus
//! carries above 4 kHz is thrown away by the transcoder, so the browser may
//! as well not spend bits (and CPU) on it.

/// The parameters we set on the Opus `a=fmtp:` line: we play back and
/// capture at 8 kHz, and in-band FEC stays on (the transcoder uses it).
/// `maxaveragebitrate`: told only `maxplaybackrate=8000`, Chromium codes at
/// 12 kb/s, which costs the browser-to-phone direction 0.33 MOS-LQO
/// against 24 kb/s (P.862, benches/src/speech_quality.rs; docs/decisions.md).
const NARROWBAND: [(&str, &str); 4] = [
    ("maxplaybackrate", "8000"),
    ("sprop-maxcapturerate", "8000"),
    ("maxaveragebitrate", "24000"),
    ("useinbandfec", "1"),
];

/// Rewrites the `a=fmtp:` line of every Opus payload type in `sdp` (adding
/// one after its `a=rtpmap:` when there is none) so that it carries
/// [`NARROWBAND`] once each; other parameters and lines, and the line
/// endings (CRLF or LF), are kept as they were.
pub(crate) fn narrowband_opus(sdp: &str) -> String {
    let opus_pts = opus_payload_types(sdp);
    if opus_pts.is_empty() {
        return sdp.to_string();
    }
    let has_fmtp = |pt: &str| {
        sdp.split_inclusive('\n')
            .any(|l| attribute(l, "a=fmtp:").is_some_and(|(p, _)| p == pt))
    };
    let mut out = String::with_capacity(sdp.len() + 96);
    for line in sdp.split_inclusive('\n') {
        let (_, ending) = split_ending(line);
        if let Some((pt, params)) = attribute(line, "a=fmtp:") {
            if opus_pts.contains(&pt) {
                out.push_str("a=fmtp:");
                out.push_str(pt);
                out.push(' ');
                out.push_str(&merged_params(params));
                out.push_str(ending);
                continue;
            }
        }
        out.push_str(line);
        if let Some((pt, _)) = attribute(line, "a=rtpmap:") {
            if opus_pts.contains(&pt) && !has_fmtp(pt) {
                // An Opus line without parameters gets a fmtp line of its
                // own, ended as the rtpmap line was (a last line may have no ending).
                if ending.is_empty() {
                    out.push_str(if sdp.contains("\r\n") { "\r\n" } else { "\n" });
                }
                out.push_str("a=fmtp:");
                out.push_str(pt);
                out.push(' ');
                out.push_str(&merged_params(""));
                out.push_str(ending);
            }
        }
    }
    out
}

/// The payload types mapped to `opus/48000/...` by `a=rtpmap:` lines.
fn opus_payload_types(sdp: &str) -> Vec<&str> {
    sdp.split_inclusive('\n')
        .filter_map(|l| attribute(l, "a=rtpmap:"))
        .filter(|(_, enc)| {
            enc.split('/')
                .next()
                .is_some_and(|n| n.eq_ignore_ascii_case("opus"))
        })
        .map(|(pt, _)| pt)
        .collect()
}

/// `a=<name>:<pt> <value>` → (pt, value), the line ending stripped.
fn attribute<'a>(line: &'a str, prefix: &str) -> Option<(&'a str, &'a str)> {
    let (body, _) = split_ending(line);
    let rest = body.strip_prefix(prefix)?;
    let (pt, value) = rest.split_once(' ').unwrap_or((rest, ""));
    (!pt.is_empty() && pt.bytes().all(|b| b.is_ascii_digit())).then_some((pt, value.trim()))
}

fn split_ending(line: &str) -> (&str, &str) {
    let body = line.trim_end_matches(['\r', '\n']);
    (body, &line[body.len()..])
}

/// The existing parameters minus ours (any case, any value), then ours.
fn merged_params(params: &str) -> String {
    let mut out = String::with_capacity(params.len() + 64);
    for p in params.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let key = p.split('=').next().unwrap_or("").trim();
        if NARROWBAND.iter().any(|(k, _)| k.eq_ignore_ascii_case(key)) {
            continue;
        }
        out.push_str(p);
        out.push(';');
    }
    for (i, (k, v)) in NARROWBAND.iter().enumerate() {
        if i > 0 {
            out.push(';');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(v);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANSWER: &str = "v=0\r\n\
o=- 1 2 IN IP4 0.0.0.0\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111 126\r\n\
a=rtpmap:111 opus/48000/2\r\n\
a=fmtp:111 minptime=10;useinbandfec=1\r\n\
a=rtpmap:126 telephone-event/48000\r\n\
a=fmtp:126 0-15\r\n\
a=ssrc:1 cname:x\r\n";

    fn fmtp<'a>(sdp: &'a str, pt: &str) -> Vec<&'a str> {
        sdp.split("\r\n")
            .filter(|l| l.starts_with(&format!("a=fmtp:{pt} ")))
            .collect()
    }

    #[test]
    fn only_the_opus_fmtp_line_changes() {
        let out = narrowband_opus(ANSWER);
        assert_eq!(
            fmtp(&out, "111"),
            ["a=fmtp:111 minptime=10;maxplaybackrate=8000;sprop-maxcapturerate=8000;maxaveragebitrate=24000;useinbandfec=1"]
        );
        assert_eq!(fmtp(&out, "126"), ["a=fmtp:126 0-15"]);
        let unchanged = |s: &str| {
            s.split("\r\n")
                .filter(|l| !l.starts_with("a=fmtp:111"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        assert_eq!(unchanged(&out), unchanged(ANSWER), "nothing else moves");
        assert_eq!(
            out.matches("\r\n").count(),
            ANSWER.matches("\r\n").count(),
            "CRLF kept, no line added"
        );
        assert!(!out.replace("\r\n", "").contains('\n'), "no bare LF");
    }

    #[test]
    fn no_duplicates_whatever_was_there() {
        let sdp = ANSWER.replace(
            "a=fmtp:111 minptime=10;useinbandfec=1",
            "a=fmtp:111 MaxPlaybackRate=48000; useinbandfec=0;stereo=1;sprop-maxcapturerate=16000",
        );
        let out = narrowband_opus(&sdp);
        assert_eq!(
            fmtp(&out, "111"),
            ["a=fmtp:111 stereo=1;maxplaybackrate=8000;sprop-maxcapturerate=8000;maxaveragebitrate=24000;useinbandfec=1"]
        );
        assert_eq!(narrowband_opus(&out), out, "idempotent");
    }

    #[test]
    fn an_opus_line_without_fmtp_gets_one_and_other_answers_are_untouched() {
        let bare = ANSWER.replace("a=fmtp:111 minptime=10;useinbandfec=1\r\n", "");
        let out = narrowband_opus(&bare);
        assert!(
            out.contains(
                "a=rtpmap:111 opus/48000/2\r\n\
                 a=fmtp:111 maxplaybackrate=8000;sprop-maxcapturerate=8000;maxaveragebitrate=24000;useinbandfec=1\r\n\
                 a=rtpmap:126"
            ),
            "{out}"
        );
        // LF-only SDP stays LF-only, also at a last line without an ending.
        let lf = "m=audio 9 RTP/AVP 109\na=rtpmap:109 OPUS/48000/2";
        assert_eq!(
            narrowband_opus(lf),
            "m=audio 9 RTP/AVP 109\na=rtpmap:109 OPUS/48000/2\n\
             a=fmtp:109 maxplaybackrate=8000;sprop-maxcapturerate=8000;maxaveragebitrate=24000;useinbandfec=1"
        );
        let g711 = "m=audio 9 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=fmtp:0 x=1\r\n";
        assert_eq!(narrowband_opus(g711), g711);
        assert_eq!(narrowband_opus(""), "");
        // Malformed attribute lines are left alone.
        let odd = "a=rtpmap:opus\r\na=fmtp: 111\r\na=rtpmap:1x1 opus/48000/2\r\n";
        assert_eq!(narrowband_opus(odd), odd);
    }
}
