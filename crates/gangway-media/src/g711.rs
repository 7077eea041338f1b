//! G.711 µ-law and A-law (ITU-T G.711), for the one conversion the
//! passthrough path may need: the browser sends one law, the PBX chose the other.

/// Decodes one µ-law byte to 16-bit linear PCM.
pub fn ulaw_to_linear(u: u8) -> i16 {
    let u = !u;
    let t = ((i32::from(u & 0x0f) << 3) + 0x84) << ((u & 0x70) >> 4);
    (if u & 0x80 != 0 { 0x84 - t } else { t - 0x84 }) as i16
}

/// Decodes one A-law byte to 16-bit linear PCM.
pub fn alaw_to_linear(a: u8) -> i16 {
    let a = a ^ 0x55;
    let seg = (a & 0x70) >> 4;
    let mut t = i32::from(a & 0x0f) << 4;
    t = match seg {
        0 => t + 8,
        1 => t + 0x108,
        _ => (t + 0x108) << (seg - 1),
    };
    (if a & 0x80 != 0 { t } else { -t }) as i16
}

/// Encodes 16-bit linear PCM to µ-law.
pub fn linear_to_ulaw(pcm: i16) -> u8 {
    const BIAS: i32 = 0x84;
    const CLIP: i32 = 32635;
    let mut v = i32::from(pcm);
    let sign = if v < 0 {
        v = -v;
        0x80
    } else {
        0
    };
    v = v.min(CLIP) + BIAS;
    let exponent = (7 - (v as u32).leading_zeros().saturating_sub(17)).min(7) as i32;
    let mantissa = (v >> (exponent + 3)) & 0x0f;
    !(sign | (exponent << 4) as u8 | mantissa as u8)
}

/// Encodes 16-bit linear PCM to A-law.
pub fn linear_to_alaw(pcm: i16) -> u8 {
    let mut v = i32::from(pcm);
    let sign = if v >= 0 {
        0x80
    } else {
        v = -v - 1;
        0
    };
    let v = v.min(0x7fff) >> 3;
    let byte = if v < 32 {
        (v >> 1) as u8
    } else {
        let seg = (31 - (v as u32).leading_zeros()) as i32 - 4;
        ((seg << 4) | ((v >> seg) & 0x0f)) as u8
    };
    (byte | sign) ^ 0x55
}

/// Tables for converting between the laws without going through code per sample.
pub struct LawTables {
    ulaw_to_alaw: [u8; 256],
    alaw_to_ulaw: [u8; 256],
}

impl LawTables {
    pub fn new() -> Self {
        let mut t = LawTables {
            ulaw_to_alaw: [0; 256],
            alaw_to_ulaw: [0; 256],
        };
        for b in 0..=255u8 {
            t.ulaw_to_alaw[b as usize] = linear_to_alaw(ulaw_to_linear(b));
            t.alaw_to_ulaw[b as usize] = linear_to_ulaw(alaw_to_linear(b));
        }
        t
    }

    /// Converts µ-law to A-law in place.
    pub fn ulaw_to_alaw(&self, data: &mut [u8]) {
        for b in data {
            *b = self.ulaw_to_alaw[*b as usize];
        }
    }

    /// Converts A-law to µ-law in place.
    pub fn alaw_to_ulaw(&self, data: &mut [u8]) {
        for b in data {
            *b = self.alaw_to_ulaw[*b as usize];
        }
    }
}

impl Default for LawTables {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_code_points() {
        // Silence and full scale, from the G.711 tables.
        assert_eq!(ulaw_to_linear(0xff), 0);
        assert_eq!(ulaw_to_linear(0x7f), 0);
        assert_eq!(ulaw_to_linear(0x00), -32124);
        assert_eq!(ulaw_to_linear(0x80), 32124);
        assert_eq!(alaw_to_linear(0xd5), 8);
        assert_eq!(alaw_to_linear(0x55), -8);
        assert_eq!(alaw_to_linear(0xaa), 32256);
        assert_eq!(alaw_to_linear(0x2a), -32256);
    }

    #[test]
    fn every_code_round_trips_through_linear() {
        for b in 0..=255u8 {
            // µ-law has two zeros (0x7f, 0xff); both decode to 0 and re-encode to 0xff.
            let u = linear_to_ulaw(ulaw_to_linear(b));
            assert_eq!(ulaw_to_linear(u), ulaw_to_linear(b), "ulaw {b:#x}");
            assert_eq!(linear_to_alaw(alaw_to_linear(b)), b, "alaw {b:#x}");
        }
    }

    #[test]
    fn encoding_error_is_within_the_segment_step() {
        for pcm in (-32000i32..32000).step_by(37) {
            let pcm = pcm as i16;
            let u = ulaw_to_linear(linear_to_ulaw(pcm));
            let a = alaw_to_linear(linear_to_alaw(pcm));
            let tolerance = (i32::from(pcm).abs() / 16).max(16);
            assert!(
                (i32::from(u) - i32::from(pcm)).abs() <= tolerance,
                "ulaw {pcm} -> {u}"
            );
            assert!(
                (i32::from(a) - i32::from(pcm)).abs() <= tolerance,
                "alaw {pcm} -> {a}"
            );
        }
    }

    #[test]
    fn law_conversion_preserves_the_signal() {
        let t = LawTables::new();
        let mut data: Vec<u8> = (0..=255u8).collect();
        let original: Vec<i16> = data.iter().map(|&b| ulaw_to_linear(b)).collect();
        t.ulaw_to_alaw(&mut data);
        for (i, &a) in data.iter().enumerate() {
            let back = alaw_to_linear(a);
            let tolerance = (i32::from(original[i]).abs() / 16).max(16);
            assert!((i32::from(back) - i32::from(original[i])).abs() <= tolerance);
        }
    }
}
