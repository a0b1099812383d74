//! Feeds arbitrary bytes to the JSON-RPC decoders. Decoders must never panic; whatever they
//! accept must re-encode into a message they accept again.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vhdsync::xapi::rpc::jsonrpc;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = jsonrpc::decode_request(data) {
        let encoded = jsonrpc::encode_request(&request);
        let again = jsonrpc::decode_request(&encoded).expect("an encoded request decodes");
        assert_eq!(again.id, request.id);
        assert_eq!(again.call.method, request.call.method);
    }
    if let Ok(response) = jsonrpc::decode_response(data) {
        let encoded = jsonrpc::encode_response(&response);
        let again = jsonrpc::decode_response(&encoded).expect("an encoded response decodes");
        assert_eq!(again.id, response.id);
        assert_eq!(again.response.is_ok(), response.response.is_ok());
    }
});
