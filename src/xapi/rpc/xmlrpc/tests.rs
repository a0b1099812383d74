use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::xapi::rpc::MAX_NESTING_DEPTH;
use crate::xapi::rpc::test_support::{
    any_finite_double, any_value, map_leaves, nested_arrays, xml_text,
};

const SESSION: &str = "OpaqueRef:8c5dbb4a-8f9e-4d0c-a5a4-1c0e52b1d8b7";

fn text(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).unwrap()
}

fn error_message(result: Result<impl std::fmt::Debug, RpcCodecError>) -> String {
    result.unwrap_err().to_string()
}

// ---- Byte-exact envelopes, as xapi writes them (ocaml-rpc `xmlrpc.ml`) ----

#[test]
fn failure_envelope_is_byte_exact_both_ways() {
    // Reference §2.1: Status=Failure, ErrorDescription=["SESSION_INVALID", "OpaqueRef:…"].
    let wire = concat!(
        r#"<?xml version="1.0"?><methodResponse><params><param><value><struct>"#,
        "<member><name>Status</name><value>Failure</value></member>",
        "<member><name>ErrorDescription</name><value><array><data>",
        "<value>SESSION_INVALID</value>",
        "<value>OpaqueRef:8c5dbb4a-8f9e-4d0c-a5a4-1c0e52b1d8b7</value>",
        "</data></array></value></member>",
        "</struct></value></param></params></methodResponse>"
    );
    let response: Response = Err(XapiFault::new("SESSION_INVALID", [SESSION]));
    assert_eq!(
        text(&encode_response(&response, IntEncoding::AsString)),
        wire
    );
    assert_eq!(decode_response(wire.as_bytes()).unwrap(), response);
}

#[test]
fn success_envelope_is_byte_exact_both_ways() {
    let wire = concat!(
        r#"<?xml version="1.0"?><methodResponse><params><param><value><struct>"#,
        "<member><name>Status</name><value>Success</value></member>",
        "<member><name>Value</name><value>OpaqueRef:8c5dbb4a-8f9e-4d0c-a5a4-1c0e52b1d8b7</value></member>",
        "</struct></value></param></params></methodResponse>"
    );
    let response: Response = Ok(Value::from(SESSION));
    assert_eq!(
        text(&encode_response(&response, IntEncoding::AsString)),
        wire
    );
    assert_eq!(decode_response(wire.as_bytes()).unwrap(), response);
}

#[test]
fn list_methods_comes_back_bare_and_decodes_as_the_result() {
    // Reference §2.2: xapi answers system.listMethods without the Status envelope.
    let wire = concat!(
        r#"<?xml version="1.0"?><methodResponse><params><param><value><array><data>"#,
        "<value>VM.get_all_records</value><value>system.listMethods</value>",
        "</data></array></value></param></params></methodResponse>"
    );
    let methods = Value::from(vec!["VM.get_all_records", "system.listMethods"]);
    assert_eq!(
        text(&encode_bare_response(&methods, IntEncoding::AsString)),
        wire
    );
    assert_eq!(decode_response(wire.as_bytes()).unwrap(), Ok(methods));
}

#[test]
fn call_is_byte_exact_as_xapi_writes_it() {
    let call = Call::new(
        "VDI.resize",
        vec![
            SESSION.into(),
            "OpaqueRef:vdi".into(),
            Value::Int(2_190_433_320_960),
        ],
    );
    let wire = concat!(
        r#"<?xml version="1.0"?><methodCall><methodName>VDI.resize</methodName><params>"#,
        "<param><value>OpaqueRef:8c5dbb4a-8f9e-4d0c-a5a4-1c0e52b1d8b7</value></param>",
        "<param><value>OpaqueRef:vdi</value></param>",
        "<param><value>2190433320960</value></param>",
        "</params></methodCall>"
    );
    assert_eq!(text(&encode_call(&call, IntEncoding::AsString)), wire);
    let decoded = decode_call(wire.as_bytes()).unwrap();
    // xapi's untyped int comes back as its decimal text, which `as_i64` reads.
    assert_eq!(decoded.params[2], Value::from("2190433320960"));
    assert_eq!(decoded.params[2].as_i64(), Some(2_190_433_320_960));
}

#[test]
fn typed_ints_use_int_within_32_bits_and_i8_beyond() {
    let small = encode_value(&Value::Int(-5), IntEncoding::Typed);
    assert_eq!(small, "<value><int>-5</int></value>");
    let large = encode_value(&Value::Int(1 << 40), IntEncoding::Typed);
    assert_eq!(large, "<value><i8>1099511627776</i8></value>");
}

#[test]
fn every_scalar_is_written_as_xapi_writes_it() {
    let record = Value::from(BTreeMap::from([
        ("b", Value::Bool(true)),
        ("d", Value::Double(0.5)),
        ("t", Value::DateTime("20250319T04:16:24Z".into())),
        ("n", Value::Nil),
        ("s", Value::from("a<b&c>\"d\"\r")),
        ("e", Value::Struct(BTreeMap::new())),
        ("a", Value::Array(vec![])),
    ]));
    assert_eq!(
        encode_value(&record, IntEncoding::AsString),
        concat!(
            "<value><struct>",
            "<member><name>a</name><value><array><data></data></array></value></member>",
            "<member><name>b</name><value><boolean>1</boolean></value></member>",
            "<member><name>d</name><value><double>0.5</double></value></member>",
            "<member><name>e</name><value><struct></struct></value></member>",
            "<member><name>n</name><value><nil/></value></member>",
            "<member><name>s</name><value>a&lt;b&amp;c&gt;&quot;d&quot;&#13;</value></member>",
            "<member><name>t</name><value><dateTime.iso8601>20250319T04:16:24Z</dateTime.iso8601></value></member>",
            "</struct></value>"
        )
    );
}

#[test]
fn characters_xml_cannot_carry_are_dropped_as_xapi_does() {
    assert_eq!(
        encode_value(&Value::from("a\u{1}b\u{FFFE}c"), IntEncoding::AsString),
        "<value>abc</value>"
    );
}

// ---- Decoding what real clients send ----

#[test]
fn decodes_a_python_xmlrpc_client_call() {
    // Python's xmlrpc.client: typed strings, newlines between elements.
    let wire = "<?xml version='1.0'?>\n<methodCall>\n<methodName>VM.add_to_other_config</methodName>\n\
        <params>\n<param>\n<value><string>OpaqueRef:s</string></value>\n</param>\n\
        <param>\n<value><struct>\n<member>\n<name>k</name>\n<value><int>4</int></value>\n</member>\n\
        <member>\n<name>list</name>\n<value><array><data>\n<value><boolean>0</boolean></value>\n\
        <value><double>1.5</double></value>\n<value><nil/></value>\n</data></array></value>\n</member>\n\
        </struct></value>\n</param>\n</params>\n</methodCall>\n";
    let call = decode_call(wire.as_bytes()).unwrap();
    assert_eq!(call.method, "VM.add_to_other_config");
    assert_eq!(
        call.params,
        vec![
            Value::from("OpaqueRef:s"),
            Value::from(BTreeMap::from([
                ("k", Value::Int(4)),
                (
                    "list",
                    Value::Array(vec![Value::Bool(false), Value::Double(1.5), Value::Nil]),
                ),
            ])),
        ]
    );
}

#[test]
fn calls_without_params_decode() {
    for wire in [
        "<methodCall><methodName>system.listMethods</methodName></methodCall>",
        "<methodCall><methodName>system.listMethods</methodName><params/></methodCall>",
        "<?xml version='1.0'?>\n<methodCall>\n<methodName>system.listMethods</methodName>\n<params>\n</params>\n</methodCall>\n",
    ] {
        let call = decode_call(wire.as_bytes()).unwrap();
        assert_eq!(call, Call::new("system.listMethods", vec![]), "{wire}");
    }
}

#[test]
fn every_int_spelling_is_accepted() {
    for (wire, expected) in [
        ("<value><int>42</int></value>", Value::Int(42)),
        ("<value><i4>-42</i4></value>", Value::Int(-42)),
        (
            "<value><i8> 9223372036854775807 </i8></value>",
            Value::Int(i64::MAX),
        ),
        ("<value>42</value>", Value::from("42")),
        ("<value><string>42</string></value>", Value::from("42")),
    ] {
        let value = decode_value(wire).unwrap();
        assert_eq!(value, expected, "{wire}");
        assert!(value.as_i64().is_some(), "{wire}");
    }
}

#[test]
fn entities_character_references_and_cdata_are_unescaped() {
    let wire =
        "<value>a &amp; b &lt;c&gt; &quot;&apos; &#233;&#x41;<![CDATA[<raw & text>]]></value>";
    assert_eq!(
        decode_value(wire).unwrap(),
        Value::from("a & b <c> \"' éA<raw & text>")
    );
}

#[test]
fn untyped_and_string_values_keep_their_whitespace() {
    assert_eq!(
        decode_value("<value>  two  </value>").unwrap(),
        Value::from("  two  ")
    );
    assert_eq!(
        decode_value("<value><string> x\n</string></value>").unwrap(),
        Value::from(" x\n")
    );
    assert_eq!(
        decode_value("<value>\n  <int>3</int>\n</value>").unwrap(),
        Value::Int(3)
    );
}

#[test]
fn empty_forms_decode_as_xapi_does() {
    for (wire, expected) in [
        ("<value/>", Value::void()),
        ("<value></value>", Value::void()),
        ("<value><string/></value>", Value::void()),
        ("<value><array/></value>", Value::Array(vec![])),
        (
            "<value><array><data/></array></value>",
            Value::Array(vec![]),
        ),
        ("<value><struct/></value>", Value::Struct(BTreeMap::new())),
        ("<value><nil></nil></value>", Value::Nil),
    ] {
        assert_eq!(decode_value(wire).unwrap(), expected, "{wire}");
    }
}

#[test]
fn task_results_decode_in_all_three_shapes() {
    // Reference §2.6: empty string (void), a bare opaque ref, or an XML-RPC value.
    assert_eq!(decode_value("").unwrap(), Value::void());
    assert_eq!(
        decode_value("OpaqueRef:abcd").unwrap(),
        Value::from("OpaqueRef:abcd")
    );
    assert_eq!(
        decode_value("<value>OpaqueRef:abcd</value>").unwrap(),
        Value::from("OpaqueRef:abcd")
    );
    let stored = encode_value(&Value::from("OpaqueRef:abcd"), IntEncoding::AsString);
    assert_eq!(stored, "<value>OpaqueRef:abcd</value>");
}

#[test]
fn a_fault_becomes_a_fault_error_with_code_and_string() {
    let wire = "<?xml version=\"1.0\"?><methodResponse><fault><value><struct>\
        <member><name>faultCode</name><value><int>4</int></value></member>\
        <member><name>faultString</name><value><string>Too many parameters.</string></value></member>\
        </struct></value></fault></methodResponse>";
    assert_eq!(
        decode_response(wire.as_bytes()).unwrap(),
        Err(XapiFault::new(FAULT_CODE, ["4", "Too many parameters."]))
    );
}

#[test]
fn a_struct_result_without_status_is_returned_as_is() {
    let record = Value::from(BTreeMap::from([("uuid", "u")]));
    let wire = encode_bare_response(&record, IntEncoding::AsString);
    assert_eq!(decode_response(&wire).unwrap(), Ok(record));
}

// ---- Errors say what and where ----

#[test]
fn a_bad_int_is_reported_with_its_line_element_and_text() {
    let wire = "<methodCall>\n<methodName>x</methodName>\n<params>\n<param><value><int>12abc</int></value></param>\n</params>\n</methodCall>";
    let message = error_message(decode_call(wire.as_bytes()));
    assert!(message.contains("line 4"), "{message}");
    assert!(message.contains("<int>"), "{message}");
    assert!(
        message.contains("\"12abc\" is not a 64-bit integer"),
        "{message}"
    );
}

#[test]
fn an_html_error_page_is_rejected_naming_its_root() {
    let message = error_message(decode_response(b"<html><body>500</body></html>"));
    assert!(
        message.contains("<html> is not an XML-RPC element"),
        "{message}"
    );
    assert!(message.contains("line 1, byte 0"), "{message}");
}

#[test]
fn malformed_documents_are_rejected_with_a_position() {
    for (wire, expected) in [
        (&b"<methodResponse><params></param>"[..], "malformed XML"),
        (b"<value>\xff</value>", "not valid UTF-8"),
        (b"<methodResponse><params><param><value>&bogus;</value></param></params></methodResponse>", "unknown entity &bogus;"),
        (b"<methodResponse><params><param><value>x</value></param><param><value>y</value></param></params></methodResponse>", "expected </params>, found <param>"),
        (b"<methodResponse><params><param><value>x</value></param></params></methodResponse><x/>", "<x> is not an XML-RPC element"),
        (b"<methodResponse></methodResponse>", "expected <params> holding one value, or <fault>"),
        (b"<methodResponse><params><param><value><base64>AA==</base64></value></param></params></methodResponse>", "<base64>"),
        (b"<methodResponse><params><param><value><boolean>yes</boolean></value></param></params></methodResponse>", "not a boolean"),
        (b"<methodResponse><params><param><value><struct><member><value>v</value></member></struct></value></param></params></methodResponse>", "expected <name>, found <value>"),
        (b"<methodResponse><params><param><value>a<int>1</int></value></param></params></methodResponse>", "either text or one typed element"),
        (b"<methodResponse><params><param><value><array><data>junk</data></array></value></param></params></methodResponse>", "unexpected text \"junk\""),
        (b"<methodResponse><params><param><value><i4>1", "the end of the input"),
        (b"", "expected <methodResponse>, found the end of the input"),
        (b"<methodResponse><params><param><value>\x01</value></param></params></methodResponse>", "U+0001 is not allowed"),
        (b"<methodResponse><params><param><value>&#1;</value></param></params></methodResponse>", "U+0001 is not allowed"),
    ] {
        let message = error_message(decode_response(wire));
        assert!(message.contains(expected), "{message} does not mention {expected:?}");
        assert!(message.contains("line "), "{message} has no position");
    }
}

#[test]
fn malformed_envelopes_are_rejected_with_the_reason() {
    let respond = |members: &str| {
        format!(
            "<methodResponse><params><param><value><struct>{members}</struct></value></param></params></methodResponse>"
        )
    };
    for (members, expected) in [
        (
            "<member><name>Status</name><value>Success</value></member>",
            "no Value member",
        ),
        (
            "<member><name>Status</name><value>Failure</value></member>",
            "no ErrorDescription member",
        ),
        (
            "<member><name>Status</name><value>Pending</value></member>",
            "found \"Pending\"",
        ),
        (
            "<member><name>Status</name><value>Failure</value></member><member><name>ErrorDescription</name><value><array><data></data></array></value></member>",
            "no error code",
        ),
    ] {
        let message = error_message(decode_response(respond(members).as_bytes()));
        assert!(
            message.contains(expected),
            "{message} does not mention {expected:?}"
        );
    }
}

// ---- Hostile nesting ----

const HOSTILE_DEPTH: usize = 100_000;

fn deeply_nested_value(depth: usize) -> String {
    format!(
        "{}{}",
        "<value><array><data>".repeat(depth),
        "</data></array></value>".repeat(depth)
    )
}

#[test]
fn a_hundred_thousand_levels_fail_fast_in_every_decoder() {
    let value = deeply_nested_value(HOSTILE_DEPTH);
    let call = format!(
        "<methodCall><methodName>m</methodName><params><param>{value}</param></params></methodCall>"
    );
    let response =
        format!("<methodResponse><params><param>{value}</param></params></methodResponse>");
    for message in [
        error_message(decode_value(&value)),
        error_message(decode_call(call.as_bytes())),
        error_message(decode_response(response.as_bytes())),
    ] {
        assert!(message.contains("nested deeper than 64"), "{message}");
    }
    let structs = format!(
        "{}{}",
        "<value><struct><member><name>k</name>".repeat(HOSTILE_DEPTH),
        "</member></struct></value>".repeat(HOSTILE_DEPTH)
    );
    assert!(error_message(decode_value(&structs)).contains("nested deeper than 64"));
}

#[test]
fn nesting_is_accepted_up_to_the_limit_and_not_beyond() {
    let deepest = encode_value(&nested_arrays(MAX_NESTING_DEPTH), IntEncoding::AsString);
    assert_eq!(
        decode_value(&deepest).unwrap(),
        nested_arrays(MAX_NESTING_DEPTH)
    );
    let too_deep = encode_value(&nested_arrays(MAX_NESTING_DEPTH + 1), IntEncoding::AsString);
    assert!(decode_value(&too_deep).is_err());
}

// ---- Properties ----

fn xml_value() -> BoxedStrategy<Value> {
    any_value(xml_text(), any_finite_double())
}

/// Fragments of XML-RPC, so random documents get past the first element often.
fn xml_rpc_soup() -> impl Strategy<Value = String> {
    let fragment = proptest::sample::select(vec![
        "<methodResponse>",
        "</methodResponse>",
        "<methodCall>",
        "<methodName>m</methodName>",
        "<params>",
        "</params>",
        "<param>",
        "</param>",
        "<fault>",
        "</fault>",
        "<value>",
        "</value>",
        "<value/>",
        "<array>",
        "</array>",
        "<data>",
        "</data>",
        "<struct>",
        "</struct>",
        "<member>",
        "</member>",
        "<name>",
        "</name>",
        "<int>",
        "</int>",
        "<i8>",
        "<boolean>",
        "</boolean>",
        "<double>",
        "<nil/>",
        "<string>",
        "</string>",
        "Status",
        "Success",
        "Failure",
        "Value",
        "ErrorDescription",
        "1",
        "-",
        "x",
        " ",
        "&amp;",
        "&#0;",
        "&#x110000;",
        "&",
        "<![CDATA[",
        "]]>",
        "<!--",
        "-->",
        "<?xml version=\"1.0\"?>",
    ]);
    proptest::collection::vec(fragment, 0..40).prop_map(|fragments| fragments.concat())
}

proptest! {
    #[test]
    fn typed_values_round_trip(value in xml_value()) {
        let encoded = encode_value(&value, IntEncoding::Typed);
        prop_assert_eq!(decode_value(&encoded).unwrap(), value);
    }

    #[test]
    fn xapi_encoding_round_trips_with_ints_as_decimal_text(value in xml_value()) {
        let encoded = encode_value(&value, IntEncoding::AsString);
        let expected = map_leaves(value, &|leaf| match leaf {
            Value::Int(n) => Value::String(n.to_string()),
            other => other,
        });
        prop_assert_eq!(decode_value(&encoded).unwrap(), expected);
    }

    #[test]
    fn calls_round_trip(method in "[A-Za-z_.]{1,20}", params in proptest::collection::vec(xml_value(), 0..4)) {
        let call = Call::new(method, params);
        prop_assert_eq!(decode_call(&encode_call(&call, IntEncoding::Typed)).unwrap(), call);
    }

    #[test]
    fn responses_round_trip(
        value in xml_value(),
        code in "[A-Z_]{1,20}",
        params in proptest::collection::vec(xml_text(), 0..4),
    ) {
        let success: Response = Ok(value);
        prop_assert_eq!(decode_response(&encode_response(&success, IntEncoding::Typed)).unwrap(), success);
        let failure: Response = Err(XapiFault::new(code, params));
        prop_assert_eq!(decode_response(&encode_response(&failure, IntEncoding::Typed)).unwrap(), failure);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode_call(&bytes);
        let _ = decode_response(&bytes);
        let _ = decode_value(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn xml_rpc_soup_never_panics(document in xml_rpc_soup()) {
        let _ = decode_call(document.as_bytes());
        let _ = decode_response(document.as_bytes());
        let _ = decode_value(&document);
    }
}
