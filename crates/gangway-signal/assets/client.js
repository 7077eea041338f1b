// Gangway browser client: places WebRTC calls through a Gangway gateway using
// the JSON-over-WebSocket API v1 (docs/protocol.md). Dependency-free ES module,
// no build step; the gateway serves it at /client.js and its typings at
// /client.d.ts.
//
//   import { GangwayClient } from '/client.js';
//   const client = await GangwayClient.connect();
//   const call = client.call('echo');
//   call.addEventListener('track', (e) => { audio.srcObject = e.detail.stream; });
//
// Inbound calls: register a SIP user, then answer `incoming` calls.
//
//   await client.register({ user: 'alice', password: 's3cret' });
//   client.addEventListener('incoming', ({ detail: { call } }) => call.accept());
//
// A lost socket (network change, proxy timeout) is reconnected and the
// session resumed with its token while the gateway holds the calls; ICE is
// restarted on calls whose media path broke (call.restartIce() does it by hand).

const PROTOCOL_VERSION = 1;

// The gateway's rule for call ids; checked here so a bad id fails loudly at
// call() instead of as an error message the app has to correlate later.
const CALL_ID = /^[\x21-\x7e]{1,64}$/;

// Errors after which the gateway has no such call and will never send
// `ended`, so the client must end the call itself or it would hang forever.
const NOT_ACCEPTED = new Set(['duplicate_call', 'too_many_calls', 'shutting_down', 'unknown_call']);

// SIP statuses a browser may reject an incoming call with.
const REJECT_CODES = new Set([486, 480, 603]);
const DEFAULT_REJECT_CODE = 486;
// Sent when accepting failed locally (no microphone, WebRTC error) before the
// `accept` was out: the caller hears "temporarily unavailable", not "busy".
const ACCEPT_FAILED_CODE = 480;

// `error` codes with no call id that answer a pending `register`.
const REGISTER_ERRORS = new Set(['rate_limited', 'invalid_state', 'invalid_message']);
// ... and those that answer a pending `unregister` (e.g. nothing registered).
const UNREGISTER_ERRORS = new Set(['invalid_state', 'invalid_message']);

// Proxies commonly drop WebSockets idle for 60 s; a ping keeps ours busy.
const DEFAULT_PING_INTERVAL_MS = 30_000;

// Resuming a session after a lost socket: attempts, first delay (doubling
// up to the cap), and the longest wait for the gateway's reply per attempt.
const RESUME_ATTEMPTS = 6;
const RESUME_FIRST_DELAY_MS = 250;
const RESUME_MAX_DELAY_MS = 4_000;
const RESUME_REPLY_TIMEOUT_MS = 5_000;
// Messages held while reconnecting (hangup, candidates, dtmf…), sent after the resume.
const MAX_HELD_MESSAGES = 100;
// Close codes after which there is no session to resume: normal closure,
// gateway shutting down, frame too large, the session moved to another socket.
const NO_RESUME_CODES = new Set([1000, 1001, 1009, 4001]);
// An ICE path that stays `disconnected` this long is restarted.
const ICE_DISCONNECTED_RESTART_MS = 2_000;
// Errors for a call that answer its pending renegotiation (ICE restart).
const RENEGOTIATION_ERRORS = new Set(['invalid_sdp', 'invalid_state']);

// Module-private keys: lets GangwayClient and Call talk to each other without
// exposing those hooks (or working constructors) to applications.
const INTERNAL = Symbol('gangway.internal');
const RECEIVE = Symbol('gangway.receive');
const HELD_AT_GATEWAY = Symbol('gangway.heldAtGateway');
const KNOWN_TO_GATEWAY = Symbol('gangway.knownToGateway');
const RESUMED = Symbol('gangway.resumed');

export class GangwayClient extends EventTarget {
  #ws;
  #sessionId;
  #maxMessageBytes;
  #iceServers;
  #calls = new Map();
  #pingTimer = null;
  #link;
  #user = null;             // the registered SIP user
  #pendingRegister = null;  // {user, resolve, reject}: at most one at a time
  #pendingUnregisters = []; // [{resolve, reject}]
  #url;
  #resumeToken = null;      // from hello / session_resumed: proof of this session
  #resumeGraceMs = 0;
  #reconnect;               // options.reconnect
  #reconnecting = false;
  #held = [];               // messages sent while reconnecting
  #closed = false;          // close() was called, or the client gave up
  #features = null;         // hello.features, frozen; null from gateways before it

  /**
   * Opens the WebSocket and resolves once the gateway's `hello` arrived.
   * Rejects if the socket closes first or the gateway speaks another version.
   */
  static connect(url, options = {}) {
    return new Promise((resolve, reject) => {
      const href = resolveUrl(url);
      const ws = new WebSocket(href);
      ws.onmessage = (event) => {
        const msg = parse(event.data);
        if (msg?.type !== 'hello') return; // nothing else is meaningful before hello
        ws.onmessage = ws.onclose = ws.onerror = null;
        if (msg.version !== PROTOCOL_VERSION) {
          ws.close(1000);
          reject(new Error(`gateway speaks protocol version ${msg.version}, this client speaks ${PROTOCOL_VERSION}`));
          return;
        }
        // The constructor installs its handlers synchronously, so no message
        // that follows hello can slip through between the two handlers.
        resolve(new GangwayClient(INTERNAL, ws, msg, options, href));
      };
      // A failed connection fires `error` (no detail) and then `close`, which
      // has the code, so only `close` is handled.
      ws.onclose = (event) => {
        reject(new Error(`WebSocket closed before hello (code ${event.code}${event.reason ? `: ${event.reason}` : ''})`));
      };
    });
  }

  constructor(token, ws, hello, options, url) {
    if (token !== INTERNAL) throw new TypeError('use GangwayClient.connect()');
    super();
    this.#url = url;
    this.#sessionId = String(hello.session ?? '');
    this.#maxMessageBytes = Number.isInteger(hello.max_message_bytes) ? hello.max_message_bytes : Infinity;
    this.#resumeToken = typeof hello.resume_token === 'string' ? hello.resume_token : null;
    this.#resumeGraceMs = Number.isFinite(hello.resume_grace_secs) ? hello.resume_grace_secs * 1000 : 0;
    this.#features = Array.isArray(hello.features)
      ? Object.freeze(hello.features.filter((f) => typeof f === 'string'))
      : null;
    this.#reconnect = options.reconnect ?? true;
    this.#iceServers = options.iceServers ?? [];
    this.#link = {
      iceServers: this.#iceServers,
      autoRestartIce: options.autoRestartIce ?? true,
      send: (msg) => this.#send(msg),
      isOpen: () => this.#isOpen(),
      forget: (call) => this.#calls.delete(call.id),
    };
    this.#attach(ws);

    const interval = options.pingInterval ?? DEFAULT_PING_INTERVAL_MS;
    if (interval > 0) {
      this.#pingTimer = setInterval(() => { if (this.#isOpen()) this.#send({ type: 'ping' }); }, interval);
    }
  }

  #attach(ws) {
    this.#ws = ws;
    ws.onmessage = (event) => this.#onMessage(event.data);
    ws.onclose = (event) => this.#onClose(event);
  }

  get sessionId() { return this.#sessionId; }

  /**
   * What the gateway offers (`hello.features`, e.g. `['echo', 'sip', 'dtmf',
   * 'hold', 'transfer', 'register']`), or null if it does not say (a gateway
   * older than the field: assume everything may work).
   */
  get features() { return this.#features; }

  /**
   * Active calls by id, incoming ones included from `incoming` on; a call
   * leaves the map just before its `ended` event.
   */
  get calls() { return this.#calls; }

  /** The SIP user registered on this socket, or null. */
  get user() { return this.#user; }

  /** True while a lost socket is being replaced and the session resumed. */
  get reconnecting() { return this.#reconnecting; }

  /** Restarts ICE on a call of this client; see Call.restartIce(). */
  restartIce(call) {
    const target = typeof call === 'string' ? this.#calls.get(call) : call;
    if (!target || this.#calls.get(target.id) !== target) return Promise.reject(new Error('no such active call'));
    return target.restartIce();
  }

  /** Starts a call. Returns at once; watch the call's events for progress. */
  call(to, options = {}) {
    if (typeof to !== 'string' || to === '') throw new TypeError('destination must be a non-empty string');
    const id = options.id ?? crypto.randomUUID();
    if (!CALL_ID.test(id)) throw new TypeError('call id must be 1-64 visible ASCII characters');
    if (this.#calls.has(id)) throw new Error(`call id ${id} is already in use`);
    if (!this.#isOpen()) throw new Error('not connected');

    const call = new Call(INTERNAL, this.#link, id, { direction: 'outgoing', to }, options);
    this.#calls.set(id, call);
    return call;
  }

  /**
   * Registers a SIP user on this socket, with `{user, password}` or
   * `{token}`, so its inbound calls arrive as `incoming` events. Resolves
   * with `{user, expires}`; rejects with an Error whose `code` is the SIP
   * status (or null) of `registration_failed`, or the gateway's error code
   * (`rate_limited`, `invalid_state`, `invalid_message`), or a local one
   * (`invalid_state`: another register is pending; `socket_closed`;
   * `message_too_large`), and whose `reason` is the text. Bad arguments
   * reject with a TypeError.
   */
  register(credentials) {
    return new Promise((resolve, reject) => {
      const { user, password, token } = credentials ?? {};
      let msg;
      if (token !== undefined) {
        if (user !== undefined || password !== undefined) throw new TypeError('pass either {user, password} or {token}, not both');
        if (typeof token !== 'string' || token === '') throw new TypeError('token must be a non-empty string');
        msg = { type: 'register', token };
      } else {
        if (typeof user !== 'string' || user === '') throw new TypeError('user must be a non-empty string');
        if (typeof password !== 'string') throw new TypeError('password must be a string');
        msg = { type: 'register', user, password };
      }
      if (this.#pendingRegister) throw registrationError('register', 'invalid_state', 'another register is pending');
      const result = this.#send(msg);
      if (result === 'closed') throw registrationError('register', 'socket_closed', 'not connected');
      if (result === 'too_large') throw registrationError('register', 'message_too_large', 'register message exceeds the gateway\'s max_message_bytes');
      this.#pendingRegister = { user: msg.user ?? null, resolve, reject };
    });
  }

  /**
   * Removes the registration; resolves with `{user}` on `unregistered`
   * (at once with `{user: null}` if nothing is registered or pending).
   * Calls already ringing or active are not affected.
   */
  unregister() {
    return new Promise((resolve, reject) => {
      if (this.#user === null && !this.#pendingRegister) {
        resolve({ user: null });
        return;
      }
      if (this.#send({ type: 'unregister' }) !== 'sent') throw registrationError('unregister', 'socket_closed', 'not connected');
      this.#pendingUnregisters.push({ resolve, reject });
    });
  }

  /**
   * Closes the socket (code 1000: the gateway ends the calls at once, no
   * resume); every call then ends with reason `socket_closed`.
   */
  close() {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#reconnecting) {
      // Give up resuming: the gateway ends the calls when its grace period
      // runs out (or at once, if an attempt is just taking over: that socket
      // is closed normally).
      this.#reconnecting = false;
      this.#held = [];
      this.#teardown({ code: 1000, reason: '' });
      return;
    }
    this.#ws.close(1000);
  }

  #isOpen() {
    return !this.#reconnecting && this.#ws.readyState === WebSocket.OPEN;
  }

  // Returns 'sent', 'closed' or 'too_large'. Oversized frames are caught here
  // because the gateway's `message_too_large` error carries no call id, so a
  // call whose offer was dropped that way would wait forever. While the
  // session is being resumed, messages are held and sent after the resume.
  #send(msg) {
    const text = JSON.stringify(msg);
    if (new TextEncoder().encode(text).length > this.#maxMessageBytes) return 'too_large';
    if (this.#reconnecting) {
      if (this.#held.length >= MAX_HELD_MESSAGES) return 'closed';
      this.#held.push(msg);
      return 'sent';
    }
    if (!this.#isOpen()) return 'closed';
    this.#ws.send(text);
    return 'sent';
  }

  #onMessage(data) {
    const msg = parse(data);
    if (!msg) return;
    switch (msg.type) {
      case 'answer':
      case 'ringing':
      case 'progress':
      case 'dtmf':
      case 'answered':
      case 'held':
      case 'resumed':
      case 'transfer_progress':
      case 'transferred':
      case 'ended':
        // Messages for a call that already ended locally are stale; drop them.
        this.#calls.get(msg.call)?.[RECEIVE](msg);
        break;
      case 'incoming':
        this.#onIncoming(msg);
        break;
      case 'registered':
        this.#onRegistered(msg);
        break;
      case 'registration_failed':
        this.#onRegistrationFailed(msg);
        break;
      case 'unregistered':
        this.#onUnregistered(msg);
        break;
      case 'error': {
        const call = typeof msg.call === 'string' ? this.#calls.get(msg.call) : undefined;
        const code = String(msg.code);
        if (call) {
          call[RECEIVE](msg);
        } else if (msg.call == null && this.#pendingRegister && REGISTER_ERRORS.has(code)) {
          const { reject } = this.#pendingRegister;
          this.#pendingRegister = null;
          reject(registrationError('register', code, String(msg.message ?? '')));
        } else if (msg.call == null && this.#pendingUnregisters.length > 0 && UNREGISTER_ERRORS.has(code)) {
          const err = registrationError('unregister', code, String(msg.message ?? ''));
          for (const { reject } of this.#takeUnregisters()) reject(err);
        } else if (code !== 'unknown_call') {
          // unknown_call for a call we no longer track is the expected race
          // (a candidate or hangup crossing the gateway's `ended`): not news.
          this.dispatchEvent(new CustomEvent('error', {
            detail: { code, message: String(msg.message ?? ''), call: msg.call ?? null },
          }));
        }
        break;
      }
      default:
        // pong, and message types from newer gateways, are deliberately ignored.
        break;
    }
  }

  #onIncoming(msg) {
    // A malformed or clashing id cannot be answered (or rejected) anyway.
    if (typeof msg.call !== 'string' || !CALL_ID.test(msg.call) || this.#calls.has(msg.call)) return;
    const call = new Call(INTERNAL, this.#link, msg.call, {
      direction: 'incoming',
      to: String(msg.to ?? ''),
      from: String(msg.from ?? ''),
      display: typeof msg.display === 'string' ? msg.display : null,
    });
    this.#calls.set(msg.call, call);
    this.dispatchEvent(new CustomEvent('incoming', { detail: { call } }));
  }

  #onRegistered(msg) {
    const user = String(msg.user ?? '');
    const expires = Number(msg.expires);
    this.#user = user;
    const pending = this.#pendingRegister;
    // Also sent unprompted when a failed refresh recovered; matched like
    // registration_failed below so that one does not answer another user's register.
    const answers = pending && (pending.user === null || pending.user === user);
    if (answers) this.#pendingRegister = null;
    this.dispatchEvent(new CustomEvent('registered', { detail: { user, expires } }));
    if (answers) pending.resolve({ user, expires });
  }

  // The answer to a pending register, or unsolicited when a refresh failed;
  // either way the registration is gone (until a `registered`, should the
  // gateway's retries succeed).
  #onRegistrationFailed(msg) {
    // An empty user (e.g. an unreadable token) counts as unknown.
    const user = typeof msg.user === 'string' && msg.user !== '' ? msg.user : null;
    const code = typeof msg.code === 'number' ? msg.code : null;
    const reason = String(msg.reason ?? '');
    this.#user = null;
    const pending = this.#pendingRegister;
    // A refresh failure of another user is not the answer to this register.
    const answers = pending && (pending.user === null || user === null || pending.user === user);
    if (answers) this.#pendingRegister = null;
    this.dispatchEvent(new CustomEvent('registration_failed', { detail: { user, code, reason } }));
    if (answers) pending.reject(registrationError('register', code, reason));
  }

  #onUnregistered(msg) {
    const user = String(msg.user ?? this.#user ?? '');
    this.#user = null;
    this.dispatchEvent(new CustomEvent('unregistered', { detail: { user } }));
    for (const { resolve } of this.#takeUnregisters()) resolve({ user });
  }

  #takeUnregisters() {
    const pending = this.#pendingUnregisters;
    this.#pendingUnregisters = [];
    return pending;
  }

  #onClose(event) {
    if (this.#canResume(event.code)) {
      this.#resume(event);
      return;
    }
    this.#teardown(event);
  }

  // Whether the gateway is holding this session's calls for a resume: it
  // does so for a socket lost with calls up, unless closed normally.
  #canResume(code) {
    if (this.#closed || !this.#reconnect || this.#resumeToken === null || this.#resumeGraceMs <= 0) return false;
    if (NO_RESUME_CODES.has(code)) return false;
    return [...this.#calls.values()].some((call) => call[HELD_AT_GATEWAY]);
  }

  // Opens new sockets (bounded attempts, backing off, within the gateway's
  // grace period) and sends `resume_session` until one is taken over.
  async #resume(closeEvent) {
    this.#reconnecting = true;
    this.dispatchEvent(new CustomEvent('reconnecting', { detail: { code: closeEvent.code, reason: closeEvent.reason } }));
    const deadline = Date.now() + this.#resumeGraceMs;
    let delay = RESUME_FIRST_DELAY_MS;
    for (let attempt = 0; attempt < RESUME_ATTEMPTS; attempt++) {
      await sleep(Math.min(delay, Math.max(0, deadline - Date.now())));
      delay = Math.min(delay * 2, RESUME_MAX_DELAY_MS);
      if (this.#closed) return; // close() has ended everything
      if (Date.now() >= deadline) break;
      const result = await openAndResume(this.#url, this.#resumeToken, Math.min(RESUME_REPLY_TIMEOUT_MS, deadline - Date.now()));
      if (this.#closed) {
        result.ws?.close(1000);
        return;
      }
      if (result.resumed) {
        this.#adopt(result.ws, result.reply, result.backlog);
        return;
      }
      if (result.refused) {
        // The gateway no longer has the session: nothing to retry.
        result.ws.close(1000);
        break;
      }
    }
    this.#reconnecting = false;
    this.#held = [];
    this.#teardown(closeEvent);
  }

  // The new socket carries the session: reconcile the calls with the
  // gateway's list, replay what it queued, send what we held.
  #adopt(ws, reply, backlog) {
    this.#reconnecting = false;
    this.#attach(ws);
    this.#sessionId = String(reply.session ?? this.#sessionId);
    this.#resumeToken = typeof reply.resume_token === 'string' ? reply.resume_token : null;
    const listed = new Map();
    for (const c of Array.isArray(reply.calls) ? reply.calls : []) {
      if (typeof c?.call === 'string') listed.set(c.call, String(c.state));
    }
    const held = this.#held;
    this.#held = [];
    // A `call`/`accept` still held reaches the gateway only now.
    const pending = new Set(held.filter((m) => m.type === 'call' || m.type === 'accept').map((m) => m.call));
    for (const call of [...this.#calls.values()]) {
      const state = listed.get(call.id);
      if (state === undefined) {
        if (call[KNOWN_TO_GATEWAY] && !pending.has(call.id)) {
          // The gateway never got it, or no longer has it (its `ended` was
          // lost with the old socket): no `ended` will come.
          call[RECEIVE]({ type: 'ended', reason: 'socket_closed', code: null });
        }
      } else {
        call[RESUMED](state);
      }
    }
    this.dispatchEvent(new CustomEvent('resumed', { detail: { sessionId: this.#sessionId } }));
    for (const data of backlog) this.#onMessage(data);
    for (const msg of held) this.#send(msg);
    for (const call of this.#calls.values()) call[RESUMED]('check_ice');
  }

  #teardown(event) {
    clearInterval(this.#pingTimer);
    // The gateway frees every call of a closed socket, so mirror that locally.
    for (const call of [...this.#calls.values()]) call[RECEIVE]({ type: 'ended', reason: 'socket_closed', code: null });
    // ... and its registration.
    this.#user = null;
    const closed = (what) => registrationError(what, 'socket_closed', 'the socket closed');
    if (this.#pendingRegister) {
      const { reject } = this.#pendingRegister;
      this.#pendingRegister = null;
      reject(closed('register'));
    }
    for (const { reject } of this.#takeUnregisters()) reject(closed('unregister'));
    this.dispatchEvent(new CustomEvent('close', { detail: { code: event.code, reason: event.reason } }));
  }
}

export class Call extends EventTarget {
  #link;
  #id;
  #direction;
  #to;
  #from = null;
  #display = null;
  #state = 'connecting';
  #pc = null;          // incoming calls get theirs on accept()
  #ownStream = null;   // only tracks we captured ourselves get stopped
  #remoteStream = null;
  #endReason = null;
  #accepted = false;   // accept() was called (incoming calls)
  #offerSent = false;  // the `call` or `accept` message is out
  #answered = false;   // `answer` received, i.e. the gateway surely holds the call
  #hangupSent = false;
  #pendingCandidates = [];
  #renegotiation = null;  // {promise, resolve, reject, sent}: a pending ICE restart
  #iceTimer = null;

  constructor(token, link, id, info, options = {}) {
    if (token !== INTERNAL) throw new TypeError('use GangwayClient.call()');
    super();
    this.#link = link;
    this.#id = id;
    this.#direction = info.direction;
    this.#to = info.to;
    if (this.#direction === 'incoming') {
      // No peer connection until accept(): a tab that only rings (and maybe
      // never answers, or loses to another tab) holds no WebRTC resources.
      this.#from = info.from;
      this.#display = info.display;
      this.#state = 'ringing';
      return;
    }
    this.#connect(options, { type: 'call', call: id, to: info.to });
  }

  get id() { return this.#id; }
  /** 'outgoing' (from client.call()) or 'incoming' (from an `incoming` event). */
  get direction() { return this.#direction; }
  /** Outgoing: the destination. Incoming: the called SIP URI (`incoming.to`). */
  get to() { return this.#to; }
  /** Incoming: the caller's SIP URI. Outgoing: null. */
  get from() { return this.#from; }
  /** Incoming: the caller's display name, if it sent one. Outgoing: null. */
  get display() { return this.#display; }
  get state() { return this.#state; }
  /** Null for an incoming call until accept(). */
  get peerConnection() { return this.#pc; }
  get remoteStream() { return this.#remoteStream; }
  get endReason() { return this.#endReason; }

  // Whether the gateway holds this call (it parks a session that has one).
  get [HELD_AT_GATEWAY]() { return this.#offerSent && this.#state !== 'ended'; }
  // Whether a resumed session must list it: sent, or ringing here.
  get [KNOWN_TO_GATEWAY]() { return this.#offerSent || this.#direction === 'incoming'; }

  /**
   * Answers a ringing incoming call: gets the microphone, makes the WebRTC
   * offer and sends `accept`; from then on it behaves like an outgoing call
   * (`answer`, then `answered`). Options as for client.call() (except `id`).
   * Throws on an outgoing call, a second time, or after the call ended.
   */
  accept(options = {}) {
    if (this.#direction !== 'incoming') throw new Error('only incoming calls can be accepted');
    if (this.#accepted) throw new Error(`call ${this.#id} was already accepted`);
    if (this.#state === 'ended') throw new Error(`call ${this.#id} has ended`);
    this.#connect(options, { type: 'accept', call: this.#id });
    this.#accepted = true;
  }

  /**
   * Declines a ringing incoming call with SIP status 486 (busy, default),
   * 480 (unavailable) or 603 (decline), and ends it at once with reason
   * `rejected`. Does nothing once ended; throws on an outgoing or accepted
   * call (use hangup()).
   */
  reject(code = DEFAULT_REJECT_CODE) {
    if (this.#direction !== 'incoming') throw new Error('only incoming calls can be rejected');
    if (!REJECT_CODES.has(code)) throw new RangeError('reject code must be 486, 480 or 603');
    if (this.#state === 'ended') return;
    if (this.#accepted) throw new Error(`call ${this.#id} was already accepted; use hangup()`);
    this.#decline(code);
  }

  /**
   * Asks the gateway to end the call; `ended` (reason `hangup`) follows. On
   * an incoming call whose `accept` is not out yet, this is reject(486).
   */
  hangup() {
    if (this.#state === 'ended' || this.#hangupSent) return;
    if (!this.#offerSent) {
      // An incoming call still rings at the gateway: decline it.
      if (this.#direction === 'incoming') return this.#decline(DEFAULT_REJECT_CODE);
      // The gateway has never heard of this call; #start notices and stops.
      this.#end('hangup', null);
      return;
    }
    if (this.#link.send({ type: 'hangup', call: this.#id }) === 'sent') this.#hangupSent = true;
    else this.#end('socket_closed', null);
  }

  /**
   * Sends DTMF digits (0-9, *, #, A-D; at most 32) to the far end as RFC 4733
   * events. Only on an answered call to a SIP destination; otherwise the
   * gateway answers with an `error` event on this call.
   */
  sendDtmf(digits) {
    if (this.#state === 'ended') return;
    this.#link.send({ type: 'dtmf', call: this.#id, digits: String(digits) });
  }

  /**
   * Puts the call on hold (the gateway re-INVITEs the PBX with sendonly);
   * `held` with `by: 'local'` follows once the PBX accepted, an `error`
   * (`hold_failed`) if it refused. `resume()` undoes it.
   */
  hold() {
    if (this.#state === 'ended') return;
    this.#link.send({ type: 'hold', call: this.#id });
  }

  resume() {
    if (this.#state === 'ended') return;
    this.#link.send({ type: 'resume', call: this.#id });
  }

  /**
   * Blind transfer: asks the far end (SIP REFER) to call `to` instead.
   * `transferprogress` events follow (202 accepted, then the far end's
   * view of its new call); on success the call ends with `transferred`.
   */
  transfer(to) {
    if (this.#state === 'ended') return;
    this.#link.send({ type: 'transfer', call: this.#id, to: String(to) });
  }

  /**
   * Attended transfer: asks this call's far end to take over `other` (an
   * answered call of the same client) in our place, with a REFER whose
   * target replaces `other`'s dialog. Both calls end with `transferred`
   * when it succeeds.
   */
  transferTo(other) {
    if (this.#state === 'ended') return;
    this.#link.send({ type: 'transfer', call: this.#id, replaces: String(other?.id ?? other) });
  }

  /**
   * Restarts ICE on the call's WebRTC leg (after a network change): a new
   * offer with new ICE credentials goes to the gateway as `renegotiate`, its
   * `answer` is applied, and the new candidates trickle as usual. Only the
   * browser leg changes; the far end notices nothing. Resolves once the
   * answer is applied; rejects if the gateway refuses the offer (the call
   * carries on with its current path) or the call ends first. A restart
   * already under way is shared. Done automatically when ICE fails, unless
   * `autoRestartIce` was turned off.
   */
  restartIce() {
    if (this.#renegotiation) return this.#renegotiation.promise;
    if (this.#state === 'ended') return Promise.reject(new Error(`call ${this.#id} has ended`));
    if (!this.#pc || !this.#answered) return Promise.reject(new Error(`call ${this.#id} has no media session yet`));
    let resolve;
    let reject;
    const promise = new Promise((res, rej) => { resolve = res; reject = rej; });
    const renegotiation = { promise, resolve, reject, sent: false };
    this.#renegotiation = renegotiation;
    const settle = () => { if (this.#renegotiation === renegotiation) this.#renegotiation = null; };
    promise.then(settle, settle);
    (async () => {
      try {
        await this.#pc.setLocalDescription(await this.#pc.createOffer({ iceRestart: true }));
        if (this.#state === 'ended') throw new Error(`call ${this.#id} has ended`);
        const result = this.#link.send({ type: 'renegotiate', call: this.#id, sdp: this.#pc.localDescription.sdp });
        if (result !== 'sent') throw new Error(result === 'too_large' ? 'offer exceeds max_message_bytes' : 'not connected');
        renegotiation.sent = true;
      } catch (err) {
        await this.#rollback();
        reject(err instanceof Error ? err : new Error(String(err)));
      }
    })();
    return promise;
  }

  async #rollback() {
    if (this.#pc?.signalingState === 'have-local-offer') {
      try { await this.#pc.setLocalDescription({ type: 'rollback' }); } catch { /* closed meanwhile */ }
    }
  }

  // The session was resumed: `state` is the gateway's view of the call
  // (`connecting`, `ringing`, `answered`, `ended`), or 'check_ice' once the
  // queued messages are in, to restart ICE where the path broke meanwhile.
  [RESUMED](state) {
    if (this.#state === 'ended') return;
    if (state === 'check_ice') {
      const ice = this.#pc?.iceConnectionState;
      if (this.#link.autoRestartIce && (ice === 'disconnected' || ice === 'failed')) this.#autoRestart();
      return;
    }
    // An `answered` the old socket lost in flight: catch up with the
    // gateway (a queued one that follows is then ignored).
    if (state === 'answered' && this.#state !== 'answered') this[RECEIVE]({ type: 'answered' });
  }

  #autoRestart() {
    this.restartIce().catch((err) => {
      if (this.#state !== 'ended') this.#emit('error', { code: 'ice_restart_failed', message: errorMessage(err) });
    });
  }

  #watchIce() {
    this.#pc.addEventListener('iceconnectionstatechange', () => {
      if (!this.#link.autoRestartIce || this.#state === 'ended' || !this.#answered) return;
      const ice = this.#pc.iceConnectionState;
      clearTimeout(this.#iceTimer);
      // While the socket is being replaced, the resume checks ICE instead.
      if (ice === 'failed') {
        if (this.#link.isOpen()) this.#autoRestart();
      } else if (ice === 'disconnected') {
        this.#iceTimer = setTimeout(() => {
          if (this.#pc?.iceConnectionState === 'disconnected' && this.#link.isOpen()) this.#autoRestart();
        }, ICE_DISCONNECTED_RESTART_MS);
      }
    });
  }

  // Creates the peer connection and starts the offer; `request` is the
  // `call` or `accept` message the SDP is added to.
  #connect(options, request) {
    this.#pc = new RTCPeerConnection({ iceServers: this.#link.iceServers });

    // Candidates can fire before the `call`/`accept` message is out (the
    // gateway would answer unknown_call), so they are held until it is.
    this.#pc.onicecandidate = ({ candidate }) => {
      if (this.#state === 'ended') return;
      // An empty candidate string is a per-m-line end marker; the null event
      // that ends gathering is the one the protocol knows about.
      if (candidate && !candidate.candidate) return;
      const msg = { type: 'candidate', call: this.#id, candidate: candidate ? candidateInit(candidate) : null };
      if (this.#offerSent) this.#link.send(msg);
      else this.#pendingCandidates.push(msg);
    };

    this.#watchIce();

    this.#pc.ontrack = (event) => {
      // The answer normally carries an msid; the fallback covers one that does not.
      this.#remoteStream = event.streams[0] ?? new MediaStream([event.track]);
      this.#emit('track', { stream: this.#remoteStream });
    };

    // Deferred so the caller can attach listeners before a synchronous
    // failure (e.g. no navigator.mediaDevices) ends the call.
    queueMicrotask(() => this.#start(options, request));
  }

  async #start(options, request) {
    try {
      let stream = options.stream ?? null;
      if (!stream && options.audio !== false) {
        if (!navigator.mediaDevices?.getUserMedia) {
          throw new Error('microphone access unavailable (the page must be served over HTTPS or from localhost)');
        }
        stream = await navigator.mediaDevices.getUserMedia({ audio: options.audio ?? true, video: false });
        this.#ownStream = stream;
        if (this.#state === 'ended') { // hung up while the permission prompt was open
          stopTracks(stream);
          return;
        }
      }

      const track = stream?.getAudioTracks()[0];
      const transceiver = this.#pc.addTransceiver(track ?? 'audio', {
        direction: 'sendrecv',
        streams: stream ? [stream] : [],
      });
      if (options.codecs) preferCodecs(transceiver, options.codecs);

      await this.#pc.setLocalDescription(await this.#pc.createOffer());
      if (this.#state === 'ended') return;

      const result = this.#link.send({ ...request, sdp: this.#pc.localDescription.sdp });
      if (result === 'closed') return this.#end('socket_closed', null);
      if (result === 'too_large') throw new Error('SDP offer exceeds the gateway\'s max_message_bytes');
      this.#offerSent = true;
      for (const msg of this.#pendingCandidates) this.#link.send(msg);
      this.#pendingCandidates = [];
    } catch (err) {
      // Closing the peer connection on hangup makes pending WebRTC calls
      // reject; that is not a client error.
      if (this.#state !== 'ended') this.#fail('client_error', errorMessage(err));
    }
  }

  [RECEIVE](msg) {
    if (this.#state === 'ended') return;
    switch (msg.type) {
      case 'answer':
        if (this.#answered && this.#renegotiation?.sent && typeof msg.sdp === 'string') {
          this.#applyRenegotiation(msg.sdp);
          return;
        }
        // An incoming call has no offer to apply an answer to before accept().
        if (this.#answered || !this.#pc || typeof msg.sdp !== 'string') return;
        this.#answered = true;
        this.#emit('answer', { sdp: msg.sdp });
        this.#pc.setRemoteDescription({ type: 'answer', sdp: msg.sdp }).catch((err) => {
          if (this.#state !== 'ended') this.#fail('client_error', `cannot apply answer: ${errorMessage(err)}`);
        });
        break;
      case 'ringing':
        // Never step back from answered, whatever order a SIP leg produces.
        if (this.#state === 'connecting') this.#setState('ringing');
        this.#emit('ringing');
        break;
      case 'dtmf':
        if (typeof msg.digit === 'string') this.#emit('dtmf', { digit: msg.digit });
        break;
      case 'held':
      case 'resumed':
        this.#emit(msg.type, { by: msg.by === 'remote' ? 'remote' : 'local' });
        break;
      case 'transfer_progress':
        this.#emit('transferprogress', { status: Number(msg.status), done: msg.done === true });
        break;
      case 'transferred':
        this.#emit('transferred', { to: String(msg.to) });
        break;
      case 'progress':
        // Early media: the far end's audio is already on the remote stream.
        if (this.#state === 'connecting') this.#setState('ringing');
        this.#emit('progress');
        break;
      case 'answered':
        // Once: a resumed session may report it twice (its list, then the queue).
        if (this.#state === 'answered') return;
        this.#setState('answered');
        this.#emit('answered');
        break;
      case 'ended':
        this.#end(String(msg.reason), typeof msg.code === 'number' ? msg.code : null);
        break;
      case 'error': {
        const code = String(msg.code);
        if (this.#renegotiation?.sent && RENEGOTIATION_ERRORS.has(code)) {
          // The gateway refused the new offer; the call goes on as it was.
          const { reject } = this.#renegotiation;
          this.#rollback().then(() => reject(new Error(`${code}: ${String(msg.message ?? '')}`)));
          return;
        }
        this.#emit('error', { code, message: String(msg.message ?? '') });
        // A rejected `call` (or an `accept`/`reject` for a call that no
        // longer rings) gets no `ended`. `internal` before the answer almost
        // certainly means setup failed; hang up in case it did not.
        if (NOT_ACCEPTED.has(code)) this.#end(code, null);
        else if (code === 'internal' && !this.#answered) this.#abandon(code);
        break;
      }
    }
  }

  // Sends `reject` for a ringing incoming call and ends it locally; the
  // gateway's own `ended` (reason `rejected`) then finds no call and is dropped.
  #decline(code) {
    if (this.#link.send({ type: 'reject', call: this.#id, code }) === 'sent') this.#end('rejected', code);
    else this.#end('socket_closed', null);
  }

  // Ends locally after a client-side failure, telling the gateway if it may
  // already hold the call (its `ended` then finds no call here and is dropped).
  #fail(code, message) {
    this.#emit('error', { code, message });
    this.#abandon(code);
  }

  #abandon(reason) {
    if (this.#offerSent) {
      if (!this.#hangupSent) this.#link.send({ type: 'hangup', call: this.#id });
    } else if (this.#direction === 'incoming') {
      // Still ringing at the gateway: the caller should not ring on for nothing.
      this.#link.send({ type: 'reject', call: this.#id, code: ACCEPT_FAILED_CODE });
    }
    this.#end(reason, null);
  }

  #applyRenegotiation(sdp) {
    const { resolve, reject } = this.#renegotiation;
    this.#pc.setRemoteDescription({ type: 'answer', sdp }).then(() => {
      this.#emit('renegotiated', { sdp });
      resolve();
    }, async (err) => {
      await this.#rollback();
      reject(err);
    });
  }

  #end(reason, code) {
    if (this.#state === 'ended') return;
    clearTimeout(this.#iceTimer);
    this.#renegotiation?.reject(new Error(`call ended: ${reason}`));
    this.#endReason = { reason, code };
    this.#pc?.close();
    if (this.#ownStream) stopTracks(this.#ownStream);
    this.#pendingCandidates = [];
    this.#link.forget(this);
    this.#setState('ended');
    this.#emit('ended', { reason, code });
  }

  #setState(state) {
    this.#state = state;
    this.#emit('statechange', { state });
  }

  #emit(type, detail = null) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}

// The Error that register() and unregister() reject with: `code` is the SIP
// status (or null) of `registration_failed`, or an error code; `reason` the text.
function registrationError(what, code, reason) {
  const text = [code, reason].filter((part) => part != null && part !== '').join(' ');
  const err = new Error(`${what} failed${text ? `: ${text}` : ''}`);
  err.code = code;
  err.reason = reason;
  return err;
}

// Reorders/filters the offered codecs; telephone-event stays so DTMF keeps
// working whatever the voice codec. Capabilities come from the receiver
// because that is the list setCodecPreferences validates against.
function preferCodecs(transceiver, names) {
  if (typeof transceiver.setCodecPreferences !== 'function') {
    throw new Error('this browser cannot restrict codecs (no setCodecPreferences)');
  }
  const available = RTCRtpReceiver.getCapabilities('audio')?.codecs ?? [];
  const byName = (name) => available.filter((c) => c.mimeType.toLowerCase() === `audio/${name.toLowerCase()}`);
  const chosen = names.flatMap(byName);
  if (chosen.length === 0) throw new Error(`none of the codecs ${names.join(', ')} is supported by this browser`);
  transceiver.setCodecPreferences([...chosen, ...byName('telephone-event')]);
}

// Built by hand rather than toJSON() so null fields are left out instead of
// being sent as null to a gateway that may expect them absent.
function candidateInit(c) {
  const init = { candidate: c.candidate };
  if (c.sdpMid != null) init.sdpMid = c.sdpMid;
  if (c.sdpMLineIndex != null) init.sdpMLineIndex = c.sdpMLineIndex;
  if (c.usernameFragment != null) init.usernameFragment = c.usernameFragment;
  return init;
}

// Accepts nothing (same host, /ws), a relative path, or an http(s) URL, and
// turns it into the ws(s) URL WebSocket wants.
function resolveUrl(url) {
  const base = globalThis.location?.href;
  const u = new URL(url ?? '/ws', base);
  if (u.protocol === 'https:') u.protocol = 'wss:';
  else if (u.protocol === 'http:') u.protocol = 'ws:';
  return u.href;
}

function parse(data) {
  if (typeof data !== 'string') return null;
  try {
    const msg = JSON.parse(data);
    return msg && typeof msg === 'object' && !Array.isArray(msg) && typeof msg.type === 'string' ? msg : null;
  } catch {
    return null;
  }
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// One resume attempt: a new socket, `hello`, then `resume_session`. Resolves
// (never rejects) with {resumed, ws, reply, backlog}: `backlog` holds the
// messages that followed `session_resumed` before the caller took over.
// {refused, ws}: the gateway does not know the token. Otherwise a failure
// to retry (socket error, timeout).
function openAndResume(url, token, timeoutMs) {
  return new Promise((resolve) => {
    let ws;
    try {
      ws = new WebSocket(url);
    } catch {
      resolve({});
      return;
    }
    let done = false;
    const finish = (result) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      resolve(result);
    };
    const timer = setTimeout(() => {
      ws.onmessage = ws.onclose = null;
      ws.close(1000);
      finish({});
    }, Math.max(0, timeoutMs));
    let greeted = false;
    ws.onclose = () => finish({});
    ws.onmessage = (event) => {
      const msg = parse(event.data);
      if (!msg) return;
      if (!greeted) {
        if (msg.type !== 'hello' || msg.version !== PROTOCOL_VERSION) return;
        greeted = true;
        ws.send(JSON.stringify({ type: 'resume_session', token }));
      } else if (msg.type === 'session_resumed') {
        // Keep what follows until the client attaches its own handlers.
        const backlog = [];
        ws.onmessage = (e) => backlog.push(e.data);
        ws.onclose = null;
        finish({ resumed: true, ws, reply: msg, backlog });
      } else if (msg.type === 'error' && msg.code === 'unknown_session') {
        ws.onmessage = ws.onclose = null;
        finish({ refused: true, ws });
      }
    };
  });
}

function stopTracks(stream) {
  for (const track of stream.getTracks()) track.stop();
}

function errorMessage(err) {
  return err instanceof Error ? `${err.name}: ${err.message}` : String(err);
}
