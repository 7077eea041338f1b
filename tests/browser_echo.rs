//! End to end with a real browser: headless Chromium calls the gateway's
//! `echo` line through `/client.js`, with a 1000 Hz tone as its fake
//! microphone, records what comes back and the tests check that the tone
//! survived the round trip (and that a 440 Hz tone, never sent, is absent).
//!
//! Needs Debian's `chromium` and `chromium-driver`; without them the tests
//! fail (they never skip).

use std::time::Duration;

use base64::Engine;
use gangway_tests::audio::{i16le_to_f32, rms, tone_coverage, write_tone_wav};
use gangway_tests::gateway::{scrape_metric, start_gateway, wait_metric};
use gangway_tests::webdriver::{Browser, BrowserOptions, TempDir};
use serde_json::{json, Value};

const TONE_HZ: f64 = 1000.0;
const CONTROL_HZ: f64 = 440.0;
const SAMPLE_RATE: u32 = 48_000;
/// Audio left to settle (jitter buffer, codec start-up) before recording.
const SETTLE_MS: u64 = 1_000;
const RECORD_MS: u64 = 5_000;
/// Limit for the whole in-page script; its own steps time out sooner so a
/// failure comes back with its event log instead of a bare script timeout.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(40);

/// Runs in the page (the gateway's demo page, a secure context) as a
/// WebDriver async script. Arguments: codec name, settle ms, record ms,
/// then the completion callback. Returns `{samples (base64 Int16 LE),
/// sampleRate, codec, answerCodec, events, stats, endReason}` or, on
/// failure, `{failure, events, stats}`.
const CALL_SCRIPT: &str = r#"
const [codec, settleMs, recordMs] = arguments;
const done = arguments[arguments.length - 1];
const t0 = performance.now();
const events = [];
const log = (what) => events.push(`${Math.round(performance.now() - t0)}ms ${what}`);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const withTimeout = (p, ms, what) => Promise.race([
  p,
  sleep(ms).then(() => { throw new Error(`timed out after ${ms} ms waiting for ${what}`); }),
]);
let call = null;
let ctx = null;

async function stats() {
  const pc = call?.peerConnection;
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
          concealedSamples: s.concealedSamples, payloadType: codecs[s.codecId]?.payloadType,
        };
      } else if (s.type === 'outbound-rtp' && s.kind === 'audio') {
        out.outboundCodec = codecs[s.codecId]?.mimeType ?? null;
        out.reports.outbound = { packetsSent: s.packetsSent, bytesSent: s.bytesSent };
      } else if (s.type === 'media-source' && s.kind === 'audio') {
        out.reports.source = { audioLevel: s.audioLevel, totalAudioEnergy: s.totalAudioEnergy };
      } else if (s.type === 'transport') {
        out.reports.transport = { dtlsState: s.dtlsState, iceState: s.iceState, srtpCipher: s.srtpCipher };
      } else if (s.type === 'candidate-pair' && s.nominated) {
        out.reports.pair = { state: s.state, requestsSent: s.requestsSent, responsesReceived: s.responsesReceived };
      }
    });
  } catch (e) {
    out.statsError = String(e);
  }
  return out;
}

// The codec the gateway chose: the first payload type of the answer's audio m-line.
function answerCodec(sdp) {
  const m = /^m=audio \S+ \S+ (\d+)/m.exec(sdp ?? '');
  if (!m) return null;
  const rtpmap = new RegExp(`^a=rtpmap:${m[1]} ([^/\\s]+)`, 'm').exec(sdp);
  return rtpmap ? rtpmap[1] : null;
}

function toBase64Int16(chunks, maxSamples) {
  const total = Math.min(maxSamples, chunks.reduce((n, c) => n + c.length, 0));
  const pcm = new Int16Array(total);
  let i = 0;
  for (const c of chunks) {
    for (let j = 0; j < c.length && i < total; j++, i++) {
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

(async () => {
  const { GangwayClient } = await import(new URL('/client.js', location.href).href);
  const gw = await withTimeout(GangwayClient.connect(), 5000, 'hello');
  log(`connected, session ${gw.sessionId}`);
  gw.addEventListener('error', (e) => log(`client error ${JSON.stringify(e.detail)}`));

  call = gw.call('echo', {
    audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false },
    codecs: [codec],
  });
  const pc = call.peerConnection;
  pc.addEventListener('iceconnectionstatechange', () => log(`iceConnectionState ${pc.iceConnectionState}`));
  pc.addEventListener('connectionstatechange', () => log(`connectionState ${pc.connectionState}`));
  let answerSdp = null;
  call.addEventListener('answer', (e) => { answerSdp = e.detail.sdp; log('answer'); });
  for (const type of ['ringing', 'answered', 'statechange', 'error']) {
    call.addEventListener(type, (e) => log(`${type} ${JSON.stringify(e.detail)}`));
  }
  const ended = new Promise((resolve) => call.addEventListener('ended', (e) => {
    log(`ended ${JSON.stringify(e.detail)}`);
    resolve(e.detail);
  }));
  const endedEarly = ended.then((d) => { throw new Error(`call ended early: ${JSON.stringify(d)}`); });
  const track = new Promise((resolve) => call.addEventListener('track', (e) => {
    log(`track (${e.detail.stream.getAudioTracks().length} audio tracks)`);
    resolve(e.detail.stream);
  }));

  const stream = await withTimeout(Promise.race([track, endedEarly]), 10000, 'the remote track');
  const connected = new Promise((resolve, reject) => {
    const check = () => {
      if (pc.connectionState === 'connected') resolve();
      else if (pc.connectionState === 'failed' || pc.connectionState === 'closed') {
        reject(new Error(`connectionState ${pc.connectionState}`));
      }
    };
    pc.addEventListener('connectionstatechange', check);
    check();
  });
  await withTimeout(Promise.race([connected, endedEarly]), 10000, 'ICE+DTLS connected');

  // Chromium only feeds remote WebRTC audio to WebAudio while the stream is
  // also attached to a media element; muted keeps the test silent.
  const audio = document.createElement('audio');
  audio.muted = true;
  audio.autoplay = true;
  audio.srcObject = stream;
  document.body.appendChild(audio);
  await audio.play().catch((e) => log(`audio.play() failed: ${e}`));

  ctx = new AudioContext({ sampleRate: 48000 });
  await ctx.resume();
  log(`AudioContext ${ctx.state} at ${ctx.sampleRate} Hz`);
  const source = ctx.createMediaStreamSource(stream);
  const processor = ctx.createScriptProcessor(4096, 1, 1);
  const mute = ctx.createGain();
  mute.gain.value = 0;
  const chunks = [];
  let recording = false;
  processor.onaudioprocess = (e) => {
    if (recording) chunks.push(new Float32Array(e.inputBuffer.getChannelData(0)));
  };
  source.connect(processor);
  processor.connect(mute);
  mute.connect(ctx.destination);

  await Promise.race([sleep(settleMs), endedEarly]);
  recording = true;
  log('recording');
  await Promise.race([sleep(recordMs), endedEarly]);
  recording = false;
  const wanted = Math.round(ctx.sampleRate * recordMs / 1000);
  const got = chunks.reduce((n, c) => n + c.length, 0);
  log(`recorded ${got} samples (wanted ${wanted})`);
  processor.onaudioprocess = null;
  source.disconnect();

  const finalStats = await stats();
  call.hangup();
  const endReason = await withTimeout(ended, 5000, "'ended' after hangup");
  gw.close();
  await ctx.close();
  return {
    samples: toBase64Int16(chunks, wanted),
    sampleRate: ctx.sampleRate,
    codec: finalStats?.inboundCodec ?? null,
    answerCodec: answerCodec(answerSdp),
    endReason,
    events,
    stats: finalStats,
  };
})().then(done, async (e) => {
  log(`failed: ${e?.stack ?? e}`);
  const s = await stats().catch(() => null);
  try { call?.hangup(); } catch (_) {}
  try { await ctx?.close(); } catch (_) {}
  done({ failure: String(e?.message ?? e), events, stats: s });
});
"#;

/// Launches Chromium with a 1000 Hz fake microphone, runs [`CALL_SCRIPT`] on
/// the demo page and returns its result. Blocking; the browser and its
/// chromedriver are gone when this returns (or panics).
fn run_browser_call(page: &str, codec: &str) -> Result<Value, String> {
    let dir = TempDir::new("gangway-browser-echo").map_err(|e| format!("temp dir: {e}"))?;
    let wav = dir.path().join("tone-1000hz.wav");
    // 2 s holds a whole number of 1000 Hz periods, so the loop has no click.
    write_tone_wav(&wav, TONE_HZ, 2.0, SAMPLE_RATE)
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
    browser
        .execute_async_script(
            CALL_SCRIPT,
            vec![json!(codec), json!(SETTLE_MS), json!(RECORD_MS)],
        )
        .map_err(|e| format!("running the call script: {e}"))
}

async fn browser_echo(codec: &'static str) {
    let started = std::time::Instant::now();
    let gw = start_gateway().await;
    let page = format!("http://{}/", gw.http_addr());

    let outcome = tokio::task::spawn_blocking(move || run_browser_call(&page, codec))
        .await
        .expect("browser task panicked");
    let result = match outcome {
        Ok(v) => v,
        Err(e) => panic!("[{codec}] browser side failed: {e}"),
    };
    let events = result.get("events").cloned().unwrap_or(Value::Null);
    let stats = result.get("stats").cloned().unwrap_or(Value::Null);
    let pretty = |v: &Value| serde_json::to_string_pretty(v).unwrap_or_default();
    if let Some(failure) = result.get("failure") {
        panic!(
            "[{codec}] in-page call failed: {failure}\nevents: {}\npeer connection: {}",
            pretty(&events),
            pretty(&stats)
        );
    }
    println!("[{codec}] events: {}", pretty(&events));
    println!("[{codec}] peer connection: {}", pretty(&stats));

    let sample_rate = result["sampleRate"].as_u64().expect("sampleRate") as u32;
    let b64 = result["samples"].as_str().expect("samples");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("samples are base64");
    let samples = i16le_to_f32(&bytes);
    let seconds = samples.len() as f64 / f64::from(sample_rate);
    let at_tone = tone_coverage(&samples, sample_rate, TONE_HZ);
    let at_control = tone_coverage(&samples, sample_rate, CONTROL_HZ);
    let level_dbfs = 20.0 * rms(&samples).max(1e-9).log10();
    println!(
        "[{codec}] recorded {seconds:.2} s at {sample_rate} Hz, RMS {level_dbfs:.1} dBFS; \
         coverage at {TONE_HZ} Hz = {at_tone:.3}, at {CONTROL_HZ} Hz = {at_control:.3}"
    );

    assert!(
        seconds >= RECORD_MS as f64 / 1000.0 * 0.9,
        "[{codec}] only {seconds:.2} s of audio recorded; events: {}",
        pretty(&events)
    );
    let negotiated = result["codec"].as_str().unwrap_or("");
    assert!(
        negotiated.eq_ignore_ascii_case(&format!("audio/{codec}")),
        "[{codec}] negotiated codec {negotiated:?} (answer's first codec {}), expected audio/{codec}",
        result["answerCodec"]
    );
    assert!(
        at_tone >= 0.90,
        "[{codec}] the {TONE_HZ} Hz tone dominates only {:.1}% of 20 ms frames (want >= 90%); \
         RMS {level_dbfs:.1} dBFS; peer connection: {}",
        at_tone * 100.0,
        pretty(&stats)
    );
    assert!(
        at_control < 0.10,
        "[{codec}] negative control: {CONTROL_HZ} Hz dominates {:.1}% of frames",
        at_control * 100.0
    );
    assert_eq!(
        result["endReason"]["reason"], "hangup",
        "[{codec}] end reason"
    );

    // The gateway tears the call down asynchronously after `ended`.
    let calls = wait_metric(&gw, "gangway_calls_active", 0.0, Duration::from_secs(2)).await;
    let peers = wait_metric(
        &gw,
        "gangway_webrtc_peers_active",
        0.0,
        Duration::from_secs(2),
    )
    .await;
    let hangups = scrape_metric(&gw, "gangway_calls_ended_total{reason=\"hangup\"}").await;
    println!("[{codec}] after the call: calls_active {calls}, webrtc_peers_active {peers}, hangups {hangups}");
    assert_eq!(calls, 0.0, "[{codec}] gangway_calls_active after hangup");
    assert_eq!(
        peers, 0.0,
        "[{codec}] gangway_webrtc_peers_active after hangup"
    );
    assert!(
        hangups >= 1.0,
        "[{codec}] gangway_calls_ended_total{{reason=\"hangup\"}} = {hangups}"
    );

    gw.shutdown(Duration::from_secs(1)).await;
    println!("[{codec}] done in {:.1} s", started.elapsed().as_secs_f64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_echo_opus_only() {
    browser_echo("opus").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_echo_pcmu_only() {
    browser_echo("PCMU").await;
}
