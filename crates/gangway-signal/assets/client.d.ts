// Typings for the Gangway browser client (/client.js), JSON API v1.
// See docs/protocol.md for the wire protocol behind it.

/** Options for {@link GangwayClient.connect}. */
export interface ConnectOptions {
  /** ICE servers for every call's RTCPeerConnection. Default `[]` (the gateway is ICE-lite and reachable directly). */
  iceServers?: RTCIceServer[];
  /** Milliseconds between keepalive `ping` messages; `0` disables them. Default 30000. */
  pingInterval?: number;
  /**
   * When the socket is lost with calls up (no close frame, or a close code
   * other than 1000/1001/1009/4001), reconnect and resume the session with
   * its token while the gateway holds the calls (`hello.resume_grace_secs`):
   * up to 6 attempts, backing off from 250 ms. Default `true`.
   */
  reconnect?: boolean;
  /**
   * Restart ICE by itself when a call's ICE connection fails (or stays
   * `disconnected` for 2 s), and after a resume for calls whose path broke.
   * Default `true`.
   */
  autoRestartIce?: boolean;
}

/** Options for {@link GangwayClient.call}. */
export interface CallOptions {
  /** Send this stream's first audio track instead of capturing the microphone. The client never stops its tracks. */
  stream?: MediaStream;
  /**
   * getUserMedia audio constraints. Default `true` (the browser's echo
   * cancellation, noise suppression and gain control stay on). `false` sends
   * no audio (receive only).
   */
  audio?: MediaTrackConstraints | boolean;
  /**
   * Offer only these codecs, in this order of preference, by name
   * (`'opus'`, `'PCMU'`, `'PCMA'`, case-insensitive). `telephone-event` is
   * always kept. Needs RTCRtpTransceiver.setCodecPreferences.
   */
  codecs?: string[];
  /** Call id: 1–64 visible ASCII characters (0x21–0x7E). Default `crypto.randomUUID()`. */
  id?: string;
}

/** Options for {@link Call.accept}: as for `call()`, without the id (the gateway chose it). */
export type AcceptOptions = Omit<CallOptions, 'id'>;

/**
 * Outgoing calls start `connecting`; incoming calls start `ringing` and stay
 * there after `accept()` until `answered`. States never go back.
 */
export type CallState = 'connecting' | 'ringing' | 'answered' | 'ended';

/** `outgoing`: made with `client.call()`. `incoming`: from an `incoming` event. */
export type CallDirection = 'outgoing' | 'incoming';

/** SIP statuses an incoming call can be rejected with: busy, temporarily unavailable, decline. */
export type RejectCode = 486 | 480 | 603;

/** Credentials for {@link GangwayClient.register}: a SIP user and password, or a token. */
export type RegisterCredentials =
  | { user: string; password: string; token?: never }
  | { token: string; user?: never; password?: never };

/** A successful registration (`registered`). */
export interface Registration {
  user: string;
  /** Seconds the registration lasts; the gateway refreshes it by itself. */
  expires: number;
}

/** A failed registration (`registration_failed`); the registration is gone. */
export interface RegistrationFailedDetail {
  /** The user that failed, or `null` if the gateway could not tell (e.g. an invalid token). */
  user: string | null;
  /** SIP status (e.g. `401`, `403`, `408`), or `null` when no SIP response caused it. */
  code: number | null;
  /** Human-readable text; not stable, do not parse. */
  reason: string;
}

/**
 * The Error `register()` and `unregister()` reject with (bad arguments
 * reject with a plain `TypeError` instead).
 */
export interface RegistrationError extends Error {
  /**
   * - a number or `null`: the SIP status of `registration_failed`;
   * - a gateway `error` code: `rate_limited` (too many failed attempts from
   *   this address), `invalid_state` (another user is registered on this
   *   socket), `invalid_message`;
   * - a local code: `invalid_state` (another register is pending),
   *   `socket_closed`, `message_too_large`.
   */
  code: number | string | null;
  /** The gateway's reason or message, or a local explanation. */
  reason: string;
}

/**
 * Why a call ended. Reasons from the gateway: `hangup`, `invalid_sdp`,
 * `incompatible_codecs`, `not_found`, `media_timeout`, `shutdown`, and more
 * in later versions (`busy`, `rejected`, `no_answer`, `remote_hangup`,
 * `cancelled`, `session_refresh_failed` (the SIP session timer ended the
 * call: the PBX side stopped answering), `transferred` (this client's
 * `transfer()` succeeded), …); treat unknown ones as a generic
 * end. Incoming calls can
 * also end with `answered_elsewhere` (another socket of the same user
 * answered), `cancelled` (the caller gave up), `rejected` and `no_answer`
 * (ring timeout). Reasons the client produces locally: `socket_closed`,
 * `client_error`, `hangup` (hung up before the call was sent), `rejected`
 * (`reject()`, or `hangup()` on an incoming call before its `accept` was
 * sent; `code` is the status sent), and the error codes `duplicate_call`,
 * `too_many_calls`, `shutting_down`, `unknown_call` (also: an incoming call
 * stopped ringing before `accept` arrived), `internal` when the gateway
 * refused the call.
 */
export interface EndReason {
  reason: string;
  /** SIP status code when a SIP response ended the call, otherwise `null`. */
  code: number | null;
}

/** An `error` message from the gateway, or `client_error` for local failures. */
export interface CallErrorDetail {
  /** Machine code, e.g. `invalid_candidate`, `too_many_calls`, `client_error`. */
  code: string;
  /** Human-readable text; not stable, do not parse. */
  message: string;
}

/**
 * Besides the codes above: `rate_limited`, `invalid_state` and
 * `invalid_message` without a call id, unless they answered a pending
 * `register()`/`unregister()` (which then rejects instead).
 */
export interface ClientErrorDetail extends CallErrorDetail {
  /** The call id the gateway named, if any (usually `null`). */
  call: string | null;
}

export interface CloseDetail {
  /**
   * WebSocket close code: 1000 after close(), 1001 gateway shutdown, 1009
   * frame too large, 4001 the session was resumed on another socket, 1006
   * connection lost (and, with calls up, not resumed).
   */
  code: number;
  reason: string;
}

/**
 * Something the gateway offers, as listed in `hello.features`:
 * - `echo`: the built-in echo line;
 * - `sip`: calls to SIP destinations (PBX or trunk);
 * - `register`: {@link GangwayClient.register} with user and password (incoming calls);
 * - `register_token`: `register` with a signed token;
 * - `dtmf`: {@link Call.sendDtmf} on answered SIP calls;
 * - `hold`: {@link Call.hold} / {@link Call.resume};
 * - `transfer`: {@link Call.transfer} and {@link Call.transferTo}.
 *
 * Later gateways may list more names; ignore the ones you do not know.
 */
export type Feature =
  | 'echo'
  | 'sip'
  | 'register'
  | 'register_token'
  | 'dtmf'
  | 'hold'
  | 'transfer'
  | (string & {});

export interface GangwayClientEventMap {
  /** A gateway error not tied to an active call. */
  error: CustomEvent<ClientErrorDetail>;
  /**
   * The socket was lost with calls up: the client is reconnecting to resume
   * the session. Calls stay as they are (their media usually keeps flowing);
   * messages sent meanwhile are held. `close` follows if it gives up.
   */
  reconnecting: CustomEvent<CloseDetail>;
  /**
   * The session was resumed on a new socket (`sessionId` is unchanged):
   * calls the gateway no longer holds have ended with `socket_closed`,
   * messages it queued meanwhile follow, held ones are sent.
   */
  resumed: CustomEvent<{ sessionId: string }>;
  /**
   * The socket closed; all calls have already ended with `socket_closed`,
   * the registration is gone (`user` is `null`) and a pending `register()`
   * or `unregister()` has rejected.
   */
  close: CustomEvent<CloseDetail>;
  /** A SIP user was registered on this socket: in reply to `register()`, or unprompted when a failed refresh recovered. */
  registered: CustomEvent<Registration>;
  /**
   * A register failed, either in reply to `register()` or later, unprompted,
   * when a refresh failed; `user` is then `null` until the next `registered`.
   */
  registration_failed: CustomEvent<RegistrationFailedDetail>;
  /** The registration was removed: in reply to `unregister()`, or unprompted (e.g. the gateway is stopping). */
  unregistered: CustomEvent<{ user: string }>;
  /**
   * A call to the registered user is ringing: `call` (state `ringing`,
   * already in `client.calls`) waits for `accept()` or `reject()`. Ringing
   * holds no peer connection and no microphone.
   */
  incoming: CustomEvent<{ call: Call }>;
}

export interface CallEventMap {
  /** The gateway's SDP answer arrived (before the far end answers). */
  answer: CustomEvent<{ sdp: string }>;
  /** The far end is ringing (outgoing calls). */
  ringing: CustomEvent<null>;
  /** Early media (a SIP 183 with SDP): the far end's audio is playing before the answer. */
  progress: CustomEvent<null>;
  /** The far end sent a DTMF digit. */
  dtmf: CustomEvent<{ digit: string }>;
  /** The far end answered (outgoing), or the gateway connected an accepted incoming call. */
  answered: CustomEvent<null>;
  /** The call went on hold: by this client's `hold()` (`local`) or by the far end (`remote`). */
  held: CustomEvent<{ by: 'local' | 'remote' }>;
  /** That side's hold ended; audio flows again unless the other side still holds. */
  resumed: CustomEvent<{ by: 'local' | 'remote' }>;
  /** Progress of this client's `transfer()`: 202 (accepted), then the far end's new call (100, 180, 200...). */
  transferprogress: CustomEvent<{ status: number; done: boolean }>;
  /** The far end transferred this call: the gateway reached `to`, whose audio now plays. */
  transferred: CustomEvent<{ to: string }>;
  /** An ICE restart's answer was applied (see {@link Call.restartIce}). */
  renegotiated: CustomEvent<{ sdp: string }>;
  /** The call is over; fired exactly once, after the call left `client.calls`. */
  ended: CustomEvent<EndReason>;
  /**
   * The gateway rejected a request for this call, a local WebRTC/microphone
   * failure (`client_error`), or an automatic ICE restart that failed
   * (`ice_restart_failed`; the call goes on).
   */
  error: CustomEvent<CallErrorDetail>;
  /** Remote audio is available; play `detail.stream` in an `<audio autoplay>`. */
  track: CustomEvent<{ stream: MediaStream }>;
  /** `state` changed. */
  statechange: CustomEvent<{ state: CallState }>;
}

export class GangwayClient extends EventTarget {
  /**
   * Opens a WebSocket to the gateway and resolves after its `hello`.
   * `url` defaults to `/ws` on the page's host (`ws:` or `wss:` to match the
   * page); relative and `http(s):` URLs are converted. Rejects if the socket
   * closes before `hello` or the gateway speaks another protocol version.
   */
  static connect(url?: string, options?: ConnectOptions): Promise<GangwayClient>;

  private constructor();

  /** The gateway's opaque session id from `hello` (useful in logs and bug reports). */
  readonly sessionId: string;
  /**
   * What the gateway offers (`hello.features`), or `null` when it does not
   * say (a gateway from before the field; assume everything may work).
   */
  readonly features: ReadonlyArray<Feature> | null;
  /** Active calls by id, ringing incoming calls included. Do not modify. */
  readonly calls: ReadonlyMap<string, Call>;
  /** The SIP user registered on this socket, or `null`. */
  readonly user: string | null;
  /** True while a lost socket is being replaced and the session resumed. */
  readonly reconnecting: boolean;

  /** `call.restartIce()` for a call (or call id) of this client; rejects for an unknown one. */
  restartIce(call: Call | string): Promise<void>;

  /**
   * Starts a call and returns at once; progress is reported by the call's
   * events. Throws if `to` is empty, the id is invalid or in use, or the
   * socket is not open.
   */
  call(to: string, options?: CallOptions): Call;

  /**
   * Registers a SIP user on this socket (one per socket) so its calls arrive
   * as `incoming` events; the gateway keeps the registration refreshed.
   * Resolves on `registered`; rejects with a {@link RegistrationError} on
   * `registration_failed`, on a `rate_limited`/`invalid_state`/
   * `invalid_message` error, if another register is pending, or if the
   * socket closes first.
   */
  register(credentials: RegisterCredentials): Promise<Registration>;

  /**
   * Removes the registration and resolves on `unregistered` (at once, with
   * `user: null`, if nothing is registered or pending). Ringing and active
   * calls are not affected. Rejects with a {@link RegistrationError} if the
   * socket closes first or the gateway answers `invalid_state`/`invalid_message`.
   */
  unregister(): Promise<{ user: string | null }>;

  /**
   * Closes the socket with code 1000, so the gateway ends the calls at once
   * (no resume); every active call ends with reason `socket_closed`. While
   * reconnecting, gives up resuming.
   */
  close(): void;

  addEventListener<K extends keyof GangwayClientEventMap>(
    type: K,
    listener: (this: GangwayClient, ev: GangwayClientEventMap[K]) => any,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | AddEventListenerOptions,
  ): void;
  removeEventListener<K extends keyof GangwayClientEventMap>(
    type: K,
    listener: (this: GangwayClient, ev: GangwayClientEventMap[K]) => any,
    options?: boolean | EventListenerOptions,
  ): void;
  removeEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | EventListenerOptions,
  ): void;
}

export class Call extends EventTarget {
  private constructor();

  readonly id: string;
  readonly direction: CallDirection;
  /** Outgoing: the destination passed to `call()`. Incoming: the called SIP URI (e.g. `sip:alice@pbx.example`). */
  readonly to: string;
  /** Incoming: the caller's SIP URI. Outgoing: `null`. */
  readonly from: string | null;
  /** Incoming: the caller's display name, if it sent one. Outgoing: `null`. */
  readonly display: string | null;
  readonly state: CallState;
  /**
   * The call's peer connection, e.g. for getStats() or DTMF via
   * `getSenders()[0].dtmf`. Always set on outgoing calls; `null` on an
   * incoming call until `accept()` (which creates it synchronously).
   */
  readonly peerConnection: RTCPeerConnection | null;
  /** The remote audio, once the `track` event fired. */
  readonly remoteStream: MediaStream | null;
  /** Set when the call has ended. */
  readonly endReason: EndReason | null;

  /**
   * Answers a ringing incoming call: captures the microphone, creates the
   * peer connection and its offer, and sends `accept`; then it goes on like an
   * outgoing call (`answer`, then `answered`). If the call stopped ringing
   * meanwhile it ends with `unknown_call` (or the gateway's reason, e.g.
   * `answered_elsewhere`). If a local step fails before `accept` is sent, the
   * call is rejected with 480 and ends with `client_error`. Throws on an
   * outgoing call, when called twice, or after the call ended.
   */
  accept(options?: AcceptOptions): void;
  /**
   * Declines a ringing incoming call (default 486) and ends it at once with
   * reason `rejected` and that code. Does nothing once ended. Throws on an
   * outgoing call, after `accept()` (use `hangup()`), or for another code
   * (RangeError).
   */
  reject(code?: RejectCode): void;
  /**
   * Asks the gateway to end the call; `ended` with reason `hangup` follows
   * once it confirms. Ends at once if the call was not sent yet, or with
   * `socket_closed` if the socket is closed. On an incoming call whose
   * `accept` is not sent yet it is `reject(486)`. Does nothing after the first call.
   */
  hangup(): void;
  /** Sends DTMF digits (0-9, * # A-D, at most 32) as RFC 4733 events; answered SIP calls only. */
  sendDtmf(digits: string): void;
  /** Puts an answered SIP call on hold (re-INVITE sendonly); `held` follows, or an `error` (`hold_failed`). */
  hold(): void;
  /** Takes the call off this client's hold; `resumed` follows. */
  resume(): void;
  /** Blind transfer (REFER) of the far end to `to`; `transferprogress` follows, and on success `ended` with `transferred`. */
  transfer(to: string): void;
  /** Attended transfer: this call's far end takes over `other` (a Call of this client, or its id) in our place; both calls end `transferred`. */
  transferTo(other: Call | string): void;
  /**
   * Restarts ICE on the WebRTC leg (after a network change): an offer with
   * new ICE credentials goes out as `renegotiate` and the gateway's `answer`
   * is applied; new candidates trickle as usual. The far end (PBX) is not
   * involved. Resolves once the answer is applied; rejects (the call goes on
   * as it was) if the gateway refuses the offer, or if the call ends or has
   * no answer yet. Concurrent calls share one restart.
   */
  restartIce(): Promise<void>;

  addEventListener<K extends keyof CallEventMap>(
    type: K,
    listener: (this: Call, ev: CallEventMap[K]) => any,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | AddEventListenerOptions,
  ): void;
  removeEventListener<K extends keyof CallEventMap>(
    type: K,
    listener: (this: Call, ev: CallEventMap[K]) => any,
    options?: boolean | EventListenerOptions,
  ): void;
  removeEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | EventListenerOptions,
  ): void;
}
