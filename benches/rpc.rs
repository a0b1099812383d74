//! The XML-RPC and JSON-RPC codecs on a large answer: `VM.get_all_records` of a pool with
//! 1000 VMs, each record with the fields and maps a real one carries (about 3 MB of XML).

use std::collections::BTreeMap;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use vhdsync::xapi::rpc::Value;
use vhdsync::xapi::rpc::jsonrpc::{self, JsonRpcResponse, JsonRpcVersion, RequestId};
use vhdsync::xapi::rpc::xmlrpc::{self, IntEncoding};

const VMS: usize = 1000;

fn uuid(n: usize, kind: u8) -> String {
    format!("{kind:02x}{n:06x}-5c1f-4a8e-9b6d-{n:012x}")
}

fn refs(kind: &str, n: usize, count: usize) -> Value {
    Value::Array(
        (0..count)
            .map(|i| Value::from(format!("OpaqueRef:{}", uuid(n * 8 + i, kind.len() as u8))))
            .collect(),
    )
}

fn map(pairs: &[(&str, String)]) -> Value {
    Value::Struct(
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Value::from(v.as_str())))
            .collect(),
    )
}

fn vm_record(n: usize) -> Value {
    let mut r = BTreeMap::new();
    let mut put = |k: &str, v: Value| {
        r.insert(k.to_owned(), v);
    };
    put("uuid", Value::from(uuid(n, 1)));
    put(
        "name_label",
        Value::from(format!("web{n:04}.prod.example.com")),
    );
    put(
        "name_description",
        Value::from("Debian 12 web server, nginx + php-fpm"),
    );
    put(
        "power_state",
        Value::from(if n.is_multiple_of(3) {
            "Halted"
        } else {
            "Running"
        }),
    );
    put("is_a_template", Value::Bool(false));
    put("is_a_snapshot", Value::Bool(n % 10 == 9));
    put("is_control_domain", Value::Bool(false));
    put("snapshot_of", Value::from("OpaqueRef:NULL"));
    put(
        "snapshot_time",
        Value::DateTime("20261203T11:59:17Z".into()),
    );
    put("snapshots", refs("VM", n, 2));
    put("VBDs", refs("VBD", n, 3));
    put("VIFs", refs("VIF", n, 2));
    put("consoles", refs("console", n, 1));
    put("resident_on", Value::from("OpaqueRef:6d3c0b5a-host"));
    put("affinity", Value::from("OpaqueRef:NULL"));
    put("memory_static_max", Value::Int(4 << 30));
    put("memory_dynamic_max", Value::Int(4 << 30));
    put("memory_dynamic_min", Value::Int(2 << 30));
    put("memory_static_min", Value::Int(1 << 30));
    put("VCPUs_max", Value::Int(4));
    put("VCPUs_at_startup", Value::Int(2));
    put("actions_after_shutdown", Value::from("destroy"));
    put("actions_after_reboot", Value::from("restart"));
    put("actions_after_crash", Value::from("restart"));
    put("HVM_boot_policy", Value::from("BIOS order"));
    put(
        "HVM_boot_params",
        map(&[("order", "cdn".into()), ("firmware", "bios".into())]),
    );
    put(
        "platform",
        map(&[
            ("timeoffset", "0".into()),
            ("device-model", "qemu-upstream-compat".into()),
            ("viridian", "false".into()),
            ("acpi", "1".into()),
            ("apic", "true".into()),
            ("pae", "true".into()),
            ("nx", "true".into()),
            ("cores-per-socket", "2".into()),
        ]),
    );
    put(
        "other_config",
        map(&[
            ("base_template_name", "Debian Bookworm 12".into()),
            ("import_task", format!("OpaqueRef:{}", uuid(n, 7))),
            ("mac_seed", uuid(n, 8)),
            ("install-methods", "cdrom,nfs,http,ftp".into()),
            ("xo:backup:job", uuid(3, 9)),
            ("xo:backup:schedule", uuid(4, 9)),
        ]),
    );
    put("blocked_operations", map(&[]));
    put(
        "tags",
        Value::Array(vec![Value::from("prod"), Value::from("web")]),
    );
    put(
        "xenstore_data",
        map(&[
            ("vm-data", String::new()),
            ("vm-data/mmio-hole-size", "268435456".into()),
        ]),
    );
    put(
        "domid",
        Value::Int(if n.is_multiple_of(3) { -1 } else { n as i64 }),
    );
    put("user_version", Value::Int(1));
    put("has_vendor_device", Value::Bool(false));
    put(
        "allowed_operations",
        Value::Array(
            [
                "snapshot",
                "clone",
                "copy",
                "export",
                "clean_shutdown",
                "pause",
            ]
            .into_iter()
            .map(Value::from)
            .collect(),
        ),
    );
    Value::Struct(r)
}

fn all_records() -> Value {
    Value::Struct(
        (0..VMS)
            .map(|n| (format!("OpaqueRef:{}", uuid(n, 2)), vm_record(n)))
            .collect(),
    )
}

fn bench_rpc(c: &mut Criterion) {
    let records = all_records();
    let answer: Result<Value, _> = Ok(records.clone());
    let xml = xmlrpc::encode_response(&answer, IntEncoding::AsString);
    let json_answer = JsonRpcResponse {
        version: JsonRpcVersion::V2,
        id: RequestId::Int(1),
        response: Ok(records),
    };
    let json = jsonrpc::encode_response(&json_answer);

    let mut group = c.benchmark_group("VM.get_all_records, 1000 VMs");
    group.sample_size(20);
    group.throughput(Throughput::Bytes(xml.len() as u64));
    group.bench_function("XML-RPC encode", |b| {
        b.iter(|| xmlrpc::encode_response(&answer, IntEncoding::AsString).len())
    });
    group.bench_function("XML-RPC decode", |b| {
        b.iter(|| xmlrpc::decode_response(&xml).unwrap().is_ok())
    });
    group.throughput(Throughput::Bytes(json.len() as u64));
    group.bench_function("JSON-RPC encode", |b| {
        b.iter(|| jsonrpc::encode_response(&json_answer).len())
    });
    group.bench_function("JSON-RPC decode", |b| {
        b.iter(|| jsonrpc::decode_response(&json).unwrap().response.is_ok())
    });
    group.finish();
}

criterion_group!(benches, bench_rpc);
criterion_main!(benches);
