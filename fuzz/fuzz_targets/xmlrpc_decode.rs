//! Feeds arbitrary bytes to every XML-RPC decoder. Decoders must never panic; whatever
//! they accept must re-encode into a document they accept again, encoded identically.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vhdsync::xapi::rpc::xmlrpc::{self, IntEncoding};

fuzz_target!(|data: &[u8]| {
    if let Ok(call) = xmlrpc::decode_call(data) {
        let encoded = xmlrpc::encode_call(&call, IntEncoding::Typed);
        let again = xmlrpc::decode_call(&encoded).expect("an encoded call decodes");
        assert_eq!(xmlrpc::encode_call(&again, IntEncoding::Typed), encoded);
    }
    if let Ok(response) = xmlrpc::decode_response(data) {
        let encoded = xmlrpc::encode_response(&response, IntEncoding::Typed);
        let again = xmlrpc::decode_response(&encoded).expect("an encoded response decodes");
        assert_eq!(xmlrpc::encode_response(&again, IntEncoding::Typed), encoded);
    }
    if let Ok(value) = xmlrpc::decode_value(&String::from_utf8_lossy(data)) {
        let encoded = xmlrpc::encode_value(&value, IntEncoding::Typed);
        let again = xmlrpc::decode_value(&encoded).expect("an encoded value decodes");
        assert_eq!(xmlrpc::encode_value(&again, IntEncoding::Typed), encoded);
    }
});
