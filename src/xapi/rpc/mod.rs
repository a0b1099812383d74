//! XAPI RPC codecs (XML-RPC and JSON-RPC), shared by the client and the lab host. Sans-IO.
