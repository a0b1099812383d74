// Run the real `xo-cr-seed` CLI (the bin of @xen-orchestra/cr-seed-cli) against a source and
// a target host, and report every change it made to either host's objects, as JSON.
//
//   node cr-seed.mjs --source URL --snapshot <source snapshot VM uuid>
//                    --target URL --target-vm <target VM uuid> --job ID --schedule ID
//
// Before and after the CLI, both hosts' pool, host, SR, VDI, VBD and VM records are read with
// npm `xen-api` (events off, as the CLI itself connects). The output lists the differences
// field by field, and key by key for map fields, so a test can check that the CLI wrote
// exactly the keys it is documented to write, and nothing else anywhere.

import { spawn } from 'node:child_process'
import { readFile } from 'node:fs/promises'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import { Xapi } from 'xen-api'

import { options, run } from './common.mjs'

const CLASSES = ['pool', 'host', 'SR', 'VDI', 'VBD', 'VM']

// Derived by the server from other fields: blocking `start` removes it from the VM's
// `allowed_operations`, which is a consequence of a write, not a write.
const DERIVED = new Set(['allowed_operations', 'current_operations'])

run(async () => {
  const opts = options({
    source: undefined,
    snapshot: undefined,
    target: undefined,
    'target-vm': undefined,
    job: undefined,
    schedule: undefined,
  })
  const hosts = {
    source: new Xapi({ url: opts.source, watchEvents: false, allowUnauthorized: true }),
    target: new Xapi({ url: opts.target, watchEvents: false, allowUnauthorized: true }),
  }
  await Promise.all(Object.values(hosts).map(xapi => xapi.connect()))

  const before = await dumpAll(hosts)
  const bin = await seedBin()
  const cli = await runCli(bin.path, [opts.source, opts.snapshot, opts.target, opts['target-vm'], opts.job, opts.schedule])
  const after = await dumpAll(hosts)

  await Promise.all(Object.values(hosts).map(xapi => xapi.disconnect()))
  return { bin: { name: bin.name, version: bin.version }, cli, changes: diff(before, after) }
})

/** The `xo-cr-seed` script as the package declares it in its `bin`. */
async function seedBin() {
  const require = createRequire(import.meta.url)
  const manifestPath = require.resolve('@xen-orchestra/cr-seed-cli/package.json')
  const manifest = JSON.parse(await readFile(manifestPath, 'utf8'))
  const [[name, script]] = Object.entries(manifest.bin)
  return { name, version: manifest.version, path: join(dirname(manifestPath), script) }
}

function runCli(script, args) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [script, ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout.setEncoding('utf8').on('data', chunk => (stdout += chunk))
    child.stderr.setEncoding('utf8').on('data', chunk => (stderr += chunk))
    child.on('error', reject)
    child.on('close', (status, signal) => resolve({ status, signal, stdout, stderr }))
  })
}

async function dumpAll(hosts) {
  const dumps = {}
  for (const [name, xapi] of Object.entries(hosts)) {
    dumps[name] = await dump(xapi)
  }
  return dumps
}

/** Every record of the watched classes, by class and uuid, without derived fields. */
async function dump(xapi) {
  const byClass = {}
  for (const type of CLASSES) {
    const records = await xapi.call(`${type}.get_all_records`)
    byClass[type] = Object.fromEntries(
      Object.values(records).map(record => [
        record.uuid,
        Object.fromEntries(Object.entries(record).filter(([field]) => !DERIVED.has(field))),
      ])
    )
  }
  return byClass
}

const isMap = value => value !== null && typeof value === 'object' && !Array.isArray(value)
const same = (a, b) => JSON.stringify(a) === JSON.stringify(b)

/**
 * The changes from `before` to `after`, one entry per changed field (or map key):
 * `{ host, class, uuid, field, key, before, after }`, with `key` null for whole fields and
 * `before`/`after` null for what was absent. Objects that appeared or vanished are entries
 * with `field` null.
 */
function diff(before, after) {
  const changes = []
  for (const host of Object.keys(before)) {
    for (const type of CLASSES) {
      const old = before[host][type]
      const now = after[host][type]
      for (const uuid of new Set([...Object.keys(old), ...Object.keys(now)])) {
        const change = fields => changes.push({ host, class: type, uuid, key: null, ...fields })
        if (!(uuid in now) || !(uuid in old)) {
          change({ field: null, before: old[uuid] ?? null, after: now[uuid] ?? null })
          continue
        }
        for (const field of new Set([...Object.keys(old[uuid]), ...Object.keys(now[uuid])])) {
          const [a, b] = [old[uuid][field], now[uuid][field]]
          if (isMap(a) && isMap(b)) {
            for (const key of new Set([...Object.keys(a), ...Object.keys(b)])) {
              if (!same(a[key], b[key])) {
                change({ field, key, before: a[key] ?? null, after: b[key] ?? null })
              }
            }
          } else if (!same(a, b)) {
            change({ field, before: a ?? null, after: b ?? null })
          }
        }
      }
    }
  }
  return changes
}
