// Starts and stops a real agent-sessions-server for the Node.js test suites (tests/ts, tests/browser).
//
// The server binary is `SERVER_BIN` (default: ../target/debug/agent-sessions-server, relative to this file). It is
// started on 127.0.0.1, port 0, over a fresh SQLite file in the given directory; its stdout tells us the demo echo
// agent's id and the address it listens on. `env` adds environment variables (API_KEYS, CORS_ORIGIN, ...);
// `databaseUrl` replaces the SQLite file (a PostgreSQL URL, for several instances on one database), and
// `expectAgent: false` waits for the address only (an instance that finds the demo agent already stored).

import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

const HERE = dirname(fileURLToPath(import.meta.url));
const SERVER_BIN = process.env.SERVER_BIN
  ? resolve(process.env.SERVER_BIN)
  : resolve(HERE, '../target/debug/agent-sessions-server');
const STARTUP_TIMEOUT_MS = 30_000;

// ---------------------------------------------------------------------------------------------------------------

/**
 * Starts the server and resolves once it has printed both the demo agent's id and its address.
 * Rejects (with the output so far) if it exits first or does not get there within STARTUP_TIMEOUT_MS.
 */
export function startServer(dataDir, { env = {}, databaseUrl, expectAgent = true } = {}) {
  if (!existsSync(SERVER_BIN)) {
    throw new Error(
      `server binary not found at ${SERVER_BIN}: run \`cargo build -p agent-sessions-server\` or set SERVER_BIN`,
    );
  }
  const child = spawn(
    SERVER_BIN,
    ['--host', '127.0.0.1', '--port', '0', '--database-url', databaseUrl ?? `sqlite:${join(dataDir, 's.db')}`],
    {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, NO_COLOR: '1', API_KEYS: '', ELIZA_SERVER_AUTH_TOKEN: '', CORS_ORIGIN: '', ...env },
    },
  );
  const output = []; // every line, both streams, for failure messages
  const remember = (line) => {
    output.push(line);
    if (output.length > 200) output.shift();
  };
  createInterface({ input: child.stderr }).on('line', remember);
  const stdout = createInterface({ input: child.stdout });

  const ready = new Promise((resolveReady, rejectReady) => {
    let agentId;
    let baseUrl;
    const fail = (why) => {
      clearTimeout(timer);
      rejectReady(new Error(`${why}\nserver output:\n${output.join('\n')}`));
    };
    const timer = setTimeout(
      () => fail(`server did not report its demo agent and address within ${STARTUP_TIMEOUT_MS} ms`),
      STARTUP_TIMEOUT_MS,
    );
    child.once('error', (err) => fail(`could not start ${SERVER_BIN}: ${err.message}`));
    // 'close' (not 'exit'): by then every line of its output has been read.
    child.once('close', (code, signal) => fail(`server exited early (code ${code}, signal ${signal})`));
    stdout.on('line', (line) => {
      remember(line);
      const agent = line.match(/Created demo echo agent: ([0-9a-f-]{36})/i);
      if (agent) agentId = agent[1];
      const listening = line.match(/agent-sessions-server listening on (http:\/\/[^\s]+)/);
      if (listening) baseUrl = listening[1];
      // A second instance on a shared database finds the demo agent there and creates none.
      if ((agentId || !expectAgent) && baseUrl) {
        clearTimeout(timer);
        resolveReady({ agentId, baseUrl });
      }
    });
  });
  return { child, ready, output };
}

/** Stops the server (SIGTERM, then SIGKILL if it has not exited within 10 s) and resolves once it has exited. */
export function stopServer(child) {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolveStop) => {
    const force = setTimeout(() => child.kill('SIGKILL'), 10_000);
    child.once('exit', () => {
      clearTimeout(force);
      resolveStop();
    });
    child.kill('SIGTERM');
  });
}

