// Drive the npm `xen-api` client through XAPI datamodel calls beyond the generic map
// modifiers, as Xen Orchestra's replication makes them, and print what it saw as JSON.
//
//   node datamodel.mjs --url http://root:pw@host:port --vm <VM uuid>
//
// It updates the VM `--vm` the way XO updates a live replica in place (the explicit setters
// `VM.set_has_vendor_device`, `set_order`, `set_shutdown_delay`, `set_start_delay`, then
// `VM.update_allowed_operations`) and reads the record back. Then it snapshots the VM's first
// disk twice and walks its VHD chain as XO's unhealthy-chain check does: from a VDI to the
// one its `sm_config['vhd-parent']` names (`VDI.get_by_uuid`, `VDI.get_sm_config`) until a
// VDI has no parent, reporting each hidden parent's record.

import { Xapi } from 'xen-api'

import { options, run } from './common.mjs'

run(async () => {
  const opts = options({ url: undefined, vm: undefined })
  const xapi = new Xapi({ url: opts.url, watchEvents: false, allowUnauthorized: true })
  await xapi.connect()

  const vm = await xapi.call('VM.get_by_uuid', opts.vm)
  await xapi.call('VM.set_has_vendor_device', vm, true)
  await xapi.call('VM.set_order', vm, 3)
  await xapi.call('VM.set_shutdown_delay', vm, 7)
  await xapi.call('VM.set_start_delay', vm, 11)
  await xapi.call('VM.update_allowed_operations', vm)
  const record = await xapi.getRecord('VM', vm)
  const updated = {
    has_vendor_device: record.has_vendor_device,
    order: Number(record.order),
    shutdown_delay: Number(record.shutdown_delay),
    start_delay: Number(record.start_delay),
    allowed_operations: [...record.allowed_operations].sort(),
  }

  const vbds = await Promise.all(record.VBDs.map(ref => xapi.getRecord('VBD', ref)))
  const disk = vbds.filter(vbd => vbd.type === 'Disk').sort((a, b) => a.userdevice.localeCompare(b.userdevice))[0]
  const snapshots = []
  for (let n = 0; n < 2; n++) {
    const snapshot = await xapi.call('VDI.snapshot', disk.VDI, {})
    snapshots.push(await xapi.call('VDI.get_uuid', snapshot))
  }

  const chain = []
  let parent = (await xapi.call('VDI.get_sm_config', disk.VDI))['vhd-parent']
  while (parent !== undefined) {
    // VHD chains are at most 256 files deep; a longer walk is a cycle.
    if (chain.length > 256) {
      throw new Error(`the chain of ${disk.VDI} does not end: ${JSON.stringify(chain.slice(-3))}`)
    }
    const ref = await xapi.call('VDI.get_by_uuid', parent)
    const vdi = await xapi.getRecord('VDI', ref)
    const smConfig = await xapi.call('VDI.get_sm_config', ref)
    chain.push({
      uuid: vdi.uuid,
      managed: vdi.managed,
      read_only: vdi.read_only,
      is_a_snapshot: vdi.is_a_snapshot,
      VBDs: vdi.VBDs,
      vhd_parent: smConfig['vhd-parent'] ?? null,
    })
    parent = smConfig['vhd-parent']
  }

  const diskUuid = await xapi.call('VDI.get_uuid', disk.VDI)
  await xapi.disconnect()
  return { vm, updated, disk: diskUuid, snapshots, chain }
})
