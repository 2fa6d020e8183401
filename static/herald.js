/*! herald.js — the browser client of Herald (https://github.com/…/herald), MIT licence.
 *
 * One dependency-free file, no build step:
 *   <script src="/herald.js"></script>          defines the global `Herald`
 *   await import("/herald.js")                  defines it too (use `globalThis.Herald`)
 *
 *   const herald = new Herald("/events", { topics: ["doc/42"] });
 *   herald.on("doc.updated", (e) => render(JSON.parse(e.data)));
 *   herald.on("reset", (e) => reload(e.topics));
 *
 * Why not EventSource: it hides status codes and gives up for good on any non-200 answer (a node draining,
 * an expired token), cannot send headers, and cannot change its topics without losing events. This client
 * reads the stream with fetch, parses it itself, owns reconnection (back-off from the server's `retry:`,
 * resuming from the last id delivered), and shares one stream between the tabs of a browser.
 *
 * Sharing between tabs (option `share`, on by default): the tabs of one origin with the same url,
 * withCredentials and shareKey elect one holder with the Web Locks API; the holder reads one stream for the
 * union of every tab's topics (with `tagTopics=1`, so each event names its topics) and relays each event over
 * a BroadcastChannel; every tab keeps its own cursor and delivers only its own topics' events, in id order,
 * each once. A holder that closes or crashes loses its lock and the next tab takes over at once; a frozen
 * holder keeps its lock, so the others watch its heartbeat and steal the lock. The README ("In the browser")
 * describes the protocol and why it can neither lose nor repeat an event.
 */
(function (global) {
  "use strict";

  /** Reconnection delay until the server sends `retry:`, in ms. */
  const DEFAULT_RETRY = 3000;
  /** The longest reconnection delay, in ms. */
  const MAX_DELAY = 30000;
  /** A stream open this long resets the back-off to its start, in ms. */
  const STABLE_AFTER = 30000;
  /** Jitter applied to each delay: ±25 %. */
  const JITTER = 0.25;
  /** How often the holder of a shared stream says it is alive, in ms. */
  const HEARTBEAT_EVERY = 1000;
  /** Silence after which a tab asks whether the holder is still there, in ms. */
  const SUSPECT_AFTER = 2000;
  /** How long the holder has to answer before its lock is stolen, in ms. */
  const PING_WAIT = 800;
  /** How often a tab checks the holder's heartbeat, in ms. */
  const CHECK_EVERY = 250;
  /** How long a new holder waits for the other tabs to report their topics and cursors, in ms. */
  const CLAIM_WAIT = 150;
  /** How long topic changes are gathered before the holder reconnects, in ms. */
  const SETTLE_DELAY = 30;
  /** How often the holder looks for tabs that went away without saying so, in ms. */
  const MEMBER_CHECK_EVERY = 2000;
  /** Answers that end a stream for good (401 only without getToken). */
  const FINAL_STATUSES = [400, 403, 404];

  // ----------------------------------------------------------------------------------------------------
  // Ids and topics
  // ----------------------------------------------------------------------------------------------------

  /** Herald's ids are `<ms>-<seq>`; compares two of them (null before everything). */
  function compareIds(a, b) {
    if (a === b) return 0;
    if (a == null) return -1;
    if (b == null) return 1;
    const [am, as] = splitId(a);
    const [bm, bs] = splitId(b);
    return am !== bm ? (am < bm ? -1 : 1) : as === bs ? 0 : as < bs ? -1 : 1;
  }

  function splitId(id) {
    const dash = id.indexOf("-");
    return dash < 0 ? [Number(id) || 0, 0] : [Number(id.slice(0, dash)) || 0, Number(id.slice(dash + 1)) || 0];
  }

  function laterId(a, b) {
    return compareIds(a, b) >= 0 ? a : b;
  }

  function earlierId(a, b) {
    if (a == null) return b;
    if (b == null) return a;
    return compareIds(a, b) <= 0 ? a : b;
  }

  /** Topics from strings, comma-separated strings and arrays of them: trimmed, distinct, in order. */
  function topicList(args) {
    const out = [];
    const add = (value) => {
      if (value == null) return;
      if (Array.isArray(value)) return value.forEach(add);
      for (const part of String(value).split(",")) {
        const topic = part.trim();
        if (topic && !out.includes(topic)) out.push(topic);
      }
    };
    add(args);
    return out;
  }

  function sameSet(a, b) {
    return a.length === b.length && a.every((t) => b.includes(t));
  }

  function within(topics, set) {
    return topics.every((t) => set.includes(t));
  }

  function randomId() {
    if (global.crypto && typeof global.crypto.randomUUID === "function") return global.crypto.randomUUID();
    return Math.random().toString(36).slice(2) + Date.now().toString(36);
  }

  /** Back-off: `base × 2^attempt`, ±25 % jitter, at most 30 s. */
  function backoff(base, attempt) {
    const raw = base * Math.pow(2, Math.min(attempt, 16));
    const jittered = raw * (1 - JITTER + Math.random() * 2 * JITTER);
    return Math.min(MAX_DELAY, Math.max(0, Math.round(jittered)));
  }

  // ----------------------------------------------------------------------------------------------------
  // The event-stream parser (WHATWG HTML, "event stream interpretation"), plus Herald's `topics:` field
  // ----------------------------------------------------------------------------------------------------

  class Parser {
    constructor(sink) {
      this.sink = sink; // { event(e), retry(ms), comment(text), blank() }
      this.buffer = "";
      this.afterCR = false;
      this.reset();
    }

    reset() {
      this.data = "";
      this.hasData = false;
      this.type = "";
      this.id = null;
      this.topics = null;
    }

    feed(text) {
      let start = 0;
      for (let i = 0; i < text.length; i++) {
        const c = text.charCodeAt(i);
        if (c === 10 && this.afterCR) {
          // The LF of a CRLF whose CR ended the previous line.
          this.afterCR = false;
          start = i + 1;
          continue;
        }
        this.afterCR = false;
        if (c === 10 || c === 13) {
          this.line(this.buffer + text.slice(start, i));
          this.buffer = "";
          start = i + 1;
          this.afterCR = c === 13;
        }
      }
      this.buffer += text.slice(start);
    }

    line(line) {
      if (line === "") return this.dispatch();
      if (line.charCodeAt(0) === 58) return this.sink.comment(line.slice(1).replace(/^ /, ""));
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.charCodeAt(0) === 32) value = value.slice(1);
      switch (field) {
        case "data":
          this.data += value + "\n";
          this.hasData = true;
          break;
        case "event":
          this.type = value;
          break;
        case "id":
          if (!value.includes("\0")) this.id = value;
          break;
        case "topics":
          this.topics = value === "" ? [] : value.split(",");
          break;
        case "retry":
          if (/^\d+$/.test(value)) this.sink.retry(Number(value));
          break;
        default:
      }
    }

    dispatch() {
      if (!this.hasData) {
        this.reset();
        return this.sink.blank();
      }
      const event = {
        id: this.id,
        type: this.type || "message",
        data: this.data.slice(0, -1),
        topics: this.topics,
      };
      this.reset();
      this.sink.event(event);
    }
  }

  // ----------------------------------------------------------------------------------------------------
  // One HTTP request reading one event stream
  // ----------------------------------------------------------------------------------------------------

  /** What ended a connection. */
  class Outcome {
    constructor(kind, fields) {
      this.kind = kind; // "ended" | "network" | "http" | "aborted"
      Object.assign(this, fields);
    }
  }

  class Connection {
    /**
     * @param options {url, topics, lastEventId, token, withCredentials}
     * @param sink {response(), live(position), event(e), retry(ms)}
     */
    constructor(options, sink) {
      this.options = options;
      this.sink = sink;
      this.controller = new AbortController();
      this.opened = false;
    }

    abort() {
      this.controller.abort();
    }

    url() {
      const base = global.location ? global.location.href : undefined;
      const url = new URL(this.options.url, base);
      url.searchParams.delete("topics");
      url.searchParams.set("topics", this.options.topics.join(","));
      url.searchParams.set("tagTopics", "1");
      return url;
    }

    async run() {
      const headers = { Accept: "text/event-stream" };
      if (this.options.lastEventId != null) headers["Last-Event-ID"] = this.options.lastEventId;
      if (this.options.token) headers.Authorization = "Bearer " + this.options.token;
      let response;
      try {
        response = await fetch(this.url(), {
          headers,
          credentials: this.options.withCredentials ? "include" : "same-origin",
          cache: "no-store",
          signal: this.controller.signal,
        });
      } catch (error) {
        return new Outcome(this.controller.signal.aborted ? "aborted" : "network", { error });
      }
      if (!response.ok) {
        let body = null;
        try {
          body = await response.json();
        } catch (_) {
          // Not Herald's JSON (a proxy's page): the status says enough.
        }
        const error = (body && body.error) || { code: "http_" + response.status, message: response.statusText };
        return new Outcome("http", { status: response.status, error, retryAfter: response.headers.get("Retry-After") });
      }
      const type = response.headers.get("Content-Type") || "";
      if (!type.toLowerCase().startsWith("text/event-stream") || !response.body) {
        try {
          await response.body.cancel();
        } catch (_) {
          // Already gone.
        }
        return new Outcome("network", { error: new Error("not an event stream: " + type) });
      }
      this.opened = true;
      this.sink.response();
      let live = false;
      let position = null;
      // Once aborted (the topics changed), nothing more of this stream is delivered: the next connection
      // resumes from the cursor as it stood when the change was made.
      const aborted = () => this.controller.signal.aborted;
      const goLive = () => {
        if (!live && !aborted()) {
          live = true;
          this.sink.live(position);
        }
      };
      const parser = new Parser({
        comment: (text) => {
          const m = /^live (\S+)$/.exec(text);
          if (m && !live) position = m[1];
        },
        blank: goLive,
        retry: (ms) => this.sink.retry(ms),
        event: (event) => {
          if (aborted()) return;
          goLive();
          this.sink.event(event);
        },
      });
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      try {
        for (;;) {
          const { done, value } = await reader.read();
          if (done) break;
          parser.feed(decoder.decode(value, { stream: true }));
        }
        return new Outcome("ended", {});
      } catch (error) {
        return new Outcome(this.controller.signal.aborted ? "aborted" : "network", { error });
      } finally {
        try {
          reader.releaseLock();
        } catch (_) {
          // Nothing to release.
        }
      }
    }
  }

  // ----------------------------------------------------------------------------------------------------
  // The reconnection loop: one connection at a time, back-off, final answers
  // ----------------------------------------------------------------------------------------------------

  class Driver {
    /**
     * @param herald the Herald whose url, withCredentials and getToken are used
     * @param hooks {params() -> {topics, lastEventId} | null, response(), live(position, params), event(e),
     *              connecting(), retrying(info), final(outcome)}
     */
    constructor(herald, hooks) {
      this.herald = herald;
      this.hooks = hooks;
      this.base = DEFAULT_RETRY;
      this.attempt = 0;
      this.stopped = false;
      this.running = false;
      this.connection = null;
      this.wake = null;
      this.restartNow = false;
    }

    /** Starts the loop, or reconnects at once (topics changed) when it runs. */
    kick() {
      if (this.stopped) return;
      if (!this.running) {
        this.running = true;
        this.loop().catch((error) => setTimeout(() => { throw error; }));
        return;
      }
      if (this.connection) {
        this.restartNow = true;
        this.connection.abort();
      } else if (this.idle && this.wake) {
        this.wake();
      }
    }

    /** Ends the current delay early (the browser came back online). */
    hurry() {
      if (this.wake && !this.idle) this.wake();
    }

    stop() {
      this.stopped = true;
      if (this.connection) this.connection.abort();
      if (this.wake) this.wake();
    }

    sleep(ms, idle) {
      return new Promise((resolve) => {
        const timer = ms == null ? null : setTimeout(done, ms);
        const self = this;
        function done() {
          clearTimeout(timer);
          self.wake = null;
          self.idle = false;
          resolve();
        }
        this.idle = idle;
        this.wake = done;
      });
    }

    async loop() {
      while (!this.stopped) {
        if (!this.hooks.params()) {
          // Nothing to subscribe to: wait for topics.
          await this.sleep(null, true);
          continue;
        }
        let token = null;
        if (this.herald.getToken) {
          try {
            token = await this.herald.getToken();
          } catch (error) {
            if (this.stopped) return;
            await this.delay(new Outcome("network", { error }));
            continue;
          }
          if (this.stopped) return;
        }
        // Read after the token: topics may have changed meanwhile.
        const params = this.hooks.params();
        if (!params) continue;
        const connection = new Connection(
          {
            url: this.herald.url,
            topics: params.topics,
            lastEventId: params.lastEventId,
            token,
            withCredentials: this.herald.withCredentials,
          },
          {
            response: () => this.hooks.response(),
            live: (position) => this.hooks.live(position, params),
            event: (event) => this.hooks.event(event, params),
            retry: (ms) => {
              this.base = ms;
            },
          },
        );
        this.connection = connection;
        const started = Date.now();
        const outcome = await connection.run();
        this.connection = null;
        if (this.stopped) return;
        if (connection.opened && Date.now() - started >= STABLE_AFTER) this.attempt = 0;
        if (outcome.kind === "aborted" && this.restartNow) {
          this.restartNow = false;
          continue;
        }
        this.restartNow = false;
        if (outcome.kind === "http" && this.isFinal(outcome.status)) {
          this.running = false;
          this.hooks.final(outcome);
          return;
        }
        await this.delay(outcome);
      }
    }

    isFinal(status) {
      return FINAL_STATUSES.includes(status) || (status === 401 && !this.herald.getToken);
    }

    async delay(outcome) {
      let ms = backoff(this.base, this.attempt++);
      if (outcome.status === 429 && outcome.retryAfter) {
        const seconds = Number(outcome.retryAfter);
        const until = Number.isFinite(seconds) ? seconds * 1000 : Date.parse(outcome.retryAfter) - Date.now();
        if (until > ms) ms = Math.min(until, 10 * MAX_DELAY);
      }
      this.hooks.connecting();
      this.hooks.retrying({ delay: ms, status: outcome.status || 0, error: outcome.error || null });
      await this.sleep(ms, false);
    }
  }

  // ----------------------------------------------------------------------------------------------------
  // Herald: the dispatcher, one tab's view
  // ----------------------------------------------------------------------------------------------------

  class Herald {
    /**
     * @param url the `/events` endpoint, relative or absolute
     * @param options {topics, lastEventId, withCredentials, getToken, share = true, shareKey}
     */
    constructor(url, options) {
      options = options || {};
      this.url = String(url || "/events");
      this.withCredentials = !!options.withCredentials;
      this.getToken = typeof options.getToken === "function" ? options.getToken : null;
      this._topics = topicList(options.topics);
      this._cursor = options.lastEventId != null && options.lastEventId !== "" ? String(options.lastEventId) : null;
      this._listeners = new Map();
      this._state = "connecting";
      this._role = "solo";
      this._closed = false;
      this._onOnline = () => this._driver && this._driver.hurry();
      if (global.addEventListener) global.addEventListener("online", this._onOnline);
      const canShare =
        options.share !== false &&
        typeof global.BroadcastChannel === "function" &&
        global.navigator &&
        global.navigator.locks &&
        typeof global.navigator.locks.request === "function";
      if (canShare) {
        this._share = new Share(this, options.shareKey == null ? "" : String(options.shareKey));
      } else {
        this._startSolo();
      }
    }

    /** `connecting`, `open` or `closed`. */
    get state() {
      return this._state;
    }

    /** The topics this client is subscribed to. */
    get topics() {
      return this._topics.slice();
    }

    /** The id of the newest event this client has seen: where it resumes from. */
    get lastEventId() {
      return this._cursor;
    }

    /** `solo` (a stream of its own), `holder` (holds the shared stream) or `follower` (rides it). */
    get role() {
      return this._role;
    }

    on(type, fn) {
      return this._listen(type, fn, false);
    }

    once(type, fn) {
      return this._listen(type, fn, true);
    }

    /** Removes `fn` from `type`; without `fn`, every listener of `type`; without arguments, all of them. */
    off(type, fn) {
      if (type === undefined) {
        this._listeners.clear();
        return this;
      }
      const list = this._listeners.get(type);
      if (!list) return this;
      const kept = fn === undefined ? [] : list.filter((l) => l.fn !== fn);
      if (kept.length) this._listeners.set(type, kept);
      else this._listeners.delete(type);
      return this;
    }

    /** Adds topics; events of the topics already subscribed are neither lost nor repeated. */
    subscribe(...topics) {
      const next = this._topics.concat(topicList(topics).filter((t) => !this._topics.includes(t)));
      this._setTopics(next);
      return this;
    }

    /** Removes topics; nothing of them is delivered once this returns. */
    unsubscribe(...topics) {
      const gone = topicList(topics);
      this._setTopics(this._topics.filter((t) => !gone.includes(t)));
      return this;
    }

    /** Ends this client for good. */
    close() {
      if (this._closed) return;
      this._closed = true;
      if (global.removeEventListener) global.removeEventListener("online", this._onOnline);
      if (this._driver) this._driver.stop();
      if (this._share) this._share.close();
      this._setState("closed");
    }

    // -- internals ------------------------------------------------------------------------------------

    _listen(type, fn, once) {
      if (typeof fn !== "function") throw new TypeError(`${once ? "once" : "on"}(type, fn): fn must be a function`);
      const list = this._listeners.get(type) || [];
      list.push({ fn, once });
      this._listeners.set(type, list);
      return this;
    }

    _setTopics(next) {
      if (this._closed || sameSet(next, this._topics)) return;
      this._topics = next;
      if (this._share) this._share.topicsChanged();
      else if (this._driver) this._driver.kick();
    }

    _emit(type, event) {
      const list = this._listeners.get(type);
      if (!list) return;
      for (const listener of list.slice()) {
        if (listener.once) this.off(type, listener.fn);
        try {
          listener.fn.call(this, event);
        } catch (error) {
          setTimeout(() => {
            throw error;
          });
        }
      }
    }

    _setState(state) {
      if (state === this._state || (this._closed && state !== "closed")) return;
      const previous = this._state;
      this._state = state;
      this._emit("statechange", { type: "statechange", state, previous });
    }

    _setRole(role) {
      if (role === this._role) return;
      const previous = this._role;
      this._role = role;
      this._emit("rolechange", { type: "rolechange", role, previous });
    }

    /** Delivers one event of the stream if it is new to this client and on one of its topics. */
    _deliver(event) {
      if (this._closed) return;
      if (event.id != null) {
        if (this._cursor != null && compareIds(event.id, this._cursor) <= 0) return;
        this._cursor = event.id;
      }
      const topics = event.topics ? event.topics.filter((t) => this._topics.includes(t)) : this._topics.slice();
      if (event.topics && !topics.length) return;
      if (event.type === "herald.reset") return this._reset(event.data, topics);
      this._emit(event.type, {
        type: event.type,
        data: event.data,
        lastEventId: event.id == null ? "" : event.id,
        topics,
      });
    }

    _reset(data, fallbackTopics) {
      let parsed = {};
      try {
        parsed = JSON.parse(data);
      } catch (_) {
        // A reset whose data is not Herald's JSON: everything is suspect.
      }
      const named = Array.isArray(parsed.topics) ? parsed.topics : fallbackTopics;
      const topics = named.filter((t) => this._topics.includes(t));
      if (!topics.length) return;
      this._emit("reset", { type: "reset", topics, reason: String(parsed.reason || "unknown") });
    }

    _fail(outcome) {
      const error = outcome.error || {};
      this._emit("error", {
        type: "error",
        status: outcome.status || 0,
        code: error.code || "error",
        message: error.message || "the stream was refused",
        error,
      });
      this.close();
    }

    _startSolo() {
      this._setRole("solo");
      this._driver = new Driver(this, {
        params: () => (this._topics.length ? { topics: this._topics.slice(), lastEventId: this._cursor } : null),
        response: () => this._setState("open"),
        live: (position) => {
          // A stream opened without an id is live from `position`: older events are not owed to this client,
          // and resuming from there after a drop loses nothing.
          if (this._cursor == null && position != null) this._cursor = position;
        },
        event: (event) => this._deliver(event),
        connecting: () => this._setState("connecting"),
        retrying: (info) => this._emit("retrying", Object.assign({ type: "retrying" }, info)),
        final: (outcome) => this._fail(outcome),
      });
      this._driver.kick();
    }
  }

  // ----------------------------------------------------------------------------------------------------
  // Sharing one stream between tabs
  // ----------------------------------------------------------------------------------------------------
  //
  // Messages on the channel (all carry `from`, the sender's member id):
  //   here   {topics, cursor, cov}        a member's topics and cursor; sent on start, on change, on claim
  //   leave  {}                           a member closed
  //   claim  {term}                       a tab was granted the lock and now holds the stream
  //   hb     {term, state}                the holder is alive; its stream's state
  //   ping   {}                           "holder, are you there?" (answered with hb)
  //   open   {term, gen, topics, from}    the holder's stream `gen` is live for `topics`, from id `from`
  //   ev     {term, gen, event}           one event of stream `gen`
  //   state  {term, state}                the holder's stream is `connecting` or `open`
  //   err    {term, to, outcome, solo}    a member's topics were refused (`solo`: it should stream alone)
  //   resign {term}                       the holder stopped holding
  //
  // A member delivers events of stream `gen` only while that stream covers it: every topic of the member is
  // in the stream's topics, and the stream started at or before the member's cursor. Then the member has
  // every event after its cursor, and "drop ids not greater than the cursor" removes what it saw before.

  class Share {
    constructor(herald, shareKey) {
      this.herald = herald;
      this.id = randomId();
      const url = new URL(herald.url, global.location ? global.location.href : undefined).href;
      this.name = "herald|" + url + "|" + (herald.withCredentials ? "c" : "-") + "|" + shareKey;
      this.channel = new BroadcastChannel(this.name);
      this.channel.onmessage = (e) => this.receive(e.data);
      this.members = new Map(); // id -> {topics, cursor, cov, fresh}
      this.term = 0; // the highest term seen
      this.holderId = null; // who holds that term, when known
      this.holderState = "connecting";
      this.lastHeard = Date.now();
      this.pingAt = 0;
      this.cov = null; // {term, holder, gen} of the stream that covers this member
      this.hold = null; // the holder's state, while this tab holds the stream
      this.lockRequest = 0;
      this.closed = false;
      this.solo = false;
      this.checkTimer = setInterval(() => this.check(), CHECK_EVERY);
      this.onPageHide = () => this.announceLeave();
      this.onPageShow = (e) => e.persisted && this.announce();
      if (global.addEventListener) {
        global.addEventListener("pagehide", this.onPageHide);
        global.addEventListener("pageshow", this.onPageShow);
      }
      herald._setRole("follower");
      // The member lock is held for this member's lifetime: the holder sees which members are gone.
      this.memberLockName = this.name + "|member|" + this.id;
      global.navigator.locks
        .request(this.memberLockName, () => new Promise((resolve) => (this.releaseMemberLock = resolve)))
        .catch(() => {});
      this.announce();
      this.queue();
    }

    // -- this tab as a member ---------------------------------------------------------------------------

    post(message) {
      message.from = this.id;
      if (this.closed) return;
      try {
        this.channel.postMessage(message);
      } catch (_) {
        // The channel is closed (the page is going away).
      }
      this.receive(message);
    }

    announce() {
      this.post({ t: "here", topics: this.herald._topics.slice(), cursor: this.herald._cursor, cov: this.cov });
    }

    announceLeave() {
      if (!this.closed) this.post({ t: "leave" });
    }

    topicsChanged() {
      if (this.solo) return;
      // Until the holder's stream carries the new set, this member is not covered: it delivers nothing and
      // the holder resumes a stream from this member's cursor, so nothing is lost in between.
      if (this.cov && !within(this.herald._topics, this.streamTopics || [])) this.cov = null;
      this.announce();
      this.updateState();
    }

    updateState() {
      if (this.solo || this.closed) return;
      const open = this.holderState === "open" && (this.cov !== null || !this.herald._topics.length);
      this.herald._setState(open ? "open" : "connecting");
    }

    /**
     * Whether a message from a holder comes from the one this tab follows. Terms rise with every new holder;
     * a message of an older term comes from a holder that lost its lock (it may have been frozen) and is
     * ignored. Of two claims with the same term the later one wins: it was granted the lock later.
     */
    fromHolder(m) {
      if (m.term < this.term) return false;
      if (m.t === "claim") {
        if (m.term > this.term || m.from !== this.holderId) this.adopt(m.term, m.from);
        return true;
      }
      if (m.term > this.term || (this.holderId === null && m.t !== "resign")) this.adopt(m.term, m.from);
      return m.from === this.holderId;
    }

    adopt(term, holder) {
      if (term === this.term && holder === this.holderId) return;
      this.term = term;
      this.holderId = holder;
      if (this.hold && holder !== this.id) this.stepDown();
      this.cov = null;
      this.streamTopics = null;
      this.holderState = "connecting";
      this.updateState();
      if (holder !== this.id) this.announce();
    }

    receive(m) {
      if (this.closed || this.solo || !m || typeof m !== "object") return;
      switch (m.t) {
        case "here":
          this.members.set(m.from, { topics: m.topics, cursor: m.cursor, cov: m.cov, fresh: true });
          if (this.hold) this.hold.changed();
          return;
        case "leave":
          this.members.delete(m.from);
          if (this.hold) this.hold.changed();
          return;
        case "ping":
          if (this.hold) this.post({ t: "hb", term: this.hold.term, state: this.hold.state });
          return;
        case "claim":
        case "hb":
        case "state":
        case "open":
        case "ev":
        case "err":
        case "resign":
          break;
        default:
          return;
      }
      if (!this.fromHolder(m)) return;
      this.lastHeard = Date.now();
      this.pingAt = 0;
      switch (m.t) {
        case "hb":
        case "state":
          this.holderState = m.state;
          this.updateState();
          return;
        case "resign":
          this.holderId = null;
          this.cov = null;
          this.holderState = "connecting";
          this.updateState();
          return;
        case "open": {
          const mine = this.herald._topics;
          const cursor = this.herald._cursor;
          this.streamTopics = m.topics;
          const wasCovered = this.cov;
          if (within(mine, m.topics) && (cursor == null || (m.from != null && compareIds(m.from, cursor) <= 0))) {
            this.cov = { term: m.term, gen: m.gen };
            if (cursor == null && m.from != null) this.herald._cursor = m.from;
          } else {
            this.cov = null;
          }
          this.holderState = "open";
          this.updateState();
          if (!wasCovered || !this.cov || wasCovered.gen !== this.cov.gen) this.announce();
          return;
        }
        case "ev":
          if (this.cov && this.cov.term === m.term && this.cov.gen === m.gen) this.herald._deliver(m.event);
          return;
        case "err":
          if (m.to !== this.id && m.to !== "*") return;
          if (m.solo) return this.goSolo();
          return this.herald._fail(m.outcome);
        default:
      }
    }

    /** Watches the holder: a silent holder is asked, then its lock is stolen. */
    check() {
      if (this.closed || this.solo || this.hold) return;
      // A tab that waits for the lock and hears no holder: the lock is held by a tab that says nothing (frozen).
      const now = Date.now();
      if (now - this.lastHeard < SUSPECT_AFTER) return;
      if (!this.pingAt) {
        this.pingAt = now;
        this.post({ t: "ping" });
        return;
      }
      if (now - this.pingAt < PING_WAIT) return;
      this.pingAt = 0;
      this.lastHeard = now;
      this.queue(true);
    }

    /** Waits for the lock (or takes it, `steal`); holding it makes this tab the holder. */
    queue(steal) {
      if (this.closed || this.solo) return;
      if (this.lockAbort) this.lockAbort.abort();
      const request = ++this.lockRequest;
      const abort = new AbortController();
      this.lockAbort = steal ? null : abort;
      const options = steal ? { steal: true } : { signal: abort.signal };
      global.navigator.locks
        .request(this.name, options, () => {
          if (request !== this.lockRequest || this.closed || this.solo) return undefined;
          return new Promise((release) => this.becomeHolder(release, request));
        })
        .then(
          () => this.lockEnded(request),
          () => this.lockEnded(request),
        );
    }

    /** The lock was released or stolen: stop holding (if this tab still thinks it does) and wait again. */
    lockEnded(request) {
      if (this.hold && this.hold.request === request) this.stepDown();
      if (request === this.lockRequest && !this.closed && !this.solo) this.queue(false);
    }

    becomeHolder(release, request) {
      if (this.closed || this.solo) return release();
      this.hold = new Hold(this, release, request, this.term + 1);
      this.herald._setRole("holder");
      this.adopt(this.hold.term, this.id);
      this.post({ t: "claim", term: this.hold.term });
      this.hold.start();
    }

    stepDown() {
      const hold = this.hold;
      if (!hold) return;
      this.hold = null;
      hold.stop();
      this.herald._setRole(this.solo ? "solo" : "follower");
      if (!this.closed) {
        this.post({ t: "resign", term: hold.term });
        if (this.cov && this.cov.term === hold.term) this.cov = null;
      }
    }

    goSolo() {
      if (this.solo) return;
      this.stepDown();
      this.solo = true;
      this.announceLeave();
      this.shutdown();
      this.herald._share = null;
      this.herald._startSolo();
    }

    close() {
      if (this.closed) return;
      this.announceLeave();
      this.stepDown();
      this.shutdown();
    }

    shutdown() {
      this.closed = true;
      clearInterval(this.checkTimer);
      if (global.removeEventListener) {
        global.removeEventListener("pagehide", this.onPageHide);
        global.removeEventListener("pageshow", this.onPageShow);
      }
      if (this.lockAbort) this.lockAbort.abort();
      this.lockRequest++;
      if (this.releaseMemberLock) this.releaseMemberLock();
      try {
        this.channel.close();
      } catch (_) {
        // Already closed.
      }
    }
  }

  /** The holder's side: one stream for the union of the members' topics, relayed to every tab. */
  class Hold {
    constructor(share, release, request, term) {
      this.share = share;
      this.release = release;
      this.request = request;
      this.term = term;
      this.gen = 0;
      this.state = "connecting";
      this.stream = null; // {gen, topics, from} of the stream now open
      this.cursor = null; // the newest id relayed on this holder's streams
      this.excluded = new Set();
      this.timer = null;
      this.settle = null;
      this.probing = false;
      this.joinOrder = [];
    }

    start() {
      const share = this.share;
      // Members answer the claim with their topics and cursors; wait for them briefly so that the first
      // stream already asks for everything.
      for (const member of share.members.values()) member.fresh = false;
      this.cursor = share.herald._cursor;
      this.timer = setInterval(() => this.beat(), HEARTBEAT_EVERY);
      this.memberTimer = setInterval(() => this.checkMembers(), MEMBER_CHECK_EVERY);
      setTimeout(() => {
        if (share.hold !== this) return;
        this.driver = new Driver(share.herald, {
          params: () => this.params(),
          response: () => this.setState("open"),
          live: (position, params) => this.live(position, params),
          event: (event, params) => this.relay(event, params),
          connecting: () => this.setState("connecting"),
          retrying: (info) => share.herald._emit("retrying", Object.assign({ type: "retrying" }, info)),
          final: (outcome) => this.refused(outcome),
        });
        this.driver.kick();
      }, CLAIM_WAIT);
    }

    stop() {
      clearInterval(this.timer);
      clearInterval(this.memberTimer);
      clearTimeout(this.settle);
      if (this.driver) this.driver.stop();
      this.release();
    }

    beat() {
      this.share.post({ t: "hb", term: this.term, state: this.state });
    }

    setState(state) {
      if (state === this.state) return;
      this.state = state;
      this.share.post({ t: "state", term: this.term, state });
    }

    /** Members whose member lock is gone closed or crashed without saying so. */
    checkMembers() {
      const share = this.share;
      global.navigator.locks.query().then((snapshot) => {
        if (share.hold !== this) return;
        const held = new Set(snapshot.held.map((l) => l.name));
        let gone = false;
        for (const id of share.members.keys()) {
          if (id !== share.id && !held.has(share.name + "|member|" + id)) {
            share.members.delete(id);
            gone = true;
          }
        }
        if (gone) this.changed();
      }, () => {});
    }

    /** The members this holder streams for. */
    active() {
      const out = [];
      for (const [id, member] of this.share.members) {
        if (!this.excluded.has(id) && member.topics && member.topics.length) out.push([id, member]);
      }
      return out;
    }

    union() {
      const topics = [];
      for (const [, member] of this.active()) for (const t of member.topics) if (!topics.includes(t)) topics.push(t);
      return topics.sort();
    }

    /**
     * A member's topics or cursor changed: decide, once the changes settle, whether the stream still serves
     * everyone. A member this holder's stream does not cover yet either needs events older than what was
     * relayed (reconnect from its cursor) or only needs to be told where the stream stands (a new `open`
     * with the newest id relayed: the member takes every event after it, relayed after this message).
     */
    changed() {
      if (!this.driver || this.probing) return;
      clearTimeout(this.settle);
      this.settle = setTimeout(() => {
        if (this.share.hold !== this || !this.driver) return;
        const stream = this.stream;
        if (!stream || !sameSet(this.union(), stream.topics)) return this.driver.kick();
        const at = this.cursor != null ? this.cursor : stream.from;
        let tell = false;
        for (const [, member] of this.active()) {
          if (member.cov && member.cov.term === this.term && within(member.topics, stream.topics)) continue;
          if (member.cursor == null || (at != null && compareIds(member.cursor, at) >= 0)) tell = true;
          else return this.driver.kick();
        }
        if (tell && this.state === "open") {
          this.share.post({ t: "open", term: this.term, gen: stream.gen, topics: stream.topics, from: at });
        }
      }, SETTLE_DELAY);
    }

    /** What the next connection asks for: the union of topics, from the oldest cursor any member needs. */
    params() {
      const topics = this.union();
      if (!topics.length) return null;
      let from = this.cursor;
      for (const [id, member] of this.active()) {
        const fresh = member.fresh || id === this.share.id;
        const covered =
          member.cov && member.cov.term === this.term && this.stream && within(member.topics, this.stream.topics);
        if (!covered && fresh && member.cursor != null) from = earlierId(from, member.cursor);
      }
      return { topics, lastEventId: from };
    }

    live(position, params) {
      this.gen += 1;
      const from = params.lastEventId != null ? params.lastEventId : position;
      this.stream = { gen: this.gen, topics: params.topics, from };
      if (this.cursor == null) this.cursor = from;
      this.share.post({ t: "open", term: this.term, gen: this.gen, topics: params.topics, from });
    }

    relay(event) {
      if (!this.stream) return;
      if (event.id != null) this.cursor = laterId(this.cursor, event.id);
      this.share.post({ t: "ev", term: this.term, gen: this.stream.gen, event });
    }

    /** The union was refused for good: find whose topics, tell them, and stream for the others. */
    async refused(outcome) {
      const share = this.share;
      const status = outcome.status;
      if (status !== 400 && status !== 403) {
        // The endpoint itself (404) or the holder's credentials (401): the same for every tab.
        share.post({ t: "err", term: this.term, to: "*", outcome: plain(outcome) });
        return;
      }
      this.probing = true;
      const culprits = [];
      for (const [id, member] of this.active()) {
        const answer = await this.probe(member.topics);
        if (share.hold !== this) return;
        if (answer && answer.kind === "http" && (answer.status === 400 || answer.status === 403)) {
          culprits.push(id);
          this.excluded.add(id);
          share.post({ t: "err", term: this.term, to: id, outcome: plain(answer) });
        }
      }
      if (!culprits.length && outcome.error && outcome.error.code === "too_many_topics") {
        // Every tab is fine alone but the union is too large: the newest member streams alone.
        const members = this.active();
        const newest = members.length > 1 ? members[members.length - 1][0] : null;
        if (newest && newest !== share.id) {
          this.excluded.add(newest);
          share.post({ t: "err", term: this.term, to: newest, solo: true, outcome: plain(outcome) });
          culprits.push(newest);
        }
      }
      this.probing = false;
      if (!culprits.length) {
        share.post({ t: "err", term: this.term, to: "*", outcome: plain(outcome) });
        return;
      }
      if (share.hold !== this || share.closed) return;
      // Stream again for everyone else.
      this.driver = new Driver(share.herald, this.driver.hooks);
      this.driver.kick();
    }

    /** Asks the server whether `topics` alone would be accepted, closing the stream at once. */
    async probe(topics) {
      let token = null;
      if (this.share.herald.getToken) {
        try {
          token = await this.share.herald.getToken();
        } catch (_) {
          return null;
        }
      }
      const connection = new Connection(
        { url: this.share.herald.url, topics, lastEventId: null, token, withCredentials: this.share.herald.withCredentials },
        { response: () => connection.abort(), live() {}, event() {}, retry() {} },
      );
      return connection.run();
    }
  }

  function plain(outcome) {
    return { kind: outcome.kind, status: outcome.status, error: outcome.error };
  }

  Herald.version = "1";
  Herald.compareIds = compareIds;
  Herald.Parser = Parser;

  global.Herald = Herald;
  if (typeof module === "object" && module && module.exports) module.exports = Herald;
})(typeof globalThis !== "undefined" ? globalThis : this);
