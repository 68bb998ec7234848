// A throwaway PostgreSQL server for the Node.js suites (two server instances on one database), started the way
// the Rust tests start theirs (tests/pg/launch.rs): `initdb` into a temp dir (in /dev/shm when there is one),
// `pg_ctl start` on a free port with fsync off, as the `postgres` system user when run as root. `stopPostgres`
// stops it at once and deletes its files.

import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, realpathSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';

/** The directory holding initdb and pg_ctl: the one on PATH, else the newest /usr/lib/postgresql/<v>/bin. */
function binDir() {
  for (const dir of (process.env.PATH ?? '').split(':')) {
    const initdb = join(dir, 'initdb');
    if (dir && existsSync(initdb)) return dirname(realpathSync(initdb));
  }
  const root = '/usr/lib/postgresql';
  const versions = existsSync(root)
    ? readdirSync(root)
        .filter((v) => /^\d+$/.test(v) && existsSync(join(root, v, 'bin', 'initdb')))
        .sort((a, b) => Number(a) - Number(b))
    : [];
  if (versions.length === 0) {
    throw new Error('initdb not found on PATH or under /usr/lib/postgresql/*/bin (apt-get install postgresql)');
  }
  return join(root, versions.at(-1), 'bin');
}

/** initdb and the postmaster refuse root: run them as `postgres` then. */
function asUser(program, args) {
  const root = process.getuid?.() === 0;
  return root ? ['runuser', ['-u', 'postgres', '--', program, ...args]] : [program, args];
}

function run(program, args) {
  const [cmd, argv] = asUser(program, args);
  return execFileSync(cmd, argv, { stdio: ['ignore', 'pipe', 'pipe'] }).toString();
}

function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** Starts a server; resolves to `{url, stop}` where `url` names the `postgres` database as its superuser. */
export async function startPostgres() {
  const bin = binDir();
  const base = existsSync('/dev/shm') ? '/dev/shm' : tmpdir();
  const dir = mkdtempSync(join(base, 'agent-sessions-pg-node-'));
  if (process.getuid?.() === 0) execFileSync('chown', ['postgres:', dir]);
  const data = join(dir, 'data');
  run(join(bin, 'initdb'), ['-D', data, '-U', 'postgres', '--auth=trust', '-E', 'UTF8', '--no-sync']);
  const port = await freePort();
  const options =
    `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off ` +
    '-c wal_level=minimal -c max_wal_senders=0 -c max_connections=200';
  run(join(bin, 'pg_ctl'), ['-D', data, '-l', join(dir, 'postgres.log'), '-w', '-t', '60', '-o', options, 'start']);
  const stop = () => {
    try {
      run(join(bin, 'pg_ctl'), ['-D', data, '-m', 'immediate', '-w', 'stop']);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  };
  return { url: `postgres://postgres@127.0.0.1:${port}/postgres`, stop };
}
