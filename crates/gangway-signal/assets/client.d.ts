// Typings for the Gangway browser client (/client.js), JSON API v1.
// See docs/protocol.md for the wire protocol behind it.

/** Options for {@link GangwayClient.connect}. */
export interface ConnectOptions {
  /** ICE servers for every call's RTCPeerConnection. Default `[]` (the gateway is ICE-lite and reachable directly). */
  iceServers?: RTCIceServer[];
  /** Milliseconds between keepalive `ping` messages; `0` disables them. Default 30000. */
  pingInterval?: number;
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

export type CallState = 'connecting' | 'ringing' | 'answered' | 'ended';

/**
 * Why a call ended. Reasons from the gateway: `hangup`, `invalid_sdp`,
 * `incompatible_codecs`, `not_found`, `media_timeout`, `shutdown`, and more
 * in later versions (`busy`, `rejected`, `no_answer`, `remote_hangup`,
 * `cancelled`, …); treat unknown ones as a generic end. Reasons the client
 * produces locally: `socket_closed`, `client_error`, `hangup` (hung up before
 * the call was sent), and the error codes `duplicate_call`, `too_many_calls`,
 * `shutting_down`, `unknown_call`, `internal` when the gateway refused the call.
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

export interface ClientErrorDetail extends CallErrorDetail {
  /** The call id the gateway named, if any (usually `null`). */
  call: string | null;
}

export interface CloseDetail {
  /** WebSocket close code: 1000 after close(), 1001 gateway shutdown, 1009 frame too large, 1006 connection lost. */
  code: number;
  reason: string;
}

export interface GangwayClientEventMap {
  /** A gateway error not tied to an active call. */
  error: CustomEvent<ClientErrorDetail>;
  /** The socket closed; all calls have already ended with `socket_closed`. */
  close: CustomEvent<CloseDetail>;
}

export interface CallEventMap {
  /** The gateway's SDP answer arrived (before the far end answers). */
  answer: CustomEvent<{ sdp: string }>;
  /** The far end is ringing. */
  ringing: CustomEvent<null>;
  /** Early media (a SIP 183 with SDP): the far end's audio is playing before the answer. */
  progress: CustomEvent<null>;
  /** The far end sent a DTMF digit. */
  dtmf: CustomEvent<{ digit: string }>;
  /** The far end answered. */
  answered: CustomEvent<null>;
  /** The call is over; fired exactly once, after the call left `client.calls`. */
  ended: CustomEvent<EndReason>;
  /** The gateway rejected a request for this call, or a local WebRTC/microphone failure (`client_error`). */
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
  /** Active calls by id. Do not modify. */
  readonly calls: ReadonlyMap<string, Call>;

  /**
   * Starts a call and returns at once; progress is reported by the call's
   * events. Throws if `to` is empty, the id is invalid or in use, or the
   * socket is not open.
   */
  call(to: string, options?: CallOptions): Call;

  /** Closes the socket; every active call ends with reason `socket_closed`. */
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
  /** The destination passed to `call()`. */
  readonly to: string;
  readonly state: CallState;
  /** The call's peer connection, e.g. for getStats() or DTMF via `getSenders()[0].dtmf`. */
  readonly peerConnection: RTCPeerConnection;
  /** The remote audio, once the `track` event fired. */
  readonly remoteStream: MediaStream | null;
  /** Set when the call has ended. */
  readonly endReason: EndReason | null;

  /**
   * Asks the gateway to end the call; `ended` with reason `hangup` follows
   * once it confirms. Ends at once if the call was not sent yet, or with
   * `socket_closed` if the socket is closed. Does nothing after the first call.
   */
  hangup(): void;
  /** Sends DTMF digits (0-9, * # A-D, at most 32) as RFC 4733 events; answered SIP calls only. */
  sendDtmf(digits: string): void;

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
