// A TCP proxy on loopback for the benchmarks: it counts the bytes that pass each way
// (how much the server behind it really received), and can hold the client-to-target
// direction to a fixed rate (an uplink of a few Mbit/s, shared by every connection of
// the client, as one home or school line is).
import net from "node:net";
import { once } from "node:events";

/**
 * Starts a proxy on 127.0.0.1:0 to `target` ({host, port}; it may be set later, before
 * the first connection). `upBytesPerSec` > 0 caps the client-to-target direction.
 * Resolves with {url, port, stats: {up, down, connections}, reset(), setTarget(), close()}.
 */
export async function startProxy({ target = null, upBytesPerSec = 0 } = {}) {
  const stats = { up: 0, down: 0, connections: 0 };
  const sockets = new Set();
  // The shared link: the time (ms, performance clock) at which it is free again.
  let linkFreeAt = 0;
  const proxy = { target };

  const server = net.createServer((client) => {
    stats.connections++;
    const upstream = net.connect(proxy.target.port, proxy.target.host);
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.setNoDelay(true);
      s.on("close", () => sockets.delete(s));
      s.on("error", () => {
        client.destroy();
        upstream.destroy();
      });
    }
    upstream.on("data", (d) => {
      stats.down += d.length;
      if (!client.write(d)) {
        upstream.pause();
        client.once("drain", () => upstream.resume());
      }
    });
    const forward = (d) => {
      stats.up += d.length;
      if (!upstream.write(d)) {
        client.pause();
        upstream.once("drain", () => client.resume());
      }
    };
    client.on("data", (d) => {
      if (upBytesPerSec <= 0) return forward(d);
      // Each chunk takes its turn on the link; the connection reads nothing more until
      // its chunk has gone, so the sender feels the rate as TCP backpressure.
      const now = performance.now();
      const start = Math.max(now, linkFreeAt);
      linkFreeAt = start + (d.length / upBytesPerSec) * 1000;
      const wait = linkFreeAt - now;
      if (wait < 1) return forward(d);
      client.pause();
      setTimeout(() => {
        if (upstream.destroyed) return;
        forward(d);
        if (!upstream.writableNeedDrain) client.resume();
      }, wait);
    });
    client.on("end", () => upstream.end());
    upstream.on("end", () => client.end());
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address();
  return {
    port,
    url: `http://127.0.0.1:${port}`,
    stats,
    setTarget(t) {
      proxy.target = t;
    },
    reset() {
      stats.up = 0;
      stats.down = 0;
      stats.connections = 0;
    },
    async close() {
      for (const s of sockets) s.destroy();
      server.close();
    },
  };
}
