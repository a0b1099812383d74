use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::xapi::rpc::MAX_NESTING_DEPTH;
use crate::xapi::rpc::test_support::{
    any_text, any_value, map_leaves, nested_arrays, short_decimal_double,
};

const SESSION: &str = "OpaqueRef:8c5dbb4a-8f9e-4d0c-a5a4-1c0e52b1d8b7";

fn text(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).unwrap()
}

fn error_message(result: Result<impl std::fmt::Debug, RpcCodecError>) -> String {
    result.unwrap_err().to_string()
}

fn response(version: JsonRpcVersion, id: RequestId, response: Response) -> JsonRpcResponse {
    JsonRpcResponse {
        version,
        id,
        response,
    }
}

// ---- Byte-exact messages (reference §2.1) ----

#[test]
fn npm_xen_api_login_request_is_byte_exact_both_ways() {
    let wire =
        r#"{"jsonrpc":"2.0","method":"session.login_with_password","params":["root","pw"],"id":0}"#;
    let request = JsonRpcRequest {
        version: JsonRpcVersion::V2,
        id: RequestId::Int(0),
        call: Call::new(
            "session.login_with_password",
            vec!["root".into(), "pw".into()],
        ),
    };
    assert_eq!(decode_request(wire.as_bytes()).unwrap(), request);
    assert_eq!(text(&encode_request(&request)), wire);
}

#[test]
fn v1_request_has_no_version_member() {
    let wire =
        r#"{"method":"VM.get_record","params":["OpaqueRef:s","OpaqueRef:vm"],"id":"call-7"}"#;
    let request = decode_request(wire.as_bytes()).unwrap();
    assert_eq!(request.version, JsonRpcVersion::V1);
    assert_eq!(request.id, RequestId::String("call-7".into()));
    assert_eq!(text(&encode_request(&request)), wire);
}

#[test]
fn v1_responses_are_byte_exact_both_ways() {
    let id = RequestId::Int(3);
    let success = response(JsonRpcVersion::V1, id.clone(), Ok(Value::from(SESSION)));
    let wire = r#"{"result":"OpaqueRef:8c5dbb4a-8f9e-4d0c-a5a4-1c0e52b1d8b7","error":null,"id":3}"#;
    assert_eq!(text(&encode_response(&success)), wire);
    assert_eq!(decode_response(wire.as_bytes()).unwrap(), success);

    let failure = response(
        JsonRpcVersion::V1,
        id,
        Err(XapiFault::new("SESSION_INVALID", [SESSION])),
    );
    let wire = r#"{"result":null,"error":["SESSION_INVALID","OpaqueRef:8c5dbb4a-8f9e-4d0c-a5a4-1c0e52b1d8b7"],"id":3}"#;
    assert_eq!(text(&encode_response(&failure)), wire);
    assert_eq!(decode_response(wire.as_bytes()).unwrap(), failure);
}

#[test]
fn v2_responses_are_byte_exact_both_ways() {
    let id = RequestId::Int(0);
    let success = response(JsonRpcVersion::V2, id.clone(), Ok(Value::void()));
    let wire = r#"{"jsonrpc":"2.0","result":"","id":0}"#;
    assert_eq!(text(&encode_response(&success)), wire);
    assert_eq!(decode_response(wire.as_bytes()).unwrap(), success);

    let failure = response(
        JsonRpcVersion::V2,
        id,
        Err(XapiFault::new(
            "MAP_DUPLICATE_KEY",
            ["VM", "other_config", "OpaqueRef:vm", "xo:copy_of"],
        )),
    );
    let wire = r#"{"jsonrpc":"2.0","error":{"code":1,"message":"MAP_DUPLICATE_KEY","data":["VM","other_config","OpaqueRef:vm","xo:copy_of"]},"id":0}"#;
    assert_eq!(text(&encode_response(&failure)), wire);
    assert_eq!(decode_response(wire.as_bytes()).unwrap(), failure);
}

#[test]
fn list_methods_result_is_the_bare_array() {
    let methods = Value::from(vec!["VM.get_all_records", "system.listMethods"]);
    let wire = r#"{"jsonrpc":"2.0","result":["VM.get_all_records","system.listMethods"],"id":1}"#;
    let decoded = decode_response(wire.as_bytes()).unwrap();
    assert_eq!(decoded.response, Ok(methods));
}

#[test]
fn records_keep_keys_ordered_and_types_mapped() {
    let record = Value::from(BTreeMap::from([
        ("virtual_size", Value::Int(2_190_433_320_960)),
        ("progress", Value::Double(0.25)),
        (
            "snapshot_time",
            Value::DateTime("20250319T04:16:24Z".into()),
        ),
        ("is_a_snapshot", Value::Bool(true)),
        ("other_config", Value::Struct(BTreeMap::new())),
        ("VBDs", Value::Array(vec![])),
    ]));
    let encoded = encode_response(&response(JsonRpcVersion::V2, RequestId::Int(1), Ok(record)));
    assert_eq!(
        text(&encoded),
        concat!(
            r#"{"jsonrpc":"2.0","result":{"VBDs":[],"is_a_snapshot":true,"other_config":{},"#,
            r#""progress":0.25,"snapshot_time":"20250319T04:16:24Z","virtual_size":2190433320960},"id":1}"#
        )
    );
}

// ---- Request variants ----

#[test]
fn v2_params_may_be_omitted_null_or_an_object() {
    for (wire, expected) in [
        (
            r#"{"jsonrpc":"2.0","method":"system.listMethods","id":1}"#,
            vec![],
        ),
        (
            r#"{"jsonrpc":"2.0","method":"system.listMethods","params":null,"id":1}"#,
            vec![],
        ),
        (
            r#"{"jsonrpc":"2.0","method":"m","params":{"k":"v"},"id":1}"#,
            vec![Value::from(BTreeMap::from([("k", "v")]))],
        ),
    ] {
        assert_eq!(
            decode_request(wire.as_bytes()).unwrap().call.params,
            expected,
            "{wire}"
        );
    }
}

#[test]
fn json_numbers_map_to_ints_and_doubles() {
    let wire = r#"{"method":"m","params":[1,-1,1.5,1e3,9223372036854775807,null,true],"id":1}"#;
    assert_eq!(
        decode_request(wire.as_bytes()).unwrap().call.params,
        vec![
            Value::Int(1),
            Value::Int(-1),
            Value::Double(1.5),
            Value::Double(1000.0),
            Value::Int(i64::MAX),
            Value::Nil,
            Value::Bool(true),
        ]
    );
}

// ---- Errors ----

#[test]
fn notifications_are_rejected_clearly() {
    for wire in [
        r#"{"jsonrpc":"2.0","method":"session.logout","params":[]}"#,
        r#"{"jsonrpc":"2.0","method":"session.logout","params":[],"id":null}"#,
    ] {
        let message = error_message(decode_request(wire.as_bytes()));
        assert!(message.contains("Invalid field 'id'"), "{message}");
        assert!(
            message.contains("notifications are not supported"),
            "{message}"
        );
    }
}

#[test]
fn malformed_requests_are_rejected_with_the_reason() {
    for (wire, expected) in [
        ("", "EOF while parsing a value at line 1 column 0"),
        (r#"{"method":"m","params":[],"id":1"#, "line 1 column"),
        (
            r#"{"method":"m","params":[],"id":1} x"#,
            "trailing characters",
        ),
        (r#"["m"]"#, "expected a JSON object, found an array"),
        (r#"{"params":[],"id":1}"#, "missing \"method\""),
        (
            r#"{"method":7,"params":[],"id":1}"#,
            "\"method\" must be a string, found an int",
        ),
        (r#"{"method":"m","id":1}"#, "which JSON-RPC 1.0 requires"),
        (
            r#"{"method":"m","params":"x","id":1}"#,
            "\"params\" must be an array",
        ),
        (
            r#"{"jsonrpc":"1.0","method":"m","params":[],"id":1}"#,
            "\"jsonrpc\" must be \"2.0\"",
        ),
        (
            r#"{"method":"m","params":[],"id":1.5}"#,
            "must be a string or an integer, found a double",
        ),
        (
            r#"{"method":"m","params":[18446744073709551615],"id":1}"#,
            "does not fit",
        ),
        (
            "{\"method\":\"m\",\"params\":[\"\u{1}\"],\"id\":1}",
            "control character",
        ),
    ] {
        let message = error_message(decode_request(wire.as_bytes()));
        assert!(
            message.contains(expected),
            "{message} does not mention {expected:?}"
        );
    }
    assert!(error_message(decode_request(b"{\"method\":\"\xff\"}")).contains("line 1"));
}

#[test]
fn malformed_responses_are_rejected_with_the_reason() {
    for (wire, expected) in [
        (
            r#"{"jsonrpc":"2.0","id":1}"#,
            "neither \"result\" nor \"error\"",
        ),
        (
            r#"{"jsonrpc":"2.0","result":1,"error":["X"],"id":1}"#,
            "both \"result\" and \"error\"",
        ),
        (r#"{"jsonrpc":"2.0","result":1}"#, "Invalid field 'id'"),
        (
            r#"{"jsonrpc":"2.0","error":{"message":"X"},"id":1}"#,
            "no integer \"code\"",
        ),
        (
            r#"{"jsonrpc":"2.0","error":{"code":1},"id":1}"#,
            "no string \"message\"",
        ),
        (
            r#"{"jsonrpc":"2.0","error":{"code":1,"message":"X","data":[1]},"id":1}"#,
            "item 0 must be a string",
        ),
        (
            r#"{"jsonrpc":"2.0","error":{"code":1,"message":"X","data":"p"},"id":1}"#,
            "\"data\" must be an array",
        ),
        (r#"{"result":null,"error":[],"id":1}"#, "no error code"),
        (
            r#"{"result":null,"error":"boom","id":1}"#,
            "must be an array [CODE, params…]",
        ),
    ] {
        let message = error_message(decode_response(wire.as_bytes()));
        assert!(
            message.contains(expected),
            "{message} does not mention {expected:?}"
        );
    }
}

#[test]
fn either_error_shape_is_understood_in_either_version() {
    let v1_with_object = r#"{"result":null,"error":{"code":1,"message":"EVENTS_LOST"},"id":1}"#;
    assert_eq!(
        decode_response(v1_with_object.as_bytes()).unwrap().response,
        Err(XapiFault::new("EVENTS_LOST", Vec::<String>::new()))
    );
    let v2_with_array = r#"{"jsonrpc":"2.0","error":["EVENTS_LOST"],"id":1}"#;
    assert_eq!(
        decode_response(v2_with_array.as_bytes()).unwrap().response,
        Err(XapiFault::new("EVENTS_LOST", Vec::<String>::new()))
    );
}

#[test]
fn non_finite_doubles_are_written_as_null() {
    let encoded = encode_response(&response(
        JsonRpcVersion::V2,
        RequestId::Int(1),
        Ok(Value::Double(f64::NAN)),
    ));
    assert_eq!(text(&encoded), r#"{"jsonrpc":"2.0","result":null,"id":1}"#);
}

// ---- Hostile nesting ----

const HOSTILE_DEPTH: usize = 100_000;

#[test]
fn a_hundred_thousand_levels_fail_fast() {
    let arrays = format!(
        r#"{{"method":"m","params":{}{},"id":1}}"#,
        "[".repeat(HOSTILE_DEPTH),
        "]".repeat(HOSTILE_DEPTH)
    );
    let objects = format!(
        r#"{{"jsonrpc":"2.0","result":{}1{},"id":1}}"#,
        r#"{"a":"#.repeat(HOSTILE_DEPTH),
        "}".repeat(HOSTILE_DEPTH)
    );
    for message in [
        error_message(decode_request(arrays.as_bytes())),
        error_message(decode_response(objects.as_bytes())),
    ] {
        assert!(message.contains("nested deeper than 64"), "{message}");
        assert!(message.contains("line 1 column"), "{message}");
    }
}

#[test]
fn nesting_is_accepted_up_to_the_limit_and_not_beyond() {
    // The response object is one level, so its result may hold one level fewer.
    let deepest = nested_arrays(MAX_NESTING_DEPTH - 1);
    let encoded = encode_response(&response(
        JsonRpcVersion::V2,
        RequestId::Int(1),
        Ok(deepest.clone()),
    ));
    assert_eq!(decode_response(&encoded).unwrap().response, Ok(deepest));
    let too_deep = nested_arrays(MAX_NESTING_DEPTH);
    let encoded = encode_response(&response(
        JsonRpcVersion::V2,
        RequestId::Int(1),
        Ok(too_deep),
    ));
    assert!(decode_response(&encoded).is_err());
}

// ---- Properties ----

fn json_value() -> BoxedStrategy<Value> {
    any_value(any_text(), short_decimal_double())
}

fn any_id() -> impl Strategy<Value = RequestId> {
    prop_oneof![
        any::<i64>().prop_map(RequestId::Int),
        any_text().prop_map(RequestId::String)
    ]
}

fn any_version() -> impl Strategy<Value = JsonRpcVersion> {
    prop_oneof![Just(JsonRpcVersion::V1), Just(JsonRpcVersion::V2)]
}

/// JSON has no datetime type: datetimes come back as strings.
fn as_json_sees_it(value: Value) -> Value {
    map_leaves(value, &|leaf| match leaf {
        Value::DateTime(text) => Value::String(text),
        other => other,
    })
}

/// Fragments of JSON-RPC, so random documents get past the first token often.
fn json_rpc_soup() -> impl Strategy<Value = String> {
    let fragment = proptest::sample::select(vec![
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        "\"jsonrpc\"",
        "\"2.0\"",
        "\"method\"",
        "\"params\"",
        "\"id\"",
        "\"result\"",
        "\"error\"",
        "\"code\"",
        "\"message\"",
        "\"data\"",
        "null",
        "1",
        "-1.5e300",
        "18446744073709551616",
        "true",
        "\"\\u0000\"",
        "\"\\ud800\"",
        " ",
    ]);
    proptest::collection::vec(fragment, 0..40).prop_map(|fragments| fragments.concat())
}

proptest! {
    #[test]
    fn requests_round_trip(
        version in any_version(),
        id in any_id(),
        method in any_text(),
        params in proptest::collection::vec(json_value(), 0..4),
    ) {
        let request = JsonRpcRequest { version, id, call: Call::new(method, params) };
        let decoded = decode_request(&encode_request(&request)).unwrap();
        let expected_params: Vec<Value> = request.call.params.into_iter().map(as_json_sees_it).collect();
        prop_assert_eq!(decoded.version, request.version);
        prop_assert_eq!(decoded.id, request.id);
        prop_assert_eq!(decoded.call.method, request.call.method);
        prop_assert_eq!(decoded.call.params, expected_params);
    }

    #[test]
    fn successes_round_trip(version in any_version(), id in any_id(), value in json_value()) {
        let sent = response(version, id, Ok(value.clone()));
        let decoded = decode_response(&encode_response(&sent)).unwrap();
        prop_assert_eq!(decoded, response(sent.version, sent.id, Ok(as_json_sees_it(value))));
    }

    #[test]
    fn failures_round_trip(
        version in any_version(),
        id in any_id(),
        code in any_text(),
        params in proptest::collection::vec(any_text(), 0..4),
    ) {
        let sent = response(version, id, Err(XapiFault::new(code, params)));
        prop_assert_eq!(decode_response(&encode_response(&sent)).unwrap(), sent);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode_request(&bytes);
        let _ = decode_response(&bytes);
    }

    #[test]
    fn json_rpc_soup_never_panics(document in json_rpc_soup()) {
        let _ = decode_request(document.as_bytes());
        let _ = decode_response(document.as_bytes());
    }
}
