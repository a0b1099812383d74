//! Writing values as XML-RPC, byte for byte the way xapi (ocaml-rpc's `xmlrpc.ml`) does.

use crate::xapi::rpc::value::Value;

/// How to write [`Value::Int`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntEncoding {
    /// What xapi writes: untyped `<value>123</value>`, which every XML-RPC reader takes as
    /// a string. Lossless for 64-bit values, which `<int>` cannot carry for Python clients.
    /// Use it to answer as xapi does, and for calls to real hosts (XO does the same).
    AsString,
    /// Typed: `<int>` within the 32-bit range, `<i8>` beyond. Decodes back to
    /// [`Value::Int`], for peers that want to see the type.
    Typed,
}

/// Encoding is infallible: values come from our own code, not from the wire.
pub(super) struct XmlWriter {
    out: String,
    ints: IntEncoding,
}

impl XmlWriter {
    pub(super) fn new(ints: IntEncoding) -> Self {
        Self {
            out: String::new(),
            ints,
        }
    }

    pub(super) fn finish(self) -> String {
        self.out
    }

    /// Markup written as is; never pass input-derived text here.
    pub(super) fn markup(&mut self, markup: &str) -> &mut Self {
        self.out.push_str(markup);
        self
    }

    /// Character data, escaped.
    ///
    /// Written by hand rather than with `quick_xml::escape`, which neither drops the
    /// characters XML 1.0 cannot carry at all (xapi drops them too) nor protects `\r` from
    /// the end-of-line normalisation every XML reader applies.
    pub(super) fn text(&mut self, text: &str) -> &mut Self {
        for ch in text.chars() {
            match ch {
                '<' => self.out.push_str("&lt;"),
                '>' => self.out.push_str("&gt;"),
                '&' => self.out.push_str("&amp;"),
                '"' => self.out.push_str("&quot;"),
                '\r' => self.out.push_str("&#13;"),
                ch if is_xml_char(ch) => self.out.push(ch),
                _ => {}
            }
        }
        self
    }

    pub(super) fn value(&mut self, value: &Value) -> &mut Self {
        match value {
            Value::String(text) => self.markup("<value>").text(text).markup("</value>"),
            Value::Int(n) => match self.ints {
                IntEncoding::AsString => self
                    .markup("<value>")
                    .markup(&n.to_string())
                    .markup("</value>"),
                IntEncoding::Typed if i32::try_from(*n).is_ok() => self
                    .markup("<value><int>")
                    .markup(&n.to_string())
                    .markup("</int></value>"),
                IntEncoding::Typed => self
                    .markup("<value><i8>")
                    .markup(&n.to_string())
                    .markup("</i8></value>"),
            },
            // Rust's shortest representation that parses back to the same double
            // (`1e300`, `0.1`, `inf`), which Python, JavaScript and OCaml all read.
            Value::Double(x) => self
                .markup("<value><double>")
                .markup(&format!("{x:?}"))
                .markup("</double></value>"),
            Value::Bool(b) => self.markup(if *b {
                "<value><boolean>1</boolean></value>"
            } else {
                "<value><boolean>0</boolean></value>"
            }),
            Value::DateTime(text) => self
                .markup("<value><dateTime.iso8601>")
                .text(text)
                .markup("</dateTime.iso8601></value>"),
            Value::Array(items) => {
                self.markup("<value><array><data>");
                for item in items {
                    self.value(item);
                }
                self.markup("</data></array></value>")
            }
            Value::Struct(members) => {
                self.markup("<value><struct>");
                for (name, member) in members {
                    self.member(name, member);
                }
                self.markup("</struct></value>")
            }
            Value::Nil => self.markup("<value><nil/></value>"),
        }
    }

    pub(super) fn member(&mut self, name: &str, value: &Value) -> &mut Self {
        self.markup("<member><name>")
            .text(name)
            .markup("</name>")
            .value(value)
            .markup("</member>")
    }
}

/// XML 1.0's `Char` production; Rust's `char` already excludes surrogates.
pub(crate) fn is_xml_char(ch: char) -> bool {
    matches!(ch, '\t' | '\n' | '\r' | '\u{20}'..='\u{FFFD}' | '\u{10000}'..)
}
