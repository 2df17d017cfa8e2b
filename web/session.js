// The session with an edge over WebSocket (ARCHITECTURE §4, API.md "Client sessions on an
// edge"): JSON text frames, `hello` first, then events, each with the feed cursor to resume from.
//
// Mirrors the Rust SDK (client/src/session.rs): the cursor kept is the newest of every event
// processed (never moving back); a reconnect passes it as `?resume=` and the edge replays what
// was missed after its `hello {resumed: true}`. After `resync` (close 4009) there is nothing
// valid to resume from, so the next connection boots afresh.
//
// Requests (`send`, `query`, `ping`) are matched to their answers by id. A request in flight
// when the connection drops is sent again after the next `hello`: queries are reads, and a
// `send` carries its `client_msg_id`, so the origin answers a repeat with the original `seq`.
// Callers therefore see an answer, an `error` frame, or a timeout — never a dropped socket.

import { sessionUrl } from './boot.js';

/** Frames that are answers to a request, by their `type`. */
const ANSWERS = new Set(['ack', 'result', 'error', 'pong', 'command']);

/** Close codes after which reconnecting cannot help (API.md, the close code table). */
const CLOSE_UNAUTHORIZED = 4001;
const CLOSE_RESYNC = 4009;
const CLOSE_TOO_MANY = 4029;

const REQUEST_TIMEOUT_MS = 20_000;
const HELLO_TIMEOUT_MS = 10_000;
const BACKOFF_MIN_MS = 250;
const BACKOFF_MAX_MS = 4_000;

export class Session {
  /**
   * `handlers`: `hello(hello, {fresh, reconnect})`, `event(frame)`, `state(name)` with one of
   * `connecting`, `connected`, `reconnecting`, `resumed`, and `fatal(message)` when the token
   * is refused (nothing to retry).
   */
  constructor(token, handlers) {
    this.token = token;
    this.handlers = handlers;
    this.ws = null;
    this.cursor = null;
    this.ready = false;
    this.stopped = false;
    this.attempt = 0;
    this.nextId = 1;
    // request id → {frame, resolve, reject, timer, sent: the socket it went out on, or false}
    this.inflight = new Map();
    this.queued = []; // fire-and-forget frames held until the next hello
    this.heartbeatTimer = 0;
    this.reconnectTimer = 0;
    this.resyncPending = false;
    this.everConnected = false;
  }

  /**
   * Connects; or, given the socket boot.js opened before the client loaded (`early`), takes it
   * over with the frames it already received. Its history query becomes a request like any
   * other, answered through `earlyAnswer`.
   */
  start(early) {
    if (early?.query) {
      this.earlyChannel = early.query.channel;
      // Sent on the early socket (by its onopen, if not yet); if that one fails, after `hello`.
      this.earlyAnswer = this.track(early.query, early.ws);
      this.earlyAnswer.catch(() => {}); // a conversation never opened need not be read
    }
    if (!early || early.ws.readyState > WebSocket.OPEN) {
      this.connect('connecting');
      return;
    }
    this.setState('connecting');
    this.attach(early.ws);
    for (const e of early.frames.splice(0)) early.ws.onmessage(e);
  }

  /** The answer to boot.js's history query if it was for `channel`, once; else null. */
  takeEarlyHistory(channel) {
    if (!this.earlyAnswer || this.earlyChannel !== channel) return null;
    const answer = this.earlyAnswer;
    this.earlyAnswer = null;
    return answer;
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.reconnectTimer);
    clearInterval(this.heartbeatTimer);
    this.ws?.close(1000, 'signed out');
  }

  /** Sends a request and resolves with its answer frame, or rejects with the `error` frame. */
  request(frame) {
    const full = { ...frame, id: `r${this.nextId++}` };
    const answer = this.track(full);
    if (this.ready) this.write(full);
    return answer;
  }

  /** Waits for the answer to `frame` (sent, or to be sent after the next `hello`). */
  track(frame, sent = false) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.inflight.delete(frame.id);
        reject({ code: 'timeout', message: 'no answer from the edge in time' });
      }, REQUEST_TIMEOUT_MS);
      this.inflight.set(frame.id, { frame, resolve, reject, timer, sent });
    });
  }

  query(q) {
    return this.request({ type: 'query', ...q });
  }

  /**
   * Sends a frame nobody answers (`mark_read`, `presence_sub`, `set_presence`, `typing`).
   * Held until the next `hello` while disconnected, except `typing`, which is stale by then.
   */
  fire(frame) {
    if (this.ready) this.write(frame);
    else if (frame.type !== 'typing') this.queued.push(frame);
  }

  connect(state) {
    if (this.stopped) return;
    this.setState(state);
    this.attach(new WebSocket(sessionUrl(this.token, this.cursor)));
  }

  attach(ws) {
    this.ws = ws;
    // Requests written on an earlier socket are lost with it: they go again after `hello`.
    for (const pending of this.inflight.values()) {
      if (pending.sent !== ws) pending.sent = false;
    }
    const helloTimer = setTimeout(() => ws.close(4000, 'no hello in time'), HELLO_TIMEOUT_MS);
    ws.onmessage = (e) => {
      if (ws !== this.ws) return;
      let frame;
      try {
        frame = JSON.parse(e.data);
      } catch {
        console.warn('selvage: a frame that is not JSON', e.data);
        return;
      }
      if (frame.type === 'hello') clearTimeout(helloTimer);
      this.receive(frame);
    };
    ws.onclose = (e) => {
      clearTimeout(helloTimer);
      if (ws === this.ws) this.closed(e.code);
    };
  }

  write(frame) {
    if (this.ws?.readyState !== WebSocket.OPEN) return;
    this.ws.send(JSON.stringify(frame));
    const pending = frame.id && this.inflight.get(frame.id);
    if (pending) pending.sent = this.ws;
  }

  receive(frame) {
    this.lastHeard = Date.now();
    if (frame.type === 'hello') return this.greeted(frame);
    if (ANSWERS.has(frame.type) && frame.reply_to !== undefined) return this.answered(frame);
    switch (frame.type) {
      case 'error':
        // An error without a request id: about a frame that has none (`mark_read`…), or about
        // the session itself right before the edge closes it (then the close code decides).
        this.lastError = frame.message;
        console.warn('selvage: session error', frame.code, frame.message);
        return;
      case 'goodbye':
        // The edge is draining: come back after its jittered delay, resuming.
        this.ready = false;
        clearInterval(this.heartbeatTimer);
        this.setState('reconnecting');
        this.ws.onclose = null;
        this.ws.close(1000, 'goodbye');
        this.scheduleReconnect(frame.reconnect_in_ms);
        return;
      case 'resync':
        this.resyncPending = true;
        return;
      default:
        if (frame.cursor && (!this.cursor || frame.cursor > this.cursor)) {
          // Cursors are fixed-width lower-case hex, so string order is feed order.
          this.cursor = frame.cursor;
        }
        this.handlers.event(frame);
    }
  }

  greeted(hello) {
    const fresh = !hello.resumed;
    // Until an event arrives, resume from where this session started: the cursor resumed
    // from, or hello's own when booting afresh (as the SDK does).
    if (fresh || !this.cursor) this.cursor = hello.cursor;
    this.ready = true;
    this.attempt = 0;
    this.startHeartbeat(hello.heartbeat_ms);
    this.setState(fresh ? 'connected' : 'resumed');
    // Requests not written on this socket go now (pings only tested a lost one).
    for (const [id, { frame, sent }] of this.inflight) {
      if (sent) continue;
      if (frame.type === 'ping') this.inflight.delete(id);
      else this.write(frame);
    }
    for (const frame of this.queued.splice(0)) this.write(frame);
    this.handlers.hello(hello, { fresh, reconnect: this.everConnected });
    this.everConnected = true;
  }

  answered(frame) {
    const pending = this.inflight.get(frame.reply_to);
    if (!pending) return;
    this.inflight.delete(frame.reply_to);
    clearTimeout(pending.timer);
    if (frame.type === 'error') pending.reject(frame);
    else pending.resolve(frame);
  }

  refused(message) {
    this.stopped = true;
    this.ready = false;
    this.handlers.fatal(message || 'the token was refused');
  }

  closed(code) {
    this.ready = false;
    clearInterval(this.heartbeatTimer);
    if (this.stopped) return;
    if (code === CLOSE_UNAUTHORIZED) return this.refused(this.lastError || 'the token was refused; sign in again');
    if (code === CLOSE_RESYNC || this.resyncPending) {
      // Nothing valid to resume from: boot afresh at once.
      this.resyncPending = false;
      this.cursor = null;
      this.setState('reconnecting');
      return this.scheduleReconnect(0);
    }
    this.setState(this.everConnected ? 'reconnecting' : 'connecting');
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** this.attempt);
    // Too many connections of this user: retrying at once fails the same way.
    const delay = code === CLOSE_TOO_MANY ? BACKOFF_MAX_MS * 4 : base / 2 + Math.random() * base / 2;
    this.attempt++;
    this.scheduleReconnect(delay);
  }

  scheduleReconnect(delay) {
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = setTimeout(() => this.connect(this.everConnected ? 'reconnecting' : 'connecting'), delay);
  }

  /** Reconnects now instead of waiting out the backoff (the browser came back online). */
  nudge() {
    if (!this.ready && !this.stopped && this.ws?.readyState !== WebSocket.CONNECTING) this.scheduleReconnect(0);
  }

  /**
   * Pings at half the edge's heartbeat; a connection that answers nothing for two pings is
   * taken as dead (a laptop waking up, a silent NAT) and replaced, resuming.
   */
  startHeartbeat(heartbeatMs) {
    clearInterval(this.heartbeatTimer);
    const every = Math.max(1000, (heartbeatMs || 30_000) / 2);
    this.lastHeard = Date.now();
    this.heartbeatTimer = setInterval(() => {
      if (Date.now() - this.lastHeard > every * 2.5) {
        this.ws.close(4000, 'silent connection');
        return;
      }
      this.request({ type: 'ping' }).catch(() => {});
    }, every);
  }

  setState(state) {
    if (state === this.state) return;
    this.state = state;
    this.handlers.state(state);
  }
}
