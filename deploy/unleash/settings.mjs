// Settings from the environment, shared by server.mjs and seed.mjs: NAME, or the contents of the
// file named by NAME_FILE (how `up` hands over secrets without putting them on a command line).

import { readFileSync } from 'node:fs';

export function setting(name, fallback = undefined) {
    const value = process.env[name];
    if (value !== undefined && value !== '') {
        return value;
    }
    const file = process.env[`${name}_FILE`];
    if (file) {
        return readFileSync(file, 'utf8').trim();
    }
    return fallback;
}

export function required(name) {
    const value = setting(name);
    if (!value) {
        throw new Error(`${name} (or ${name}_FILE) must be set`);
    }
    return value;
}
