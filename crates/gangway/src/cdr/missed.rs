//! The record of an incoming call no connection took (rejected,
//! cancelled, unanswered, refused): the core's [`Missed`] with the names
//! the shell knows. It has no media and no answer time.

use std::time::{Instant, SystemTime};

use gangway_core::fork::Missed;

use super::record::{rfc3339, wallclock, Record};

/// What the inbound task hands the records for a missed call.
#[derive(Debug, Clone)]
pub struct MissedFacts {
    pub id: String,
    pub missed: Missed,
    /// The call id the connections were (or would have been) told.
    pub call_id: String,
    pub gangway_call_id: String,
    /// The front end that rang (`None`: nothing rang).
    pub front_end: Option<&'static str>,
    /// The PBX's Call-ID.
    pub sip_call_id: String,
    pub from: String,
    pub to: String,
    /// A wallclock reading and the instant it was taken.
    pub wall: SystemTime,
    pub at: Instant,
}

pub fn build(f: &MissedFacts) -> Record {
    let m = &f.missed;
    let date = |i: Instant| rfc3339(wallclock(f.wall, f.at, i));
    let total = m.ended.saturating_duration_since(m.started).as_secs_f64();
    Record {
        id: f.id.clone(),
        call_id: f.call_id.clone(),
        gangway_call_id: f.gangway_call_id.clone(),
        sip_call_id: Some(f.sip_call_id.clone()),
        sip_call_ids: vec![f.sip_call_id.clone()],
        front_end: f.front_end,
        direction: "inbound",
        from: f.from.clone(),
        to: f.to.clone(),
        start_time: date(m.started),
        answer_time: None,
        end_time: date(m.ended),
        duration_secs: 0.0,
        total_secs: (total * 1000.0).round() / 1000.0,
        end_reason: m.outcome,
        sip_code: Some(m.code),
        transcoded: None,
        mos: None,
        webrtc: None,
        sip: None,
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    #[test]
    fn a_cancelled_call_has_no_answer_and_no_media() {
        let t0 = Instant::now();
        let ended = t0 + Duration::from_millis(4_250);
        let facts = MissedFacts {
            id: "r1".into(),
            missed: Missed {
                started: t0,
                ended,
                outcome: "cancelled",
                code: 487,
                rang: true,
            },
            call_id: "in-1-2".into(),
            gangway_call_id: "1-2".into(),
            front_end: Some("json"),
            sip_call_id: "abc@pbx".into(),
            from: "sip:bob@pbx.test".into(),
            to: "sip:alice@gw.test".into(),
            // 2026-12-02T23:00:04.250Z
            wall: UNIX_EPOCH + Duration::from_millis(1_796_252_404_250),
            at: ended,
        };
        let json = serde_json::to_value(build(&facts)).unwrap();
        assert_eq!(json["start_time"], "2026-12-02T23:00:00.000Z");
        assert_eq!(json["end_time"], "2026-12-02T23:00:04.250Z");
        assert_eq!(json["answer_time"], serde_json::Value::Null);
        assert_eq!(
            (json["duration_secs"].as_f64(), json["total_secs"].as_f64()),
            (Some(0.0), Some(4.25))
        );
        assert_eq!(
            (&json["direction"], &json["end_reason"]),
            (&"inbound".into(), &"cancelled".into())
        );
        assert_eq!(json["sip_code"], 487);
        assert_eq!(json["sip_call_ids"], serde_json::json!(["abc@pbx"]));
        for none in ["transcoded", "mos", "webrtc", "sip"] {
            assert_eq!(json[none], serde_json::Value::Null, "{none}");
        }
        let nobody = MissedFacts {
            front_end: None,
            ..facts
        };
        assert_eq!(
            serde_json::to_value(build(&nobody)).unwrap()["front_end"],
            serde_json::Value::Null
        );
    }
}
