use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gangway_core::calls::CallSummary;
use gangway_core::{EndReason, LegId, SipLegId};
use gangway_media::{LegSummary, MediaReport};
use gangway_rtc::{LegStats, PeerId};

use super::*;

/// 2026-12-02T23:00:00Z.
const WALL_SECS: u64 = 1_796_252_400;

fn facts(t0: Instant, leg: u64, answered: bool, media_leg: bool) -> CallFacts {
    CallFacts {
        id: format!("r{leg}"),
        summary: CallSummary {
            leg: LegId(leg),
            inbound: false,
            from: None,
            to: "1000".into(),
            started: t0,
            answered: answered.then(|| t0 + Duration::from_millis(1500)),
            ended: t0 + Duration::from_secs(12),
            reason: EndReason::RemoteHangup,
            code: None,
            media_leg,
            sip_legs: vec![SipLegId(9)],
        },
        call_id: "c1".into(),
        gangway_call_id: "g-1".into(),
        front_end: "json",
        sip_call_ids: vec!["abc@host".into()],
        default_from: "gangway".into(),
        wall: UNIX_EPOCH + Duration::from_secs(WALL_SECS + 12),
        at: t0 + Duration::from_secs(12),
    }
}

fn media(leg: u64) -> MediaReport {
    MediaReport {
        peer: PeerId(leg),
        webrtc: LegStats {
            packets_received: 500,
            packets_sent: 490,
            bytes_received: 80_000,
            bytes_sent: 78_400,
            loss_from_browser: Some(0.01),
            ..LegStats::default()
        },
        sip: Some(LegSummary {
            packets_received: 495,
            packets_sent: 500,
            bytes_received: 79_200,
            bytes_sent: 80_000,
            sip_codec: Some("PCMU"),
            browser_codec: "PCMU",
            ..LegSummary::default()
        }),
        mos: Some(4.4123),
    }
}

#[test]
fn dates_are_rfc3339_utc() {
    let t = UNIX_EPOCH + Duration::from_millis(WALL_SECS * 1000 + 7);
    assert_eq!(rfc3339(t), "2026-12-02T23:00:00.007Z");
    assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    // A leap day.
    assert_eq!(civil_from_days(19_782), (2024, 2, 29));
}

#[test]
fn a_record_waits_for_its_media_and_joins_it() {
    let t0 = Instant::now();
    let mut a = Assembler::default();
    let now = t0 + Duration::from_secs(12);
    a.on_call(now, facts(t0, 5, true, true));
    assert_eq!(a.poll_output(), None);
    assert_eq!(a.poll_timeout(), Some(now + MEDIA_WAIT));
    a.on_media(now + Duration::from_millis(3), media(5));
    let r = a.poll_output().expect("joined");
    assert_eq!(a.poll_timeout(), None);
    assert_eq!(r.start_time, "2026-12-02T23:00:00.000Z");
    assert_eq!(r.answer_time.as_deref(), Some("2026-12-02T23:00:01.500Z"));
    assert_eq!(r.end_time, "2026-12-02T23:00:12.000Z");
    assert_eq!((r.duration_secs, r.total_secs), (10.5, 12.0));
    assert_eq!((r.direction, r.from.as_str()), ("outbound", "gangway"));
    assert_eq!(r.end_reason, "remote_hangup");
    assert_eq!(r.sip_call_id.as_deref(), Some("abc@host"));
    assert_eq!((r.transcoded, r.mos), (Some(false), Some(4.41)));
    let sip = r.sip.expect("SIP leg");
    assert_eq!(
        (sip.codec, sip.packets_received, sip.bytes_sent),
        (Some("PCMU"), 495, 80_000)
    );
    let webrtc = r.webrtc.expect("WebRTC leg");
    assert_eq!((webrtc.codec, webrtc.packets_sent), (Some("PCMU"), 490));
    let json = serde_json::to_value(build(&facts(t0, 5, false, true), Some(&media(5)))).unwrap();
    assert_eq!(json["answer_time"], serde_json::Value::Null);
    assert_eq!(json["duration_secs"], 0.0);
}

#[test]
fn media_first_then_the_call() {
    let t0 = Instant::now();
    let mut a = Assembler::default();
    a.on_media(t0, media(6));
    a.on_call(t0, facts(t0, 6, true, true));
    assert!(a.poll_output().expect("joined").sip.is_some());
    assert_eq!(a.poll_timeout(), None);
}

#[test]
fn late_media_leaves_the_record_without_it() {
    let t0 = Instant::now();
    let mut a = Assembler::default();
    a.on_call(t0, facts(t0, 7, true, true));
    a.handle_timeout(t0 + MEDIA_WAIT - Duration::from_millis(1));
    assert_eq!(a.poll_output(), None);
    a.handle_timeout(t0 + MEDIA_WAIT);
    let r = a.poll_output().expect("given up waiting");
    assert_eq!((r.webrtc, r.sip, r.mos), (None, None, None));
    // The report that comes afterwards is kept a while, then forgotten.
    a.on_media(t0 + MEDIA_WAIT, media(7));
    a.handle_timeout(t0 + MEDIA_WAIT * 2);
    assert_eq!((a.poll_output(), a.poll_timeout()), (None, None));
}

#[test]
fn a_call_without_a_media_leg_is_recorded_at_once() {
    let t0 = Instant::now();
    let mut a = Assembler::default();
    a.on_call(t0, facts(t0, 8, false, false));
    let r = a.poll_output().expect("no wait");
    assert_eq!((r.answer_time, r.duration_secs), (None, 0.0));
}

#[test]
fn wallclock_before_the_reading() {
    let t0 = Instant::now();
    let f = facts(t0, 1, false, false);
    let expected = UNIX_EPOCH + Duration::from_secs(WALL_SECS);
    assert_eq!(wallclock(f.wall, f.at, t0), expected);
    assert!(wallclock(f.wall, f.at, t0 + Duration::from_secs(20)) > SystemTime::UNIX_EPOCH);
}

#[test]
fn a_missed_call_is_recorded_at_once_without_media() {
    let t0 = Instant::now();
    let mut a = Assembler::default();
    a.on_call(t0, facts(t0, 9, true, true));
    let missed = crate::cdr::missed::MissedFacts {
        id: "m1".into(),
        missed: gangway_core::fork::Missed {
            started: t0,
            ended: t0 + Duration::from_secs(60),
            outcome: "no_answer",
            code: 480,
            rang: true,
        },
        call_id: "in-1-3".into(),
        gangway_call_id: "1-3".into(),
        front_end: Some("sip_ws"),
        sip_call_id: "x@pbx".into(),
        from: "sip:bob@pbx.test".into(),
        to: "sip:alice@gw.test".into(),
        wall: UNIX_EPOCH + Duration::from_secs(WALL_SECS + 60),
        at: t0 + Duration::from_secs(60),
    };
    a.on_missed(&missed);
    let r = a.poll_output().expect("no wait for media");
    assert_eq!(
        (r.id.as_str(), r.end_reason, r.sip_code),
        ("m1", "no_answer", Some(480))
    );
    assert_eq!(
        (r.front_end, r.total_secs, r.webrtc),
        (Some("sip_ws"), 60.0, None)
    );
    assert_eq!(a.waiting(), 1, "the other call still waits for its media");
}
