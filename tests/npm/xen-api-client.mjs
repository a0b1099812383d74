// Drive the npm `xen-api` client against a XAPI host and print what it saw as JSON.
//
//   node xen-api-client.mjs --url http://root:pw@host:port --vm <VM uuid> --nonce <text>
//                           [--events on|off] [--transport auto|json-rpc|xml-rpc]
//
// It lists the VMs (from the client's object cache with events on, through
// `VM.get_all_records` with events off), then sets and removes `other_config` keys of the VM
// `--vm` three ways: the raw `add_to_other_config` / `remove_from_other_config` calls, the
// record's own `update_other_config` helper and `Xapi#setFieldEntries`. With events on, it
// reads the map back from the cache after `Xapi#barrier` (so through `event.from`) and also
// snapshots the VM with `callAsync`, which waits for the task through events. The keys carry
// `--nonce`, so a run can only see its own writes.

import { Xapi } from 'xen-api'

import { options, run, xapiError } from './common.mjs'

run(async () => {
  const opts = options({ url: undefined, vm: undefined, nonce: undefined, events: 'on', transport: 'auto' })
  if (!['on', 'off'].includes(opts.events)) {
    throw new Error(`--events must be on or off, not ${opts.events}`)
  }
  const events = opts.events === 'on'
  const xapi = new Xapi({ url: opts.url, watchEvents: events, transport: opts.transport, allowUnauthorized: true })
  await xapi.connect()

  let vms
  if (events) {
    await xapi.objectsFetched
    vms = Object.values(xapi.objects.all).filter(object => object.$type === 'VM')
  } else {
    const records = await xapi.call('VM.get_all_records')
    vms = Object.entries(records).map(([ref, record]) => ({ $ref: ref, ...record }))
  }
  const listed = vms
    .map(vm => ({ ref: vm.$ref, uuid: vm.uuid, name_label: vm.name_label, is_a_snapshot: vm.is_a_snapshot }))
    .sort((a, b) => a.uuid.localeCompare(b.uuid))

  // The record the helpers hang off: the cached object with events on, else a fresh read.
  const vm = events ? xapi.getObjectByUuid(opts.vm) : await xapi.getRecordByUuid('VM', opts.vm)
  const ref = vm.$ref
  // With events on, `barrier` returns the cached object once every event up to now has been
  // processed: the map then reflects the writes only if `event.from` reported them.
  const otherConfig = async () => (events ? await xapi.barrier(ref) : await xapi.getRecord('VM', ref)).other_config

  const key = name => `vhdsync-test:${opts.nonce}:${name}`
  const value = name => `${name} ${opts.nonce}`

  await xapi.call('VM.add_to_other_config', ref, key('call'), value('call'))
  await vm.update_other_config(key('helper'), value('helper'))
  // A second write to the same key: the helper removes, then adds.
  await vm.update_other_config(key('helper'), value('helper again'))
  await xapi.setFieldEntries('VM', ref, 'other_config', {
    [key('entries-a')]: value('entries-a'),
    [key('entries-b')]: value('entries-b'),
  })
  let duplicate
  try {
    await xapi.call('VM.add_to_other_config', ref, key('call'), value('duplicate'))
  } catch (error) {
    duplicate = xapiError(error)
  }
  const afterSet = await otherConfig()

  await xapi.call('VM.remove_from_other_config', ref, key('call'))
  await vm.update_other_config(key('helper'), null)
  // Removing a key that is not there succeeds silently, which `setFieldEntry` relies on.
  await xapi.call('VM.remove_from_other_config', ref, key('never set'))
  const afterRemove = await otherConfig()

  let snapshot
  if (events) {
    const snapshotRef = await xapi.callAsync('VM.snapshot', ref, `snapshot ${opts.nonce}`)
    const cached = await xapi.barrier(snapshotRef)
    snapshot = {
      ref: snapshotRef,
      uuid: cached.uuid,
      name_label: cached.name_label,
      is_a_snapshot: cached.is_a_snapshot,
      snapshot_of: cached.snapshot_of,
    }
  }

  const pool = { ref: xapi.pool.$ref, uuid: xapi.pool.uuid }
  await xapi.disconnect()
  return { events, transport: opts.transport, pool, vms: listed, vm: ref, afterSet, duplicate, afterRemove, snapshot }
})
