//! DTMF both ways, as the media bridge and the SIP leg handle it: the far
//! end's RFC 4733 telephone events (parsed RTP, placed on the browser's
//! timeline, relayed with their durations, segments and end repeats),
//! its audio frames meanwhile, digits from SIP INFO bodies
//! (`application/dtmf-relay` and `application/dtmf`) synthesized as
//! events, and the browser's events sent on to the SIP leg.
//!
//! Input: records of `[op][length][data]`; `op` picks the kind (see the
//! match below).
#![no_main]

use gangway_media::dtmf::{DtmfReceiver, DtmfSender};
use gangway_media::dtmf_relay::DtmfRelay;
use gangway_media::rtp::{self, InTimeline};
use gangway_sip::fuzzing::info_dtmf_digit;
use libfuzzer_sys::fuzz_target;

const CONTENT_TYPES: [&str; 4] = [
    "application/dtmf-relay",
    "application/dtmf",
    "Application/DTMF-Relay; charset=utf-8",
    "text/plain",
];

fuzz_target!(|data: &[u8]| {
    let mut timeline = InTimeline::default();
    let mut to_browser_next: Option<u64> = None;
    let mut relay = DtmfRelay::default();
    let mut from_sip = DtmfReceiver::default();
    let mut from_browser = DtmfReceiver::default();
    let mut to_sip = DtmfSender::default();
    let mut stream_ts: u32 = 0;
    let mut rest = data;
    while let [op, len, tail @ ..] = rest {
        let (record, next) = tail.split_at(usize::from(*len).min(tail.len()));
        rest = next;
        match op % 5 {
            // A telephone-event packet from the SIP leg.
            0 => {
                let Some(packet) = rtp::parse(record) else {
                    continue;
                };
                let start = timeline
                    .place(packet.ssrc, packet.ts)
                    .or(to_browser_next)
                    .unwrap_or(0);
                let _ = from_sip.on_packet(packet.ssrc, packet.ts, packet.payload);
                relay.on_sip_event(packet.ssrc, packet.ts, start, packet.payload);
            }
            // An audio packet from the SIP leg; one of our frames towards it.
            1 => {
                let Some(packet) = rtp::parse(record) else {
                    continue;
                };
                let samples = packet.payload.len() as u32;
                let time = timeline.map(packet.ssrc, packet.ts, samples);
                let end = time + u64::from(samples);
                to_browser_next = Some(to_browser_next.map_or(end, |n| n.max(end)));
                let _ = relay.on_sip_audio(time, samples);
                stream_ts = stream_ts.wrapping_add(160);
                let _ = to_sip.next(stream_ts);
            }
            // A SIP INFO body, its Content-Type picked by the first byte.
            2 => {
                let Some((&pick, body)) = record.split_first() else {
                    continue;
                };
                let content_type = CONTENT_TYPES.get(usize::from(pick)).copied();
                if let Some(digit) = info_dtmf_digit(content_type, body) {
                    // False only when 32 digits already wait (an INFO flood).
                    let _ = relay.queue_digit(digit);
                }
            }
            // A telephone event from the browser: `[code][start: u32 BE]`.
            3 => {
                let [code, a, b, c, d, ..] = *record else {
                    continue;
                };
                let start = u32::from_be_bytes([a, b, c, d]);
                if let Some(digit) = from_browser.on_packet(0, start, &[code, 0, 0, 0]) {
                    assert_eq!(to_sip.push(&digit.to_string()), 1);
                }
            }
            // The browser leg's codec changes (Opus: a 48 kHz event clock).
            _ => relay.set_opus(record.first().is_some_and(|b| b & 1 == 1)),
        }
        while let Some(event) = relay.pop() {
            assert!(event.payload[0] <= 15, "only DTMF goes to the browser");
        }
    }
});
