// Seeds the flags of canaryws's flags file (an Unleash client-features document)
// into a running Unleash server through its Admin API. No dependencies: Node 22's
// fetch. Progress goes to stderr; nothing is written to stdout.
//
// Environment (secrets may be given as files with the _FILE suffix):
//   UNLEASH_API_URL       e.g. http://127.0.0.1:4242/api
//   UNLEASH_ADMIN_TOKEN   `*:*.<secret>`
//   UNLEASH_CLIENT_TOKEN  `default:development.<secret>` (used to verify the result)
//   CANARYWS_FLAGS        path of the flags document
//   UNLEASH_PROJECT       default `default`
//   UNLEASH_ENVIRONMENT   default `development`
//   UNLEASH_SEED_TIMEOUT  seconds to wait for the client API to show the seeded flags (default 20)
//
// For each feature of the document that the server does not have, it creates the
// feature, adds its strategies to the environment and turns the environment on or
// off to match `enabled`. Features the server already has are left untouched:
// operators own them once seeded (that includes archived ones: name taken, 409). If a step after the creation fails, the half-made
// feature is archived and deleted again so that the next run starts over.

import { readFileSync } from 'node:fs';

import { required, setting } from './settings.mjs';

const log = (message) => process.stderr.write(`seed: ${message}\n`);

const apiUrl = required('UNLEASH_API_URL').replace(/\/+$/, '');
const adminToken = required('UNLEASH_ADMIN_TOKEN');
const clientToken = required('UNLEASH_CLIENT_TOKEN');
const flagsPath = required('CANARYWS_FLAGS');
const project = setting('UNLEASH_PROJECT', 'default');
const environment = setting('UNLEASH_ENVIRONMENT', 'development');
const seedTimeoutMs = Number(setting('UNLEASH_SEED_TIMEOUT', '20')) * 1000;

class ApiError extends Error {
    constructor(method, path, status, body) {
        super(`${method} ${path} -> HTTP ${status}: ${body.slice(0, 500)}`);
        this.status = status;
    }
}

async function call(method, path, { token = adminToken, body, expect = [200, 201] } = {}) {
    const headers = { Authorization: token, Accept: 'application/json' };
    if (body !== undefined) {
        headers['Content-Type'] = 'application/json';
    }
    const response = await fetch(`${apiUrl}${path}`, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: AbortSignal.timeout(15_000),
    });
    const text = await response.text();
    if (!expect.includes(response.status)) {
        throw new ApiError(method, path, response.status, text);
    }
    return { status: response.status, json: text ? JSON.parse(text) : undefined };
}

const enc = encodeURIComponent;
const featurePath = (name) => `/admin/projects/${enc(project)}/features/${enc(name)}`;
const envPath = (name) => `${featurePath(name)}/environments/${enc(environment)}`;

function loadFeatures() {
    const document = JSON.parse(readFileSync(flagsPath, 'utf8'));
    if (!document || !Array.isArray(document.features)) {
        throw new Error(`${flagsPath}: not a client-features document (no "features" list)`);
    }
    for (const feature of document.features) {
        if (typeof feature.name !== 'string' || !feature.name) {
            throw new Error(`${flagsPath}: a feature has no name`);
        }
        if (feature.project !== undefined && feature.project !== project) {
            throw new Error(`${feature.name}: project "${feature.project}", but seeding targets "${project}"`);
        }
        if (Array.isArray(feature.dependencies) && feature.dependencies.length > 0) {
            throw new Error(`${feature.name}: feature dependencies are not seeded; create them in Unleash`);
        }
        for (const strategy of feature.strategies ?? []) {
            if (Array.isArray(strategy.segments) && strategy.segments.length > 0) {
                throw new Error(`${feature.name}: strategies with segments are not seeded; create them in Unleash`);
            }
        }
    }
    return document.features;
}

function strategyBody(strategy) {
    const body = {
        name: strategy.name,
        parameters: strategy.parameters ?? {},
        constraints: strategy.constraints ?? [],
        variants: strategy.variants ?? [],
        segments: [],
    };
    for (const key of ['title', 'disabled', 'sortOrder']) {
        if (strategy[key] !== undefined) {
            body[key] = strategy[key];
        }
    }
    return body;
}

async function exists(name) {
    const { status } = await call('GET', featurePath(name), { expect: [200, 404] });
    return status === 200;
}

// -> true if created, false if unleash already knows the name outside the project's
// active flags (archived, or in another project): an operator's decision, kept.
async function create(feature) {
    const { status } = await call('POST', `/admin/projects/${enc(project)}/features`, {
        body: {
            name: feature.name,
            description: feature.description ?? '',
            type: feature.type ?? 'release',
            impressionData: Boolean(feature.impressionData),
        },
        expect: [200, 201, 409],
    });
    if (status === 409) {
        return false;
    }
    try {
        for (const strategy of feature.strategies ?? []) {
            await call('POST', `${envPath(feature.name)}/strategies`, { body: strategyBody(strategy) });
        }
        if (Array.isArray(feature.variants) && feature.variants.length > 0) {
            await call('PUT', `${envPath(feature.name)}/variants`, { body: feature.variants });
        }
        await call('POST', `${envPath(feature.name)}/${feature.enabled ? 'on' : 'off'}`);
    } catch (error) {
        log(`${feature.name}: seeding failed, removing the half-made feature again`);
        await call('DELETE', featurePath(feature.name), { expect: [200, 202, 404] }).catch(() => {});
        await call('DELETE', `/admin/archive/${enc(feature.name)}`, { expect: [200, 202, 404] }).catch(() => {});
        throw error;
    }
    return true;
}

async function clientView() {
    const { json } = await call('GET', '/client/features', { token: clientToken, expect: [200] });
    return new Map(json.features.map((f) => [f.name, f]));
}

async function main() {
    const features = loadFeatures();

    // The tokens are created by unleash only in a database without tokens; a
    // database left over from another state dir keeps its own tokens.
    for (const [what, token, path] of [
        ['admin', adminToken, `/admin/projects/${enc(project)}/features`],
        ['client', clientToken, '/client/features'],
    ]) {
        try {
            await call('GET', path, { token, expect: [200] });
        } catch (error) {
            if (error instanceof ApiError && (error.status === 401 || error.status === 403)) {
                throw new Error(
                    `the server refuses the ${what} token of this state dir (HTTP ${error.status}). ` +
                        'Its database was initialised with other tokens (unleash creates initial tokens ' +
                        'only in a database without any): use another UNLEASH_DB, or `down --purge` ' +
                        'with the state dir that created it.',
                );
            }
            throw error;
        }
    }

    const created = [];
    const expected = [];
    for (const feature of features) {
        if (await exists(feature.name)) {
            log(`${feature.name}: present, left as it is`);
            expected.push(feature);
        } else if (await create(feature)) {
            log(`${feature.name}: created in ${project}/${environment}, ${feature.enabled ? 'enabled' : 'disabled'}`);
            created.push(feature);
            expected.push(feature);
        } else {
            log(
                `${feature.name}: the name is taken by an archived flag (or one in another project); ` +
                    'left as it is -- revive or delete it in Unleash to have it seeded again',
            );
        }
    }

    // The client API serves a snapshot refreshed about once a second; wait until
    // it shows every flag (and the seeded state of those created now).
    const deadline = Date.now() + seedTimeoutMs;
    for (;;) {
        const view = await clientView();
        const missing = expected.filter((f) => !view.has(f.name)).map((f) => f.name);
        const stale = created
            .filter((f) => view.has(f.name) && view.get(f.name).enabled !== Boolean(f.enabled))
            .map((f) => f.name);
        if (missing.length === 0 && stale.length === 0) {
            return;
        }
        if (Date.now() > deadline) {
            throw new Error(
                `the client API does not show the seeded flags after ${seedTimeoutMs / 1000}s ` +
                    `(missing: ${missing.join(', ') || '-'}; not yet toggled: ${stale.join(', ') || '-'})`,
            );
        }
        await new Promise((resolve) => setTimeout(resolve, 250));
    }
}

try {
    await main();
} catch (error) {
    log(error.message);
    process.exit(1);
}
