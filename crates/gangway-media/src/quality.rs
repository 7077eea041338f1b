//! Estimated call quality: a simplified ITU-T G.107 E-model over what both
//! legs measured (loss, delay, jitter), mapped to a MOS between 1 and 4.5.
//! It ranks calls and raises alarms; it is not a listening test.

/// What the E-model needs, the worst of the two legs.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Impairments {
    /// Packet loss, 0–1.
    pub loss: f64,
    /// Round-trip time, ms.
    pub rtt_ms: f64,
    /// Interarrival jitter, ms.
    pub jitter_ms: f64,
}

/// Mean opinion score, 1.0 (bad) to 4.5 (best narrowband).
pub fn estimated_mos(i: Impairments) -> f64 {
    // One-way mouth-to-ear delay: half the RTT, a jitter buffer of twice the
    // jitter, and ~10 ms of packetization and codec delay.
    let d = i.rtt_ms / 2.0 + 2.0 * i.jitter_ms + 10.0;
    let id = 0.024 * d + if d > 177.3 { 0.11 * (d - 177.3) } else { 0.0 };
    // G.711 with concealment: Ie = 0, Bpl = 25.1 (G.113 Appendix I).
    let ppl = (i.loss * 100.0).clamp(0.0, 100.0);
    let ie_eff = 95.0 * ppl / (ppl + 25.1);
    let r = (93.2 - id - ie_eff).clamp(0.0, 100.0);
    (1.0 + 0.035 * r + 7e-6 * r * (r - 60.0) * (100.0 - r)).clamp(1.0, 4.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mos(loss: f64, rtt_ms: f64, jitter_ms: f64) -> f64 {
        estimated_mos(Impairments {
            loss,
            rtt_ms,
            jitter_ms,
        })
    }

    #[test]
    fn a_clean_call_scores_near_the_narrowband_ceiling() {
        let m = mos(0.0, 20.0, 1.0);
        assert!((4.3..=4.45).contains(&m), "{m}");
    }

    #[test]
    fn loss_delay_and_jitter_each_cost() {
        let clean = mos(0.0, 20.0, 1.0);
        assert!(
            mos(0.05, 20.0, 1.0) < clean - 0.4,
            "5 % loss: {}",
            mos(0.05, 20.0, 1.0)
        );
        assert!(
            mos(0.0, 600.0, 1.0) < clean - 0.3,
            "300 ms one way: {}",
            mos(0.0, 600.0, 1.0)
        );
        assert!(mos(0.0, 20.0, 80.0) < mos(0.0, 20.0, 5.0));
        assert_eq!(mos(1.0, 5000.0, 500.0), 1.0, "floor");
    }
}
