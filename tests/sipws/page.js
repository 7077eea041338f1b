// The SIP-over-WebSocket tests' page API, `window.T`: one phone (JsSIP or
// SIP.js, unmodified, loaded from /jssip.js and /sip.js) driven by WebDriver
// scripts. Every step logs to T.events; every WebSocket frame goes to
// T.wire, so a failure explains itself. Loaded before the libraries.
'use strict';
(() => {
const T = window.T = {
  t0: performance.now(), events: [], wire: [], sockets: [],
  lib: null, ua: null, registerer: null, codec: null, mic: null,
  registrations: 0, unregistrations: 0, regWaiters: [],
  call: null, incoming: [], incomingWaiters: [],
  rec: null, ctx: null,
  // Incoming calls are answered at once unless a test turns this off
  // (then T.answer picks one).
  autoAnswer: true,
};
const now = () => Math.round(performance.now() - T.t0);
const log = T.log = (what) => T.events.push(`${now()}ms ${what}`);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const withTimeout = (p, ms, what) => Promise.race([
  p,
  sleep(ms).then(() => { throw new Error(`timed out after ${ms} ms waiting for ${what}`); }),
]);
const deferred = () => {
  let resolve, reject;
  const promise = new Promise((a, b) => { resolve = a; reject = b; });
  return { promise, resolve, reject };
};
const AUDIO = { echoCancellation: false, noiseSuppression: false, autoGainControl: false };

// --- Wire tap: both libraries open `new WebSocket(url, 'sip')` when they
// connect, so a subclass sees every frame without touching their code.
const NativeWebSocket = window.WebSocket;
const MAX_WIRE = 500;
function tap(dir, id, data) {
  const text = typeof data === 'string' ? data : `<binary ${data.byteLength ?? data.size} bytes>`;
  if (T.wire.length >= MAX_WIRE) T.wire.shift();
  T.wire.push({ t: now(), dir, ws: id, text: text.slice(0, 8000) });
}
window.WebSocket = class TapWebSocket extends NativeWebSocket {
  constructor(url, protocols) {
    super(url, protocols);
    const id = T.sockets.push(this);
    this._tapId = id;
    log(`ws#${id} connecting ${url} (${JSON.stringify(protocols)})`);
    this.addEventListener('open', () => log(`ws#${id} open, protocol '${this.protocol}'`));
    this.addEventListener('error', () => log(`ws#${id} error`));
    this.addEventListener('close', (e) => log(`ws#${id} closed ${e.code} '${e.reason}' clean=${e.wasClean}`));
    this.addEventListener('message', (e) => tap('<', id, e.data));
  }
  send(data) {
    tap('>', this._tapId, data);
    super.send(data);
  }
};

// One line per frame: direction, socket, first line, CSeq.
T.wireSummary = () => T.wire.map((m) => {
  const first = m.text.split('\r\n', 1)[0] || JSON.stringify(m.text.slice(0, 10));
  const cseq = /^CSeq:\s*(.*)$/mi.exec(m.text)?.[1] ?? '';
  return `${m.t}ms ws#${m.ws} ${m.dir} ${first}${cseq ? ` [${cseq}]` : ''}`;
});
// Whole messages whose first line matches `re` (for reports).
T.wireMessages = (re) => T.wire.filter((m) => new RegExp(re).test(m.text.split('\r\n', 1)[0]));

// --- SDP: keep one codec (plus telephone-event, which is no codec).
function onlyCodec(sdp, codec) {
  const want = { opus: /^opus\/48000/i, pcmu: /^PCMU\/8000/i }[codec];
  if (!want) throw new Error(`unknown codec ${codec}`);
  const lines = sdp.split('\r\n');
  const mIdx = lines.findIndex((l) => l.startsWith('m=audio '));
  if (mIdx < 0) return sdp;
  const end = lines.findIndex((l, i) => i > mIdx && l.startsWith('m='));
  const stop = end < 0 ? lines.length : end;
  const rtpmap = {};
  for (let i = mIdx; i < stop; i++) {
    const m = /^a=rtpmap:(\d+) (.*)$/.exec(lines[i]);
    if (m) rtpmap[m[1]] = m[2];
  }
  const m = lines[mIdx].split(' ');
  const keep = m.slice(3).filter((pt) => want.test(rtpmap[pt] ?? '') || /^telephone-event\//i.test(rtpmap[pt] ?? ''));
  if (!keep.some((pt) => want.test(rtpmap[pt]))) throw new Error(`no ${codec} in the offer:\n${sdp}`);
  const drop = new Set(m.slice(3).filter((pt) => !keep.includes(pt)));
  const out = [];
  lines.forEach((l, i) => {
    if (i === mIdx) { out.push([...m.slice(0, 3), ...keep].join(' ')); return; }
    const pt = /^a=(?:rtpmap|fmtp|rtcp-fb):(\d+)/.exec(l)?.[1];
    if (i > mIdx && i < stop && pt && drop.has(pt)) return;
    out.push(l);
  });
  return out.join('\r\n');
}
T.onlyCodec = onlyCodec;

// --- Recording what the far end sends, as browser_call.rs does.
function startRecorder(stream, why) {
  // One recording per call: a re-INVITE (unhold) fires 'track' again.
  if (T.rec && T.rec.call === T.call) return T.rec.ready;
  const rec = T.rec = { call: T.call, stream, chunks: [], recorded: 0, on: true, marks: {}, rate: null, stop: () => { rec.on = false; } };
  rec.ready = (async () => {
    // Chromium feeds remote WebRTC audio to WebAudio only while the stream
    // also plays in a media element; muted keeps the test silent.
    const audio = document.createElement('audio');
    audio.muted = true;
    audio.autoplay = true;
    audio.srcObject = stream;
    document.body.appendChild(audio);
    await audio.play().catch((e) => log(`audio.play() failed: ${e}`));
    const ctx = T.ctx ?? (T.ctx = new AudioContext({ sampleRate: 48000 }));
    await ctx.resume();
    rec.rate = ctx.sampleRate;
    const source = ctx.createMediaStreamSource(stream);
    const processor = ctx.createScriptProcessor(2048, 1, 1);
    const mute = ctx.createGain();
    mute.gain.value = 0;
    processor.onaudioprocess = (e) => {
      if (!rec.on) return;
      const chunk = new Float32Array(e.inputBuffer.getChannelData(0));
      rec.chunks.push(chunk);
      rec.recorded += chunk.length;
    };
    source.connect(processor);
    processor.connect(mute);
    mute.connect(ctx.destination);
    rec.stop = () => { rec.on = false; try { source.disconnect(); processor.disconnect(); } catch (_) {} };
    log(`recording (${why}) at ${ctx.sampleRate} Hz, AudioContext ${ctx.state}`);
  })();
  return rec.ready;
}
// Where in the recording (in samples) something first happened.
const mark = T.mark = (name) => {
  if (T.rec && !(name in T.rec.marks)) T.rec.marks[name] = T.rec.recorded;
  log(`mark ${name}`);
};

function toBase64Int16(chunks) {
  const total = chunks.reduce((n, c) => n + c.length, 0);
  const pcm = new Int16Array(total);
  let i = 0;
  for (const c of chunks) {
    for (let j = 0; j < c.length; j++, i++) pcm[i] = Math.max(-32768, Math.min(32767, Math.round(c[j] * 32768)));
  }
  const bytes = new Uint8Array(pcm.buffer);
  let bin = '';
  for (let k = 0; k < bytes.length; k += 0x8000) bin += String.fromCharCode.apply(null, bytes.subarray(k, k + 0x8000));
  return btoa(bin);
}

async function stats(pc) {
  if (!pc) return null;
  const out = { signalingState: pc.signalingState, iceConnectionState: pc.iceConnectionState,
    connectionState: pc.connectionState,
    direction: pc.getTransceivers().find((t) => t.receiver.track?.kind === 'audio')?.currentDirection ?? null };
  try {
    const report = await pc.getStats();
    const codecs = {};
    report.forEach((s) => { if (s.type === 'codec') codecs[s.id] = s; });
    report.forEach((s) => {
      if (s.type === 'inbound-rtp' && s.kind === 'audio') {
        out.inboundCodec = codecs[s.codecId]?.mimeType ?? null;
        out.inbound = { packetsReceived: s.packetsReceived, packetsLost: s.packetsLost,
          audioLevel: s.audioLevel, concealedSamples: s.concealedSamples };
      } else if (s.type === 'outbound-rtp' && s.kind === 'audio') {
        out.outboundCodec = codecs[s.codecId]?.mimeType ?? null;
        out.outbound = { packetsSent: s.packetsSent, bytesSent: s.bytesSent };
      }
    });
  } catch (e) { out.statsError = String(e); }
  return out;
}

// The recording so far (stopped), in the shape browser_call::Recording parses.
T.takeRecording = async () => {
  const rec = T.rec;
  if (!rec) throw new Error('nothing recorded: no remote track');
  await rec.ready;
  rec.stop();
  mark('stop');
  const pc = T.call?.pc;
  const s = pc && pc.connectionState !== 'closed' ? await stats(pc) : T.call?.lastStats ?? null;
  return { samples: toBase64Int16(rec.chunks), sampleRate: rec.rate, marks: rec.marks,
    codec: s?.inboundCodec ?? null, outboundCodec: s?.outboundCodec ?? null, stats: s, events: T.events };
};

async function microphone() {
  if (T.mic && T.mic.getAudioTracks().every((t) => t.readyState === 'live')) return T.mic;
  T.mic = await navigator.mediaDevices.getUserMedia({ audio: AUDIO, video: false });
  log(`microphone: ${T.mic.getAudioTracks().map((t) => t.label).join(', ')}`);
  return T.mic;
}

// A call as both libraries' adapters fill it in.
function newCall(direction, session) {
  const c = { direction, session, pc: null, ended: deferred(), established: deferred(), endInfo: null };
  c.ended.promise.catch(() => {});
  c.established.promise.catch(() => {});
  c.end = (info) => {
    if (c.endInfo) return;
    c.endInfo = info;
    mark('ended');
    log(`call ended ${JSON.stringify(info)}`);
    c.established.reject(new Error(`call ended before it was established: ${JSON.stringify(info)}`));
    c.ended.resolve(info);
  };
  c.watchPc = (pc) => {
    if (!pc || c.pc === pc) return;
    c.pc = pc;
    pc.addEventListener('connectionstatechange', () => log(`connectionState ${pc.connectionState}`));
    pc.addEventListener('track', (e) => {
      log(`remote ${e.track.kind} track`);
      // Our own stream: a hold removes the track from the library's
      // stream (silencing WebAudio's source for good), never from this one.
      startRecorder(new MediaStream([e.track]), 'track').catch((err) => log(`recorder: ${err}`));
    });
    // Stats while the call is up: once it ends the connection has none.
    const poll = setInterval(() => {
      if (pc.connectionState === 'closed' || c.endInfo) { clearInterval(poll); return; }
      stats(pc).then((st) => { if (pc.connectionState !== 'closed') c.lastStats = st; });
    }, 500);
  };
  return c;
}
// Once established, record from the receivers if no track event came.
async function ensureRecorder(c) {
  if (T.rec && T.rec.call === c) return T.rec.ready;
  const tracks = c.pc?.getReceivers().map((r) => r.track).filter((t) => t?.kind === 'audio') ?? [];
  if (!tracks.length) throw new Error('no remote audio track');
  await startRecorder(new MediaStream(tracks), 'receivers');
}

// --- JsSIP
const jssip = {
  async register(o) {
    JsSIP.debug.enable('JsSIP:ERROR*,JsSIP:WARN*');
    JsSIP.debug.log = (...a) => log(a.filter((x) => !(typeof x === 'string' && x.startsWith('color:')))
      .map(String).join(' ').replace(/%c/g, ''));
    const ua = T.ua = new JsSIP.UA({
      sockets: [new JsSIP.WebSocketInterface(o.wsUrl)],
      uri: o.uri, register: true, session_timers: true,
      // A token (authorization_jwt) instead of a password when given.
      ...(o.jwt ? { authorization_jwt: o.jwt } : { password: o.password }),
      connection_recovery_min_interval: 1, connection_recovery_max_interval: 3,
    });
    for (const ev of ['connecting', 'connected', 'disconnected']) ua.on(ev, () => log(`ua ${ev}`));
    ua.on('registered', (e) => { T.registrations++; log(`registered (${e.response.status_code})`); T.regWake(); });
    ua.on('unregistered', () => { T.unregistrations++; log('unregistered'); });
    const failed = deferred();
    ua.on('registrationFailed', (e) => {
      log(`registrationFailed ${e.cause} ${e.response?.status_code ?? ''}`);
      failed.reject(new Error(`registrationFailed: ${e.cause} ${e.response?.status_code ?? ''}`));
    });
    ua.on('newRTCSession', (e) => { if (e.originator === 'remote') jssip.incoming(e.session, e.request); });
    ua.start();
    await Promise.race([T.waitRegistrations(1, o.timeoutMs ?? 10000), failed.promise]);
  },
  wire(c, s) {
    s.on('peerconnection', (e) => c.watchPc(e.peerconnection));
    if (s.connection) c.watchPc(s.connection);
    s.on('sdp', (e) => {
      log(`sdp ${e.originator} ${e.type}`);
      if (T.codec && e.originator === 'local' && e.type === 'offer') e.sdp = onlyCodec(e.sdp, T.codec);
    });
    for (const ev of ['connecting', 'sending', 'progress', 'accepted', 'reinvite', 'update'])
      s.on(ev, (e) => log(`session ${ev}${e?.response ? ` ${e.response.status_code}` : ''}`));
    s.on('hold', (e) => log(`hold (${e.originator})`));
    s.on('unhold', (e) => log(`unhold (${e.originator})`));
    s.on('newDTMF', (e) => log(`DTMF ${e.dtmf.tone} (${e.originator})`));
    s.on('newInfo', (e) => log(`INFO (${e.originator}) ${e.info.contentType}`));
    s.on('confirmed', () => { log('session confirmed'); c.established.resolve(); });
    s.on('ended', (e) => c.end({ by: e.originator, cause: e.cause }));
    s.on('failed', (e) => c.end({ by: e.originator, cause: e.cause, failed: true,
      status: e.message?.status_code ?? null }));
  },
  call(o, mic) {
    let c;
    const s = T.ua.call(o.target, {
      mediaConstraints: { audio: true, video: false }, mediaStream: mic, pcConfig: { iceServers: [] },
      eventHandlers: { peerconnection: (e) => c?.watchPc(e.peerconnection) },
    });
    c = newCall('outgoing', s);
    jssip.wire(c, s);
    return c;
  },
  incoming(s, request) {
    const c = newCall('incoming', s);
    c.request = { from: s.remote_identity.uri.toString(), hasSdp: !!request.body };
    log(`incoming call from ${c.request.from}, INVITE ${c.request.hasSdp ? 'with' : 'without'} SDP`);
    jssip.wire(c, s);
    c.answer = () => microphone().then((mic) => {
      s.answer({ mediaStream: mic, pcConfig: { iceServers: [] } });
      log('answer()');
      if (s.connection) c.watchPc(s.connection);
    }).catch((e) => log(`answering failed: ${e}`));
    T.gotIncoming(c);
  },
  hold: (c) => new Promise((ok, fail) => { if (!c.session.hold({}, ok)) fail(new Error('hold() refused')); }),
  unhold: (c) => new Promise((ok, fail) => { if (!c.session.unhold({}, ok)) fail(new Error('unhold() refused')); }),
  dtmf: (c, tone, transport) => c.session.sendDTMF(tone, { transportType: transport, duration: 250 }),
  hangup: (c) => c.session.terminate(),
  // Blind transfer: resolves with the final NOTIFY's status line.
  refer: (c, target) => new Promise((ok, fail) => {
    c.session.refer(target, { eventHandlers: {
      requestSucceeded: () => log('REFER accepted (202)'),
      requestFailed: (e) => fail(new Error(`REFER refused: ${e.response?.status_code ?? e.cause}`)),
      trying: (e) => log(`NOTIFY ${e.status_line?.status_code ?? 'trying'}`),
      progress: (e) => log(`NOTIFY ${e.status_line?.status_code ?? 'progress'}`),
      accepted: (e) => { log(`NOTIFY ${e.status_line?.status_code ?? 200}: transfer done`); ok({ status: e.status_line?.status_code ?? 200 }); },
      failed: (e) => fail(new Error(`transfer failed: NOTIFY ${e.status_line?.status_code ?? e.cause}`)),
    } });
  }),
  stop: () => T.ua?.stop(),
};

// --- SIP.js
const sipjs = {
  sdhOptions: () => ({ constraints: { audio: AUDIO, video: false } }),
  modifiers: () => [(d) => Promise.resolve(T.codec && d.type === 'offer' ? { type: d.type, sdp: onlyCodec(d.sdp, T.codec) } : d)],
  async register(o) {
    const ua = T.ua = new SIP.UserAgent({
      uri: SIP.UserAgent.makeURI(o.uri),
      transportOptions: { server: o.wsUrl },
      authorizationUsername: o.user, authorizationPassword: o.password,
      sessionDescriptionHandlerFactoryOptions: {
        iceGatheringTimeout: 500, peerConnectionConfiguration: { iceServers: [] },
      },
      logBuiltinEnabled: false, logLevel: 'warn', logConfiguration: false,
      logConnector: (level, category, label, content) => {
        if (level === 'warn' || level === 'error') log(`sip.js ${level} ${category}: ${content}`);
      },
      delegate: {
        onConnect: () => log('ua connected'),
        onDisconnect: (e) => log(`ua disconnected ${e ?? ''}`),
        onInvite: (inv) => sipjs.incoming(inv),
      },
    });
    await ua.start();
    const reg = T.registerer = new SIP.Registerer(ua, { expires: 600 });
    reg.stateChange.addListener((s) => {
      log(`registerer ${s}`);
      if (s === SIP.RegistererState.Registered) { T.registrations++; T.regWake(); }
      if (s === SIP.RegistererState.Unregistered) T.unregistrations++;
    });
    const failed = deferred();
    await reg.register({ requestDelegate: { onReject: (r) => failed.reject(new Error(
      `REGISTER rejected: ${r.message.statusCode} ${r.message.reasonPhrase}`)) } });
    await Promise.race([T.waitRegistrations(1, o.timeoutMs ?? 10000), failed.promise]);
  },
  wire(c, s) {
    s.stateChange.addListener((state) => {
      log(`session ${state}`);
      const sdh = s.sessionDescriptionHandler;
      if (sdh?.peerConnection) c.watchPc(sdh.peerConnection);
      if (state === SIP.SessionState.Established) {
        c.watchPc(sdh.peerConnection);
        // The receiver's track: with a delayed offer (our INVITE without
        // SDP) the remote stream gets its track only after this event.
        const tracks = sdh.peerConnection.getReceivers()
          .map((r) => r.track).filter((t) => t && t.kind === 'audio');
        startRecorder(new MediaStream(tracks), 'receiver track')
          .then(() => c.established.resolve(), (e) => c.established.reject(e));
      }
      if (state === SIP.SessionState.Terminated) c.end({ by: c.byeSent ? 'local' : 'remote', cause: 'terminated' });
    });
  },
  call(o) {
    const s = new SIP.Inviter(T.ua, SIP.UserAgent.makeURI(o.target), {
      sessionDescriptionHandlerOptions: sipjs.sdhOptions(),
      sessionDescriptionHandlerModifiers: sipjs.modifiers(),
    });
    const c = newCall('outgoing', s);
    sipjs.wire(c, s);
    s.invite({ requestDelegate: {
      onProgress: (r) => log(`INVITE progress ${r.message.statusCode}`),
      onAccept: (r) => log(`INVITE accepted ${r.message.statusCode}`),
      onReject: (r) => { log(`INVITE rejected ${r.message.statusCode}`); c.status = r.message.statusCode; },
    } }).catch((e) => c.end({ by: 'local', cause: `invite() failed: ${e}`, failed: true }));
    return c;
  },
  incoming(inv) {
    const c = newCall('incoming', inv);
    c.request = { from: inv.remoteIdentity.uri.toString(), hasSdp: !!inv.body };
    log(`incoming call from ${c.request.from}, INVITE ${c.request.hasSdp ? 'with' : 'without'} SDP`);
    sipjs.wire(c, inv);
    c.answer = () => inv.accept({ sessionDescriptionHandlerOptions: sipjs.sdhOptions(),
      sessionDescriptionHandlerModifiers: sipjs.modifiers() })
      .then(() => log('accept() resolved'), (e) => log(`accept() failed: ${e}`));
    T.gotIncoming(c);
  },
  hold: () => Promise.reject(new Error('hold is only driven through JsSIP here')),
  unhold: () => Promise.reject(new Error('hold is only driven through JsSIP here')),
  dtmf: (c, tone) => c.session.sessionDescriptionHandler.sendDtmf(tone),
  hangup: (c) => { c.byeSent = true; return c.session.bye(); },
  stop: () => T.ua?.stop(),
};

const adapter = () => ({ jssip, sipjs })[T.lib] ?? (() => { throw new Error('no phone: call T.register first'); })();

T.regWake = () => { T.regWaiters = T.regWaiters.filter((w) => !w()); };
// Resolves once `n` registrations have succeeded in total.
T.waitRegistrations = (n, ms) => withTimeout(new Promise((ok) => {
  const check = () => { if (T.registrations >= n) { ok(T.registrations); return true; } return false; };
  if (!check()) T.regWaiters.push(check);
}), ms, `registration #${n}`);

T.gotIncoming = (c) => {
  T.incoming.push(c);
  T.call = c;
  T.rec = null;
  T.incomingWaiters.splice(0).forEach((w) => w(c));
  if (T.autoAnswer) c.answer();
  else log('ringing, not answered');
};

// --- The API the Rust side calls (each returns a promise).

// {lib: 'jssip'|'sipjs', wsUrl, uri, user, password, codec?}
T.register = async (o) => {
  T.lib = o.lib;
  T.codec = o.codec ?? null;
  await adapter().register(o);
  return { registrations: T.registrations };
};

// {target, codec?}: calls and resolves once established and recording.
T.dial = async (o) => {
  if ('codec' in o) T.codec = o.codec;
  const mic = await microphone();
  T.rec = null;
  const c = T.call = adapter().call(o, mic);
  await withTimeout(c.established.promise, o.timeoutMs ?? 15000, 'the call to be established');
  await ensureRecorder(c);
  mark('established');
  return { established: true, events: T.events };
};

T.setAutoAnswer = (on) => { T.autoAnswer = on; return {}; };
// Waits for an incoming call to ring (not answered: autoAnswer off).
T.waitRinging = async (ms) => {
  const c = T.incoming.find((x) => !x.taken) ?? await withTimeout(
    new Promise((ok) => T.incomingWaiters.push(ok)), ms, 'an incoming call');
  return { from: c.request.from, inviteHadSdp: c.request.hasSdp };
};
// Answers the ringing call and waits until it is established and recording.
T.answer = async (ms) => {
  const c = T.incoming.find((x) => !x.taken && !x.endInfo);
  if (!c) throw new Error('no call is ringing');
  c.taken = true;
  c.answer();
  await withTimeout(c.established.promise, ms, 'the answered call to be established');
  await ensureRecorder(c);
  mark('established');
  return { events: T.events };
};
// Waits for an incoming call to be answered (auto-answer) and recording.
T.waitIncoming = async (ms) => {
  const c = T.incoming.find((x) => !x.taken) ?? await withTimeout(
    new Promise((ok) => T.incomingWaiters.push(ok)), ms, 'an incoming call');
  c.taken = true;
  await withTimeout(c.established.promise, ms, 'the incoming call to be established');
  await ensureRecorder(c);
  mark('established');
  return { from: c.request.from, inviteHadSdp: c.request.hasSdp, events: T.events };
};

const current = () => { if (!T.call || T.call.endInfo) throw new Error('no call in progress'); return T.call; };
T.hold = async () => { mark('hold'); await withTimeout(adapter().hold(current()), 10000, 'hold'); mark('held'); return {}; };
T.unhold = async () => { mark('unhold'); await withTimeout(adapter().unhold(current()), 10000, 'unhold'); mark('resumed'); return {}; };
T.refer = async (target) => withTimeout(adapter().refer(current(), target), 15000, 'the transfer');
T.dtmf = async (tone, transport) => { mark(`dtmf-${tone}`); adapter().dtmf(current(), tone, transport); return {}; };
T.hangup = async () => {
  const c = current();
  mark('hangup');
  await adapter().hangup(c);
  return withTimeout(c.ended.promise, 10000, "the call's end after hanging up");
};
T.waitEnded = (ms) => withTimeout(T.call.ended.promise, ms, 'the far end to end the call');

// Closes every open WebSocket the way a network cut ends up (the library
// did not ask for it, so it reconnects).
T.cut = async () => {
  const open = T.sockets.filter((s) => s.readyState <= NativeWebSocket.OPEN);
  open.forEach((s) => s.close(4000, 'test cuts the connection'));
  log(`cut ${open.length} socket(s)`);
  return { cut: open.length };
};

T.stop = async () => { await adapter().stop(); return {}; };
T.snapshot = async () => ({ events: T.events, wire: T.wireSummary(), registrations: T.registrations,
  unregistrations: T.unregistrations, stats: T.call?.pc ? await stats(T.call.pc) : null });
T.loaded = () => ({ jssip: typeof window.JsSIP?.UA === 'function' ? JsSIP.version : null,
  sipjs: typeof window.SIP?.UserAgent === 'function' ? SIP.version ?? 'loaded' : null,
  secure: window.isSecureContext });
})();
