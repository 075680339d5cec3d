// A fault-injecting TCP proxy for the browser tests: it sits between the browser and the
// server, or between the browser and the bucket, forwards bytes both ways, and on
// command breaks the connections the way real networks do:
//
//   reset     a connection is reset (RST) in the middle of a request body: a part upload
//             cut off halfway
//   lostReply a connection is reset just as the answer starts: the request was handled,
//             the client never hears so (and must retry something that already happened)
//   stall     a connection stops moving bytes for a few seconds, both ways, then goes on
//   drop      a new connection is reset as soon as it is accepted
//   offline   for N seconds nothing gets through: "refuse" closes the listening socket and
//             resets every open connection (connections are refused); "blackhole" accepts
//             but moves no byte on any connection until the stretch ends (then they go
//             on, as TCP does when a route comes back)
//
// Faults are spaced by the bytes and connections that pass, with gaps drawn from a seeded
// generator, so a run injects a predictable number of them and can be replayed; every
// fault injected is counted in `counts`. Loopback only.
import net from "node:net";
import { once } from "node:events";

/** A small seeded generator (mulberry32): the same seed gives the same faults. */
export function seededRandom(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const MIB = 1024 * 1024;

/**
 * What to inject, all off by default. Byte gaps count request bytes (browser to
 * upstream) over all connections; a `[min, max]` range is drawn from uniformly.
 */
export const NO_FAULTS = Object.freeze({
  /** Reset the connection carrying the request byte at every gap of this many bytes. */
  resetEveryBytes: null,
  /** Stall the connection carrying the request byte at every gap of this many bytes. */
  stallEveryBytes: null,
  /** How long a stall lasts, in milliseconds. */
  stallMs: [2_000, 5_000],
  /** Reset every Nth new connection at once (N drawn from the range). */
  dropEveryConnections: null,
  /** Reset every Nth answer as it starts (N drawn from the range). */
  lostReplyEveryAnswers: null,
  /** Forward at most this many request bytes per second per connection (a slow uplink). */
  uplinkBytesPerSecond: null,
});

export class FaultProxy {
  /**
   * @param {string} name what the proxy stands in front of, for messages
   * @param {number} seed the generator's seed
   */
  constructor(name, seed = 1) {
    this.name = name;
    this.random = seededRandom(seed);
    this.target = null;
    this.port = 0;
    this.faults = { ...NO_FAULTS };
    this.counts = { connections: 0, resets: 0, lostReplies: 0, stalls: 0, drops: 0, refusedStretches: 0, blackholeStretches: 0, offlineMs: 0, bytesUp: 0, bytesDown: 0 };
    this.conns = new Set();
    this.blackholeUntil = 0;
    this.refusing = false;
    this.server = net.createServer((socket) => this.accept(socket));
    this.nextReset = Infinity;
    this.nextStall = Infinity;
    this.nextDrop = Infinity;
    this.nextLostReply = Infinity;
    this.answers = 0;
  }

  /** Listens on a free loopback port (or `port`); resolves with the proxy's base URL. */
  async listen(port = 0) {
    this.server.listen(port, "127.0.0.1");
    await once(this.server, "listening");
    this.port = this.server.address().port;
    return this.url;
  }

  /** `http://127.0.0.1:PORT`, what clients are given instead of the upstream's URL. */
  get url() {
    return `http://127.0.0.1:${this.port}`;
  }

  /** Where connections go: `http://host:port` or {host, port}. Settable at any time. */
  setTarget(target) {
    if (typeof target === "string") {
      const u = new URL(target);
      this.target = { host: u.hostname, port: Number(u.port) };
    } else {
      this.target = target;
    }
  }

  /** Turns faults on (merged over the current ones) and draws the first gaps. */
  setFaults(faults) {
    this.faults = { ...this.faults, ...faults };
    const up = this.counts.bytesUp;
    this.nextReset = this.faults.resetEveryBytes ? up + this.draw(this.faults.resetEveryBytes) : Infinity;
    this.nextStall = this.faults.stallEveryBytes ? up + this.draw(this.faults.stallEveryBytes) : Infinity;
    this.nextDrop = this.faults.dropEveryConnections
      ? this.counts.connections + Math.round(this.draw(this.faults.dropEveryConnections))
      : Infinity;
    this.nextLostReply = this.faults.lostReplyEveryAnswers
      ? this.answers + Math.round(this.draw(this.faults.lostReplyEveryAnswers))
      : Infinity;
  }

  /** Turns every fault off (an offline stretch under way still ends on time). */
  clearFaults() {
    this.setFaults({ ...NO_FAULTS });
  }

  draw(range) {
    if (!Array.isArray(range)) return range;
    const [lo, hi] = range;
    return lo + (hi - lo) * this.random();
  }

  /**
   * Nothing gets through for `ms`: `"refuse"` (the port is closed and every open
   * connection reset) or `"blackhole"` (connections are held, no byte moves). Resolves
   * when the stretch is over.
   */
  async offline(ms, mode = "refuse") {
    this.counts.offlineMs += ms;
    if (mode === "blackhole") {
      this.counts.blackholeStretches += 1;
      this.blackholeUntil = Date.now() + ms;
      for (const c of this.conns) c.hold(ms);
      await sleep(ms);
      return;
    }
    this.counts.refusedStretches += 1;
    this.refusing = true;
    const closed = new Promise((resolve) => this.server.close(resolve));
    for (const c of [...this.conns]) c.reset();
    await closed;
    await sleep(ms);
    this.refusing = false;
    this.server = net.createServer((socket) => this.accept(socket));
    await this.listen(this.port);
  }

  /** Resets every open connection now (the upstream died, say). */
  resetAll() {
    for (const c of [...this.conns]) c.reset();
  }

  /** Stops listening and resets every connection. */
  async close() {
    this.refusing = true;
    this.resetAll();
    await new Promise((resolve) => this.server.close(() => resolve()));
  }

  /** A one-line summary of what was injected. */
  summary() {
    const c = this.counts;
    return `${this.name}: ${c.connections} connections, ${(c.bytesUp / MIB).toFixed(1)} MiB up; ` +
      `injected ${c.resets} resets mid-request, ${c.lostReplies} lost answers, ${c.stalls} stalls, ` +
      `${c.drops} dropped connections, ${c.refusedStretches} refused and ${c.blackholeStretches} blackholed stretches ` +
      `(${(c.offlineMs / 1000).toFixed(0)} s offline)`;
  }

  accept(client) {
    client.on("error", () => {});
    if (this.refusing || !this.target) {
      client.resetAndDestroy();
      return;
    }
    this.counts.connections += 1;
    if (this.counts.connections >= this.nextDrop) {
      this.counts.drops += 1;
      this.nextDrop = this.counts.connections + Math.round(this.draw(this.faults.dropEveryConnections));
      client.resetAndDestroy();
      return;
    }
    const conn = new Connection(this, client);
    this.conns.add(conn);
    if (Date.now() < this.blackholeUntil) conn.hold(this.blackholeUntil - Date.now());
  }
}

/** One proxied connection: the browser's socket, the upstream's, and the faults. */
class Connection {
  constructor(proxy, client) {
    this.proxy = proxy;
    this.client = client;
    this.heldUntil = 0;
    this.closed = false;
    this.upSinceAnswer = true; // the browser sent bytes since the last answer began
    this.upstream = net.connect(proxy.target.port, proxy.target.host);
    client.setNoDelay(true);
    this.upstream.setNoDelay(true);
    client.on("data", (chunk) => this.fromClient(chunk));
    this.upstream.on("data", (chunk) => this.fromUpstream(chunk));
    // A half close passes through; an error or a reset on one side resets the other.
    client.on("end", () => this.upstream.end());
    this.upstream.on("end", () => this.client.end());
    client.on("error", () => this.reset());
    this.upstream.on("error", () => this.reset());
    client.on("close", () => this.done());
    this.upstream.on("close", () => this.done());
  }

  /** Stops moving bytes both ways for `ms` (already buffered chunks wait too). */
  hold(ms) {
    this.heldUntil = Math.max(this.heldUntil, Date.now() + ms);
    this.client.pause();
    this.upstream.pause();
    clearTimeout(this.holdTimer);
    this.holdTimer = setTimeout(() => this.release(), this.heldUntil - Date.now());
  }

  release() {
    if (this.closed) return;
    if (Date.now() < this.heldUntil) {
      this.holdTimer = setTimeout(() => this.release(), this.heldUntil - Date.now());
      return;
    }
    this.client.resume();
    this.upstream.resume();
  }

  held() {
    return Date.now() < this.heldUntil;
  }

  fromClient(chunk) {
    const p = this.proxy;
    const f = p.faults;
    const before = p.counts.bytesUp;
    const after = before + chunk.length;
    p.counts.bytesUp = after;
    this.upSinceAnswer = true;
    if (after >= p.nextReset) {
      // Forward the bytes before the mark, then cut: the request is left half sent.
      const keep = Math.max(0, Math.floor(p.nextReset - before));
      p.counts.resets += 1;
      p.nextReset = after + p.draw(f.resetEveryBytes);
      if (keep > 0) this.upstream.write(chunk.subarray(0, keep));
      this.reset();
      return;
    }
    this.upstream.write(chunk);
    if (after >= p.nextStall) {
      p.counts.stalls += 1;
      p.nextStall = after + p.draw(f.stallEveryBytes);
      this.hold(p.draw(f.stallMs));
    }
    if (f.uplinkBytesPerSecond) {
      // Read no more until this chunk's share of the uplink has passed.
      this.client.pause();
      setTimeout(() => {
        if (!this.held() && !this.closed) this.client.resume();
      }, (chunk.length / f.uplinkBytesPerSecond) * 1000);
    }
    if (this.upstream.writableNeedDrain) {
      this.client.pause();
      this.upstream.once("drain", () => {
        if (!this.held() && !this.closed) this.client.resume();
      });
    }
  }

  fromUpstream(chunk) {
    const p = this.proxy;
    p.counts.bytesDown += chunk.length;
    if (this.upSinceAnswer) {
      // The first bytes of an answer to what the browser sent.
      this.upSinceAnswer = false;
      p.answers += 1;
      if (p.answers >= p.nextLostReply) {
        p.counts.lostReplies += 1;
        p.nextLostReply = p.answers + Math.round(p.draw(p.faults.lostReplyEveryAnswers));
        this.reset();
        return;
      }
    }
    this.client.write(chunk);
    if (this.client.writableNeedDrain) {
      this.upstream.pause();
      this.client.once("drain", () => {
        if (!this.held() && !this.closed) this.upstream.resume();
      });
    }
  }

  /** Resets both sockets (RST, not FIN). */
  reset() {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.holdTimer);
    for (const s of [this.client, this.upstream]) {
      if (!s.destroyed) s.resetAndDestroy();
    }
    this.proxy.conns.delete(this);
  }

  done() {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.holdTimer);
    this.client.destroy();
    this.upstream.destroy();
    this.proxy.conns.delete(this);
  }
}

function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}
