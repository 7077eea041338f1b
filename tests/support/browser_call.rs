//! Headless Chromium placing one call through the gateway's own JS client:
//! the page scripts (shared state in `window.__gangwaySip`), the browser
//! launch with a tone as its microphone, and the recording the page returns,
//! cut by where the call's events arrived in it. Used by the browser tests.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use serde_json::Value;

use crate::audio::{i16le_to_f32, rms, tone_coverage, write_tone_wav};
use crate::sip_peers::Baresip;
use crate::webdriver::{Browser, BrowserOptions, TempDir};

/// The browser's fake microphone.
pub const BROWSER_TONE_HZ: f64 = 1000.0;
/// The fake microphone's WAV rate (Chromium's capture rate).
pub const WAV_RATE: u32 = 48_000;
/// Limit for each in-page script; its own steps time out sooner so a
/// failure comes back with its event log instead of a bare script timeout.
pub const SCRIPT_TIMEOUT: Duration = Duration::from_secs(40);

/// Shared by the scripts below: the call, its event log and the recorder
/// live in `window.__gangwaySip` between scripts.
pub const PAGE_LIB: &str = r#"
const S = window.__gangwaySip ?? (window.__gangwaySip = {
  t0: performance.now(), events: [], marks: {}, chunks: [], recorded: 0,
  recording: true, sampleRate: null, call: null, gw: null, ctx: null, ended: null,
});
const log = (what) => S.events.push(`${Math.round(performance.now() - S.t0)}ms @${S.recorded} ${what}`);
// Where in the recording (in samples) something first happened.
const mark = (name) => { if (!(name in S.marks)) S.marks[name] = S.recorded; };
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const withTimeout = (p, ms, what) => Promise.race([
  p,
  sleep(ms).then(() => { throw new Error(`timed out after ${ms} ms waiting for ${what}`); }),
]);

async function stats() {
  const pc = S.call?.peerConnection;
  if (!pc) return null;
  const out = {
    signalingState: pc.signalingState,
    iceConnectionState: pc.iceConnectionState,
    connectionState: pc.connectionState,
    reports: {},
  };
  try {
    const report = await pc.getStats();
    const codecs = {};
    report.forEach((s) => { if (s.type === 'codec') codecs[s.id] = s; });
    report.forEach((s) => {
      if (s.type === 'inbound-rtp' && s.kind === 'audio') {
        out.inboundCodec = codecs[s.codecId]?.mimeType ?? null;
        out.reports.inbound = {
          packetsReceived: s.packetsReceived, packetsLost: s.packetsLost, bytesReceived: s.bytesReceived,
          jitter: s.jitter, audioLevel: s.audioLevel, totalSamplesReceived: s.totalSamplesReceived,
          concealedSamples: s.concealedSamples, jitterBufferDelay: s.jitterBufferDelay,
          jitterBufferEmittedCount: s.jitterBufferEmittedCount,
        };
      } else if (s.type === 'outbound-rtp' && s.kind === 'audio') {
        out.outboundCodec = codecs[s.codecId]?.mimeType ?? null;
        out.reports.outbound = { packetsSent: s.packetsSent, bytesSent: s.bytesSent };
      } else if (s.type === 'media-source' && s.kind === 'audio') {
        out.reports.source = { audioLevel: s.audioLevel, totalAudioEnergy: s.totalAudioEnergy };
      } else if (s.type === 'transport') {
        out.reports.transport = { dtlsState: s.dtlsState, iceState: s.iceState };
      }
    });
  } catch (e) {
    out.statsError = String(e);
  }
  return out;
}

function toBase64Int16(chunks) {
  const total = chunks.reduce((n, c) => n + c.length, 0);
  const pcm = new Int16Array(total);
  let i = 0;
  for (const c of chunks) {
    for (let j = 0; j < c.length; j++, i++) {
      pcm[i] = Math.max(-32768, Math.min(32767, Math.round(c[j] * 32768)));
    }
  }
  const bytes = new Uint8Array(pcm.buffer); // little-endian on every platform Chromium runs on
  let bin = '';
  for (let k = 0; k < bytes.length; k += 0x8000) {
    bin += String.fromCharCode.apply(null, bytes.subarray(k, k + 0x8000));
  }
  return btoa(bin);
}

// Records the remote stream from now on, continuously, into S.chunks.
async function startRecorder(stream) {
  // Chromium only feeds remote WebRTC audio to WebAudio while the stream is
  // also attached to a media element; muted keeps the test silent.
  const audio = document.createElement('audio');
  audio.muted = true;
  audio.autoplay = true;
  audio.srcObject = stream;
  document.body.appendChild(audio);
  await audio.play().catch((e) => log(`audio.play() failed: ${e}`));
  const ctx = S.ctx = new AudioContext({ sampleRate: 48000 });
  await ctx.resume();
  S.sampleRate = ctx.sampleRate;
  const source = ctx.createMediaStreamSource(stream);
  const processor = ctx.createScriptProcessor(2048, 1, 1);
  const mute = ctx.createGain();
  mute.gain.value = 0;
  processor.onaudioprocess = (e) => {
    if (!S.recording) return;
    const chunk = new Float32Array(e.inputBuffer.getChannelData(0));
    S.chunks.push(chunk);
    S.recorded += chunk.length;
  };
  source.connect(processor);
  processor.connect(mute);
  mute.connect(ctx.destination);
  log(`recording at ${ctx.sampleRate} Hz (AudioContext ${ctx.state})`);
}

S.stopRecording = () => {
  if (S.recording) { S.recording = false; mark('stop'); log('recording stopped'); }
};

// The outcome handed back to Rust; the whole recording as base64 Int16 LE.
S.finish = async () => {
  S.stopRecording();
  // Once ended the peer connection is closed and has no stats left.
  const finalStats = S.lastStats ?? await stats().catch(() => null);
  try { await S.ctx?.close(); } catch (_) {}
  try { S.gw?.close(); } catch (_) {}
  return {
    samples: toBase64Int16(S.chunks),
    sampleRate: S.sampleRate,
    marks: S.marks,
    endReason: S.call?.endReason ?? null,
    codec: finalStats?.inboundCodec ?? null,
    events: S.events,
    stats: finalStats,
  };
};

S.fail = async (e) => {
  log(`failed: ${e?.stack ?? e}`);
  const s = await stats().catch(() => null);
  try { S.call?.hangup(); } catch (_) {}
  try { await S.ctx?.close(); } catch (_) {}
  return { failure: String(e?.message ?? e), events: S.events, marks: S.marks, stats: s };
};
"#;

/// Places the call and records from its first remote track on. Argument:
/// `{to, codec, holdMs, hangup}`. Returns once answered and `holdMs` later:
/// with `hangup`, after hanging up and getting `ended` (the outcome of
/// `S.finish`); without, with `{inCall: true, events}` and the call going
/// on (see [`WAIT_END_SCRIPT`]).
pub const CALL_SCRIPT: &str = r#"
const [opts] = arguments;
const done = arguments[arguments.length - 1];
(async () => {
  const { GangwayClient } = await import(new URL('/client.js', location.href).href);
  const gw = S.gw = await withTimeout(GangwayClient.connect(), 5000, 'hello');
  log(`connected, session ${gw.sessionId}`);
  gw.addEventListener('error', (e) => log(`client error ${JSON.stringify(e.detail)}`));

  const call = S.call = gw.call(opts.to, {
    audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false },
    codecs: [opts.codec],
  });
  const pc = call.peerConnection;
  pc.addEventListener('connectionstatechange', () => {
    if (pc.connectionState === 'connected') mark('connected');
    log(`connectionState ${pc.connectionState}`);
  });
  call.addEventListener('answer', () => { mark('answer'); log('answer'); });
  for (const type of ['ringing', 'progress', 'answered']) {
    call.addEventListener(type, () => { mark(type); log(type); });
  }
  call.addEventListener('error', (e) => log(`error ${JSON.stringify(e.detail)}`));
  S.ended = new Promise((resolve) => call.addEventListener('ended', (e) => {
    mark('ended');
    log(`ended ${JSON.stringify(e.detail)}`);
    resolve(e.detail);
  }));
  const endedEarly = S.ended.then((d) => { throw new Error(`call ended early: ${JSON.stringify(d)}`); });
  const recorder = new Promise((resolve, reject) => call.addEventListener('track', (e) => {
    log(`track (${e.detail.stream.getAudioTracks().length} audio tracks)`);
    startRecorder(e.detail.stream).then(resolve, reject);
  }));
  const answered = new Promise((resolve) => call.addEventListener('answered', resolve));

  await withTimeout(Promise.race([recorder, endedEarly]), 10000, 'the remote track');
  await withTimeout(Promise.race([answered, endedEarly]), 15000, "'answered'");
  if (!opts.hangup) return { inCall: true, events: S.events };
  await Promise.race([sleep(opts.holdMs), endedEarly]);
  S.stopRecording();
  S.lastStats = await stats();
  mark('hangup');
  call.hangup();
  await withTimeout(S.ended, 5000, "'ended' after hangup");
  return await S.finish();
})().then(done, (e) => S.fail(e).then(done));
"#;

/// Waits for the call placed by [`CALL_SCRIPT`] to end (argument: timeout
/// in ms) and returns the outcome of `S.finish`.
pub const WAIT_END_SCRIPT: &str = r#"
const [timeoutMs] = arguments;
const done = arguments[arguments.length - 1];
(async () => {
  if (!S.ended) throw new Error('no call in progress');
  await withTimeout(S.ended, timeoutMs, "'ended'");
  return await S.finish();
})().then(done, (e) => S.fail(e).then(done));
"#;

/// A Chromium on the gateway's demo page whose microphone plays
/// [`BROWSER_TONE_HZ`]. The WAV's directory must outlive the browser.
pub fn launch_browser(page: &str) -> Result<(Browser, TempDir), String> {
    let dir = TempDir::new("gangway-browser-sip").map_err(|e| format!("temp dir: {e}"))?;
    let wav = dir.path().join("tone-1000hz.wav");
    // 2 s holds a whole number of 1000 Hz periods, so the loop has no click.
    write_tone_wav(&wav, BROWSER_TONE_HZ, 2.0, WAV_RATE)
        .map_err(|e| format!("writing {}: {e}", wav.display()))?;
    let browser = Browser::launch(BrowserOptions {
        fake_audio_capture: Some(wav),
        extra_args: Vec::new(),
    })
    .map_err(|e| format!("launching Chromium: {e}"))?;
    browser
        .navigate(page)
        .map_err(|e| format!("opening {page}: {e}"))?;
    browser
        .set_script_timeout(SCRIPT_TIMEOUT)
        .map_err(|e| format!("setting the script timeout: {e}"))?;
    Ok((browser, dir))
}

/// Runs the tests of one test binary one at a time: they share Chromium,
/// baresip and the machine's two cores.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// The browser's recording, or a panic naming test `t` with baresip's
/// events and log, which usually say why the call went wrong.
pub fn recording_or_panic(t: &str, outcome: Result<Value, String>, bob: &Baresip) -> Recording {
    match outcome {
        Ok(v) => Recording::parse(v),
        Err(e) => panic!(
            "[{t}] browser side failed: {e}\n--- baresip events ---\n{:?}\n--- baresip log ---\n{}",
            bob.events(),
            bob.log()
        ),
    }
}

/// Runs one of the page scripts (prefixed with [`PAGE_LIB`]); an in-page
/// failure becomes an error with its event log.
pub fn run_script(browser: &Browser, script: &str, arg: Value) -> Result<Value, String> {
    let source = format!("{PAGE_LIB}\n{script}");
    let result = browser
        .execute_async_script(&source, vec![arg])
        .map_err(|e| format!("running the page script: {e}"))?;
    match result.get("failure") {
        Some(failure) => Err(format!(
            "in-page call failed: {failure}\nbrowser events: {}\nmarks: {}\npeer connection: {}",
            pretty(&result["events"]),
            result["marks"],
            pretty(&result["stats"])
        )),
        None => Ok(result),
    }
}

pub fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// What the browser recorded, and where the call's events fell in it.
pub struct Recording {
    pub samples: Vec<f32>,
    pub rate: u32,
    /// Event name (`connected`, `progress`, `answered`, `stop`, …) to the
    /// number of samples recorded when it arrived.
    pub marks: BTreeMap<String, usize>,
    pub result: Value,
}

impl Recording {
    pub fn parse(result: Value) -> Recording {
        let rate = result["sampleRate"].as_u64().unwrap_or(0) as u32;
        assert!(rate > 0, "no sample rate in {}", pretty(&result));
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(result["samples"].as_str().unwrap_or(""))
            .expect("samples are base64");
        let marks = result["marks"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_u64()? as usize)))
                    .collect()
            })
            .unwrap_or_default();
        Recording {
            samples: i16le_to_f32(&bytes),
            rate,
            marks,
            result,
        }
    }

    pub fn mark(&self, name: &str) -> usize {
        *self.marks.get(name).unwrap_or_else(|| {
            panic!(
                "no '{name}' mark; marks {:?}; browser events: {}",
                self.marks,
                self.events()
            )
        })
    }

    pub fn ms(&self, ms: u64) -> usize {
        (ms * u64::from(self.rate) / 1000) as usize
    }

    pub fn seconds(&self, samples: usize) -> f64 {
        samples as f64 / f64::from(self.rate)
    }

    /// Samples `from..to`, clamped to what was recorded.
    pub fn window(&self, from: usize, to: usize) -> &[f32] {
        let to = to.min(self.samples.len());
        &self.samples[from.min(to)..to]
    }

    pub fn events(&self) -> String {
        pretty(&self.result["events"])
    }

    /// Per 100 ms block from `from` on: which of `tones` dominates it
    /// (its first letter) or `.`; for failure messages and the log.
    pub fn timeline(&self, from: usize, tones: &[(char, f64)]) -> String {
        let block = self.ms(100);
        self.window(from, self.samples.len())
            .chunks_exact(block)
            .map(|b| {
                tones
                    .iter()
                    .find(|(_, hz)| tone_coverage(b, self.rate, *hz) >= 0.8)
                    .map(|(c, _)| *c)
                    .unwrap_or('.')
            })
            .collect()
    }
}

pub fn level_dbfs(samples: &[f32]) -> f64 {
    20.0 * rms(samples).max(1e-9).log10()
}
