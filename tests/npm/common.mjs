// What the client scripts share: option parsing, a watchdog, and the one-JSON-document
// output that tests/npm_clients.rs reads.

import { parseArgs } from 'node:util'

// Every step against a lab host on loopback takes well under a second; this only keeps a
// hung client from hanging the Rust test.
const WATCHDOG_MS = 90e3

/** The `--name value` options, all strings and all required unless given a default. */
export function options(spec) {
  const { values } = parseArgs({
    options: Object.fromEntries(Object.keys(spec).map(name => [name, { type: 'string' }])),
    strict: true,
  })
  for (const [name, fallback] of Object.entries(spec)) {
    if (values[name] === undefined) {
      if (fallback === undefined) {
        throw new Error(`missing --${name}`)
      }
      values[name] = fallback
    }
  }
  return values
}

/**
 * Run `main`, print what it returns as JSON on stdout and exit 0; on an error, print it
 * (with the XAPI code, params and call when it has them) on stderr and exit 1. The exit
 * is explicit: with events on, npm `xen-api` keeps an `event.from` request open for a
 * minute after `disconnect()`.
 */
export function run(main) {
  setTimeout(() => {
    console.error(`timed out after ${WATCHDOG_MS} ms`)
    process.exit(2)
  }, WATCHDOG_MS).unref()
  main().then(
    result => process.stdout.write(JSON.stringify(result, null, 2) + '\n', () => process.exit(0)),
    error => {
      console.error(error)
      if (error?.code !== undefined) {
        console.error(JSON.stringify({ code: error.code, params: error.params, call: error.call }))
      }
      process.exit(1)
    }
  )
}

/** An error's XAPI code and params, or a rethrow if it has none. */
export function xapiError(error) {
  if (typeof error?.code !== 'string' || !Array.isArray(error.params)) {
    throw error
  }
  return { code: error.code, params: error.params }
}
