//! Speech for the quality bench: synthesized talkers, the encodings each
//! side sends, the tracks decoded from what each side received, and their
//! P.862 scores. The synthesis and PESQ run in Python (`benches/quality/
//! pesq_tool.py`) inside a virtual environment of the bench's own, made on
//! first use; `espeak-ng` and Python's venv come from apt-get.

use std::path::{Path, PathBuf};
use std::process::Command;

use gangway_media::g711::{linear_to_ulaw, ulaw_to_linear};

/// 8 kHz samples in 20 ms.
pub const FRAME_8K: usize = 160;
/// 48 kHz samples in 20 ms.
pub const FRAME_48K: usize = 960;

/// One talker's sentences, at the SIP side's rate and at a browser's.
pub struct Talker {
    pub name: String,
    pub pcm_8k: Vec<i16>,
    pub pcm_48k: Vec<i16>,
}

/// The bench's tools: where its virtual environment and files live.
pub struct Tools {
    python: PathBuf,
    script: PathBuf,
    pub dir: PathBuf,
}

impl Tools {
    /// Installs what is missing (apt-get, pip into `dir/venv`) and
    /// synthesizes the talkers into `dir`.
    pub fn prepare(dir: &Path) -> Tools {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let script = workspace.join("benches/quality/pesq_tool.py");
        let missing: Vec<&str> = [
            ("espeak-ng", &["--version"][..], "espeak-ng"),
            (
                "/usr/bin/python3",
                &["-m", "venv", "--help"][..],
                "python3-venv",
            ),
            ("cc", &["--version"][..], "gcc"),
        ]
        .into_iter()
        .filter(|(bin, args, _)| !runs(bin, args))
        .map(|(_, _, package)| package)
        .collect();
        if !missing.is_empty() {
            eprintln!("installing {missing:?} with apt-get");
            let mut apt = Command::new("apt-get");
            apt.args(["install", "-y", "-q", "python3-dev"])
                .args(&missing);
            assert!(
                apt.status().map(|s| s.success()).unwrap_or(false),
                "apt-get install {missing:?} failed"
            );
        }
        let venv = dir.join("venv");
        let python = venv.join("bin/python");
        if !runs(&python, &["-c", "import numpy, scipy, pesq"]) {
            eprintln!("creating {} with numpy, scipy and pesq", venv.display());
            std::fs::create_dir_all(dir).unwrap();
            assert!(runs(
                "/usr/bin/python3",
                &["-m", "venv", venv.to_str().unwrap()]
            ));
            let pip = venv.join("bin/pip");
            assert!(
                runs(
                    &pip,
                    &["install", "-q", "numpy<3", "scipy<2", "pesq==0.0.4"]
                ),
                "pip install numpy scipy pesq failed"
            );
        }
        let tools = Tools {
            python,
            script,
            dir: dir.to_path_buf(),
        };
        let status = Command::new(&tools.python)
            .arg(&tools.script)
            .arg("prepare")
            .arg(dir)
            .status()
            .expect("run pesq_tool.py");
        assert!(status.success(), "pesq_tool.py prepare failed");
        tools
    }

    pub fn talkers(&self) -> Vec<Talker> {
        let out = Command::new(&self.python)
            .arg(&self.script)
            .arg("talkers")
            .output()
            .expect("run pesq_tool.py talkers");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|name| Talker {
                name: name.to_string(),
                pcm_8k: read_raw(&self.dir.join(format!("{name}.8k.raw"))),
                pcm_48k: read_raw(&self.dir.join(format!("{name}.48k.raw"))),
            })
            .collect()
    }

    /// P.862 narrowband MOS-LQO of each `degraded` 8 kHz track against
    /// `reference`.
    pub fn pesq(&self, reference: &[i16], degraded: &[Vec<i16>]) -> Vec<f64> {
        let reference_file = self.dir.join("reference.raw");
        write_raw(&reference_file, reference);
        let files: Vec<PathBuf> = degraded
            .iter()
            .enumerate()
            .map(|(i, track)| {
                let f = self.dir.join(format!("degraded-{i}.raw"));
                write_raw(&f, track);
                f
            })
            .collect();
        let out = Command::new(&self.python)
            .arg(&self.script)
            .arg("score")
            .arg(&reference_file)
            .args(&files)
            .output()
            .expect("run pesq_tool.py score");
        assert!(
            out.status.success(),
            "pesq_tool.py score: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let scores: Vec<f64> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim().parse().expect("a score"))
            .collect();
        assert_eq!(scores.len(), degraded.len());
        scores
    }
}

fn runs(bin: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> bool {
    Command::new(bin)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn read_raw(path: &Path) -> Vec<i16> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    bytes
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect()
}

fn write_raw(path: &Path, pcm: &[i16]) {
    let bytes: Vec<u8> = pcm.iter().flat_map(|s| s.to_le_bytes()).collect();
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// What a browser sends of `pcm_48k` when an answer says
/// `maxplaybackrate=8000`: Opus frames as Chromium encodes them (see
/// [`crate::BrowserOpus::Narrowband`]) at `bitrate`, the answer's
/// `maxaveragebitrate` or else Chromium's narrowband default, 12 kb/s.
pub fn browser_opus_at(pcm_48k: &[i16], bitrate: i32) -> Vec<Vec<u8>> {
    let mut enc = crate::BrowserOpus::Narrowband.encoder();
    enc.set_bitrate(opus::Bitrate::Bits(bitrate)).unwrap();
    pcm_48k
        .chunks(FRAME_48K)
        .map(|chunk| {
            let mut frame = chunk.to_vec();
            frame.resize(FRAME_48K, 0);
            enc.encode_vec(&frame, 400).expect("encode")
        })
        .collect()
}

/// What a SIP phone sends of `pcm_8k`: µ-law, 20 ms a packet.
pub fn pcmu_frames(pcm_8k: &[i16]) -> Vec<Vec<u8>> {
    pcm_8k
        .chunks(FRAME_8K)
        .map(|chunk| {
            let mut frame: Vec<u8> = chunk.iter().map(|&s| linear_to_ulaw(s)).collect();
            frame.resize(FRAME_8K, linear_to_ulaw(0));
            frame
        })
        .collect()
}

/// G.711 alone: `pcm_8k` through µ-law and back, the ceiling of any path
/// with a G.711 leg.
pub fn through_pcmu(pcm_8k: &[i16]) -> Vec<i16> {
    pcm_8k
        .iter()
        .map(|&s| ulaw_to_linear(linear_to_ulaw(s)))
        .collect()
}

/// The audio a SIP phone plays from the µ-law packets it received, given
/// as (RTP sequence number, payload): in sequence order, a missing packet
/// as 20 ms of silence (there are none on loopback; counted).
pub fn pcmu_track(packets: &[(u16, Vec<u8>)]) -> (Vec<i16>, usize) {
    let Some(first) = packets.first().map(|p| p.0) else {
        return (Vec::new(), 0);
    };
    let mut slots: Vec<Option<&[u8]>> = Vec::new();
    for (seq, payload) in packets {
        let at = seq.wrapping_sub(first) as usize;
        if at >= 0x8000 {
            continue; // older than the first: reordered before it
        }
        if slots.len() <= at {
            slots.resize(at + 1, None);
        }
        slots[at] = Some(payload);
    }
    let missing = slots.iter().filter(|s| s.is_none()).count();
    let track = slots
        .iter()
        .flat_map(|s| match s {
            Some(p) => p.iter().map(|&b| ulaw_to_linear(b)).collect::<Vec<_>>(),
            None => vec![0; FRAME_8K],
        })
        .collect();
    (track, missing)
}

/// The audio a browser plays from the Opus frames it received, given as
/// (RTP time at 48 kHz, payload), decoded at 8 kHz; a missing frame is
/// concealed by the decoder, as a browser's jitter buffer would ask it to.
pub fn opus_track(frames: &[(u64, Vec<u8>)]) -> (Vec<i16>, usize) {
    let Some(first) = frames.iter().map(|f| f.0).min() else {
        return (Vec::new(), 0);
    };
    let mut slots: Vec<Option<&[u8]>> = Vec::new();
    for (time, payload) in frames {
        let at = ((time - first) / FRAME_48K as u64) as usize;
        if slots.len() <= at {
            slots.resize(at + 1, None);
        }
        slots[at] = Some(payload);
    }
    let mut dec = opus::Decoder::new(8000, opus::Channels::Mono).expect("decoder");
    let mut track = Vec::with_capacity(slots.len() * FRAME_8K);
    let mut pcm = [0i16; FRAME_8K * 6];
    let mut missing = 0;
    for slot in &slots {
        let n = match slot {
            Some(p) => dec.decode(p, &mut pcm, false),
            None => {
                missing += 1;
                dec.decode(&[], &mut pcm[..FRAME_8K], false)
            }
        }
        .expect("decode");
        track.extend_from_slice(&pcm[..n]);
    }
    (track, missing)
}

/// Browser to phone without the gateway: Chromium's Opus of `pcm_48k` at
/// `browser_bitrate` decoded at 8 kHz and through µ-law, as the gateway
/// passes it on.
pub fn offline_to_phone(pcm_48k: &[i16], browser_bitrate: i32) -> Vec<i16> {
    let mut dec = opus::Decoder::new(8000, opus::Channels::Mono).unwrap();
    let mut pcm = [0i16; FRAME_8K];
    let mut out = Vec::new();
    for packet in browser_opus_at(pcm_48k, browser_bitrate) {
        let n = dec.decode(&packet, &mut pcm, false).unwrap();
        out.extend(pcm[..n].iter().map(|&s| ulaw_to_linear(linear_to_ulaw(s))));
    }
    out
}

/// The same chain as the gateway's transcoding, without the gateway:
/// µ-law from the phone decoded, Opus encoded at `complexity` (8 kHz,
/// 24 kb/s, FEC, VoIP, as `gangway-media` does) and decoded at 8 kHz as a
/// browser would. What the codecs alone allow.
pub fn offline_to_browser(pcm_8k: &[i16], complexity: u8) -> Vec<i16> {
    let settings = gangway_media::OpusSettings {
        complexity,
        ..Default::default()
    };
    let mut enc = gangway_media::transcode::browser_encoder(settings).unwrap();
    let mut dec = opus::Decoder::new(8000, opus::Channels::Mono).unwrap();
    let mut out = Vec::with_capacity(pcm_8k.len());
    let mut pcm = [0i16; FRAME_8K];
    for frame in pcmu_frames(pcm_8k) {
        let linear: Vec<i16> = frame.iter().map(|&b| ulaw_to_linear(b)).collect();
        let packet = enc.encode_vec(&linear, 400).unwrap();
        let n = dec.decode(&packet, &mut pcm, false).unwrap();
        out.extend_from_slice(&pcm[..n]);
    }
    out
}

/// The bitrate Chromium codes Opus at for an answer `sdp`: its
/// `maxaveragebitrate`, else 12 kb/s (its default for narrowband playback).
pub fn answered_bitrate(sdp: &str) -> i32 {
    sdp.lines()
        .filter(|l| l.starts_with("a=fmtp:"))
        .flat_map(|l| l.split([' ', ';']))
        .find_map(|p| p.trim().strip_prefix("maxaveragebitrate=")?.parse().ok())
        .unwrap_or(12_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(samples: usize, rate: f64) -> Vec<i16> {
        (0..samples)
            .map(|i| (8000.0 * (2.0 * std::f64::consts::PI * 440.0 * i as f64 / rate).sin()) as i16)
            .collect()
    }

    #[test]
    fn the_answer_sets_the_browser_bitrate() {
        let ours = "a=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10;maxplaybackrate=8000;maxaveragebitrate=24000\r\n";
        assert_eq!(answered_bitrate(ours), 24_000);
        assert_eq!(
            answered_bitrate("a=fmtp:111 maxplaybackrate=8000\r\n"),
            12_000
        );
    }

    #[test]
    fn pcmu_track_orders_by_sequence_and_fills_gaps() {
        let frames = pcmu_frames(&tone(FRAME_8K * 4, 8000.0));
        // Sequence numbers wrap; the third packet is lost, the last two swap.
        let packets = vec![
            (65534u16, frames[0].clone()),
            (65535, frames[1].clone()),
            (1, frames[3].clone()),
        ];
        let (track, missing) = pcmu_track(&packets);
        assert_eq!(missing, 1);
        assert_eq!(track.len(), 4 * FRAME_8K);
        assert!(track[2 * FRAME_8K..3 * FRAME_8K].iter().all(|&s| s == 0));
        assert_eq!(track[..FRAME_8K], through_pcmu(&tone(FRAME_8K, 8000.0))[..]);
    }

    #[test]
    fn opus_track_conceals_a_missing_frame() {
        let mut enc = crate::BrowserOpus::Narrowband.encoder();
        let pcm = tone(FRAME_48K * 10, 48_000.0);
        let frames: Vec<(u64, Vec<u8>)> = pcm
            .chunks(FRAME_48K)
            .enumerate()
            .filter(|(i, _)| *i != 5)
            .map(|(i, c)| {
                (
                    1000 + (i * FRAME_48K) as u64,
                    enc.encode_vec(c, 400).unwrap(),
                )
            })
            .collect();
        let (track, missing) = opus_track(&frames);
        assert_eq!(missing, 1);
        assert_eq!(track.len(), 10 * FRAME_8K);
        // Concealment continues the tone rather than leaving silence.
        let concealed = &track[5 * FRAME_8K..6 * FRAME_8K];
        assert!(concealed.iter().map(|&s| i32::from(s).abs()).max().unwrap() > 1000);
    }
}
