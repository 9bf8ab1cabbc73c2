'use strict';

// A bcoin full node for peerlink's interop tests: regtest, in memory, on
// loopback only, with every kind of outside traffic switched off.
//
//   node node.js [P2P_PORT] [HTTP_PORT]
//
// Ports default to 0 (the OS picks free ones). Once the node is open and its
// pool listens, one JSON line goes to stdout:
//
//   {"ready":true,"p2p":PORT,"http":PORT}
//
// Everything else (bcoin's log) goes to stderr. The HTTP JSON-RPC server
// needs no authentication. The process exits when stdin closes, so it dies
// with the test harness that spawned it.
//
// Environment: BCOIN_LOG_LEVEL (default "warning").

// bcoin's logger writes everything below "error" to stdout. Keep stdout for
// the ready line alone: send every other write to stderr.
const writeStdout = process.stdout.write.bind(process.stdout);
process.stdout.write = process.stderr.write.bind(process.stderr);

const bcoin = require('bcoin');

// Only ever used as a constructor argument, never bound.
const PLACEHOLDER_PORT = 48444;

function port(arg) {
  const n = Number(arg === undefined ? 0 : arg);
  if (!Number.isInteger(n) || n < 0 || n > 0xffff)
    throw new Error(`bad port: ${arg}`);
  return n;
}

function fail(err) {
  process.stderr.write(`bcoin interop node: ${err && err.stack || err}\n`);
  process.exit(1);
}

async function main() {
  const p2pPort = port(process.argv[2]);
  const httpPort = port(process.argv[3]);

  const node = new bcoin.FullNode({
    network: 'regtest',
    memory: true,
    workers: false,
    logLevel: process.env.BCOIN_LOG_LEVEL || 'warning',
    logConsole: true,
    logFile: false,
    // P2P: listen on loopback only, announce loopback.
    listen: true,
    host: '127.0.0.1',
    // bcoin's host list asserts port > 0 at construction; port 0 is put back
    // below, before the pool listens.
    port: p2pPort || PLACEHOLDER_PORT,
    publicHost: '127.0.0.1',
    // No seeds, no fixed nodes, no UPnP, no peers file (memory: true).
    seeds: [],
    nodes: [],
    upnp: false,
    // HTTP JSON-RPC on loopback, no authentication.
    httpHost: '127.0.0.1',
    httpPort: httpPort,
    noAuth: true
  });

  // No outbound traffic at all. maxOutbound = 0 fails an assertion in
  // bcoin, so disarm the methods that would reach out instead: DNS seed
  // lookups, UPnP, external-IP discovery over public DNS, the periodic
  // rediscovery timer and outbound refills. Explicit `addnode` RPCs still
  // work: they call pool.createOutbound directly.
  const pool = node.pool;
  pool.discoverGateway = async () => {};
  pool.discoverExternal = async () => {};
  pool.discoverSeeds = async () => {};
  pool.discover = async () => {};
  pool.fillOutbound = () => {};
  pool.refill = () => {};
  pool.addLoader = () => {};
  pool.hosts.discoverSeeds = async () => {};

  // Let the OS pick the P2P port when asked to (no race with other tests
  // picking ports at the same time).
  pool.options.port = p2pPort;

  node.on('error', (err) => {
    process.stderr.write(`bcoin error: ${err && err.stack || err}\n`);
  });

  await node.open();
  await node.connect();

  if (!pool.server.listening)
    throw new Error('pool is not listening');

  // Announce the port actually bound.
  const bound = pool.server.address().port;
  pool.options.publicPort = bound;
  pool.hosts.options.port = bound;
  pool.hosts.address.setPort(bound);

  const ready = {
    ready: true,
    p2p: bound,
    http: node.http.address().port
  };
  writeStdout(JSON.stringify(ready) + '\n');

  let closing = false;
  const shutdown = async () => {
    if (closing)
      return;
    closing = true;
    try {
      await node.close();
    } catch (e) {
      // Exiting anyway.
    }
    process.exit(0);
  };

  process.stdin.on('end', shutdown);
  process.stdin.on('close', shutdown);
  process.stdin.on('error', shutdown);
  process.stdin.resume();
  process.on('SIGTERM', shutdown);
  process.on('SIGINT', shutdown);
}

main().catch(fail);
