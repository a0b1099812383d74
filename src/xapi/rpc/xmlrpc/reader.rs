//! Reading XML-RPC elements and values from a document, on top of quick-xml's pull parser.
//!
//! A recursive descent over quick-xml events. Recursion only happens for arrays and structs,
//! and [`MAX_NESTING_DEPTH`] bounds it before each step down, so hostile nesting fails fast
//! instead of exhausting the stack.

use std::borrow::Cow;
use std::collections::BTreeMap;

use quick_xml::Reader;
use quick_xml::escape::resolve_xml_entity;
use quick_xml::events::{BytesRef, BytesStart, Event};

use crate::xapi::rpc::MAX_NESTING_DEPTH;
use crate::xapi::rpc::error::{RpcCodecError, XmlPosition, excerpt, shorten};
use crate::xapi::rpc::value::Value;

use super::writer::is_xml_char;

/// The elements of XML-RPC; anything else is rejected where it appears.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tag {
    MethodCall,
    MethodName,
    MethodResponse,
    Params,
    Param,
    Fault,
    Value,
    String,
    Int,
    I4,
    I8,
    Boolean,
    Double,
    DateTime,
    Base64,
    Array,
    Data,
    Struct,
    Member,
    Name,
    Nil,
}

impl Tag {
    fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "methodCall" => Tag::MethodCall,
            "methodName" => Tag::MethodName,
            "methodResponse" => Tag::MethodResponse,
            "params" => Tag::Params,
            "param" => Tag::Param,
            "fault" => Tag::Fault,
            "value" => Tag::Value,
            "string" => Tag::String,
            "int" => Tag::Int,
            "i4" => Tag::I4,
            "i8" => Tag::I8,
            "boolean" => Tag::Boolean,
            "double" => Tag::Double,
            "dateTime.iso8601" => Tag::DateTime,
            "base64" => Tag::Base64,
            "array" => Tag::Array,
            "data" => Tag::Data,
            "struct" => Tag::Struct,
            "member" => Tag::Member,
            "name" => Tag::Name,
            "nil" => Tag::Nil,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Tag::MethodCall => "methodCall",
            Tag::MethodName => "methodName",
            Tag::MethodResponse => "methodResponse",
            Tag::Params => "params",
            Tag::Param => "param",
            Tag::Fault => "fault",
            Tag::Value => "value",
            Tag::String => "string",
            Tag::Int => "int",
            Tag::I4 => "i4",
            Tag::I8 => "i8",
            Tag::Boolean => "boolean",
            Tag::Double => "double",
            Tag::DateTime => "dateTime.iso8601",
            Tag::Base64 => "base64",
            Tag::Array => "array",
            Tag::Data => "data",
            Tag::Struct => "struct",
            Tag::Member => "member",
            Tag::Name => "name",
            Tag::Nil => "nil",
        }
    }
}

/// The element whose content is being read, named in error messages.
#[derive(Debug, Clone, Copy)]
pub(super) enum Within {
    Document,
    Element(Tag),
}

impl Within {
    fn describe(self) -> String {
        match self {
            Within::Document => "the document".to_owned(),
            Within::Element(tag) => format!("<{}>", tag.name()),
        }
    }
}

/// What the value grammar sees of the XML: elements, their ends and character data.
/// Comments, processing instructions, declarations and doctypes are skipped.
pub(super) enum Token<'a> {
    /// A start tag, or a self-closing one when `empty` (which has no matching [`Token::Close`]).
    Open {
        tag: Tag,
        empty: bool,
    },
    /// The end of the innermost open element; quick-xml checks that the names match.
    Close,
    /// A piece of character data: text, CDATA or one resolved entity or character reference.
    Text(Cow<'a, str>),
    Eof,
}

pub(super) struct XmlReader<'a> {
    document: &'a str,
    reader: Reader<&'a [u8]>,
    /// Where the event being handled starts, for error positions.
    event_start: usize,
}

impl<'a> XmlReader<'a> {
    /// XAPI and its clients speak UTF-8 only; anything else is rejected up front, with the
    /// offset of the first invalid byte.
    pub(super) fn from_bytes(document: &'a [u8]) -> Result<Self, RpcCodecError> {
        let text = std::str::from_utf8(document).map_err(|error| {
            let byte = error.valid_up_to();
            let readable = String::from_utf8_lossy(&document[..byte]);
            RpcCodecError::XmlSyntax {
                at: XmlPosition::locate(&readable, byte),
                reason: "the document is not valid UTF-8".into(),
            }
        })?;
        Ok(Self::from_str(text))
    }

    pub(super) fn from_str(document: &'a str) -> Self {
        Self {
            document,
            reader: Reader::from_str(document),
            event_start: 0,
        }
    }

    /// An XML-RPC grammar error at the current event.
    pub(super) fn error(&self, within: Within, reason: impl Into<String>) -> RpcCodecError {
        self.error_at(self.event_start, within, reason)
    }

    fn error_at(&self, byte: usize, within: Within, reason: impl Into<String>) -> RpcCodecError {
        RpcCodecError::XmlRpc {
            at: XmlPosition::locate(self.document, byte),
            element: within.describe(),
            reason: reason.into(),
        }
    }

    fn next_token(&mut self, within: Within) -> Result<Token<'a>, RpcCodecError> {
        loop {
            self.event_start = offset(self.reader.buffer_position());
            let event = self
                .reader
                .read_event()
                .map_err(|error| RpcCodecError::XmlSyntax {
                    at: XmlPosition::locate(self.document, offset(self.reader.error_position())),
                    reason: error.to_string(),
                })?;
            return Ok(match event {
                Event::Start(start) => Token::Open {
                    tag: self.tag(&start, within)?,
                    empty: false,
                },
                Event::Empty(start) => Token::Open {
                    tag: self.tag(&start, within)?,
                    empty: true,
                },
                Event::End(_) => Token::Close,
                Event::Text(text) => Token::Text(self.legal(text.xml10_content(), within)?),
                Event::CData(cdata) => Token::Text(self.legal(cdata.xml10_content(), within)?),
                Event::GeneralRef(reference) => {
                    let resolved = self.resolve(&reference, within)?;
                    Token::Text(self.legal(resolved, within)?)
                }
                Event::Eof => Token::Eof,
                Event::Decl(_) | Event::PI(_) | Event::Comment(_) | Event::DocType(_) => continue,
            });
        }
    }

    fn tag(&self, start: &BytesStart<'_>, within: Within) -> Result<Tag, RpcCodecError> {
        let name = start.name();
        Tag::from_name(name.as_ref()).ok_or_else(|| {
            self.error(
                within,
                format!("<{}> is not an XML-RPC element", shorten(name.as_ref())),
            )
        })
    }

    /// XML 1.0 allows only some characters, even as references; rejecting the rest, as
    /// xapi's and Python's parsers do, keeps decoded text exactly re-encodable.
    fn legal(&self, text: Cow<'a, str>, within: Within) -> Result<Cow<'a, str>, RpcCodecError> {
        match text.chars().find(|&ch| !is_xml_char(ch)) {
            None => Ok(text),
            Some(ch) => Err(self.error(
                within,
                format!("character U+{:04X} is not allowed in XML", u32::from(ch)),
            )),
        }
    }

    /// Only XML's predefined entities and character references exist here: XML-RPC has no
    /// DTD, and expanding nothing else rules out entity-expansion attacks.
    fn resolve(
        &self,
        reference: &BytesRef<'_>,
        within: Within,
    ) -> Result<Cow<'a, str>, RpcCodecError> {
        if let Some(text) = resolve_xml_entity(reference) {
            return Ok(Cow::Borrowed(text));
        }
        match reference.resolve_char_ref() {
            Ok(Some(ch)) => Ok(Cow::Owned(ch.to_string())),
            Ok(None) => Err(self.error(within, format!("unknown entity &{};", shorten(reference)))),
            Err(error) => Err(self.error(
                within,
                format!("bad character reference &{};: {error}", shorten(reference)),
            )),
        }
    }

    /// The next element start or end, skipping whitespace between elements.
    fn next_markup(&mut self, within: Within) -> Result<Token<'a>, RpcCodecError> {
        loop {
            match self.next_token(within)? {
                // Layout between elements.
                Token::Text(text) if is_xml_whitespace(&text) => {}
                Token::Text(text) => {
                    return Err(self.error(
                        within,
                        format!(
                            "unexpected text {}: only elements belong here",
                            excerpt(&text)
                        ),
                    ));
                }
                markup => return Ok(markup),
            }
        }
    }

    /// Reads the start of `wanted`, returning whether it is self-closing.
    pub(super) fn open(&mut self, within: Within, wanted: Tag) -> Result<bool, RpcCodecError> {
        match self.next_markup(within)? {
            Token::Open { tag, empty } if tag == wanted => Ok(empty),
            other => Err(self.unexpected(within, &format!("<{}>", wanted.name()), &other)),
        }
    }

    /// Reads the end of `element`, whose content has been consumed.
    pub(super) fn close(&mut self, element: Tag) -> Result<(), RpcCodecError> {
        match self.next_markup(Within::Element(element))? {
            Token::Close => Ok(()),
            other => Err(self.unexpected(
                Within::Element(element),
                &format!("</{}>", element.name()),
                &other,
            )),
        }
    }

    /// After the root element only comments, processing instructions and whitespace may follow.
    pub(super) fn end_of_document(&mut self) -> Result<(), RpcCodecError> {
        match self.next_markup(Within::Document)? {
            Token::Eof => Ok(()),
            other => Err(self.unexpected(Within::Document, "the end of the document", &other)),
        }
    }

    pub(super) fn next_child(&mut self, within: Tag) -> Result<Token<'a>, RpcCodecError> {
        self.next_markup(Within::Element(within))
    }

    pub(super) fn unexpected(
        &self,
        within: Within,
        expected: &str,
        found: &Token<'_>,
    ) -> RpcCodecError {
        let found = match found {
            Token::Open { tag, .. } => format!("<{}>", tag.name()),
            Token::Close => format!("the end of {}", within.describe()),
            Token::Text(text) => format!("text {}", excerpt(text)),
            Token::Eof => "the end of the input".to_owned(),
        };
        self.error(within, format!("expected {expected}, found {found}"))
    }

    /// The character data of a text-only element such as `<string>` or `<name>`, untrimmed.
    pub(super) fn text_content(
        &mut self,
        element: Tag,
        empty: bool,
    ) -> Result<String, RpcCodecError> {
        let mut content = String::new();
        if empty {
            return Ok(content);
        }
        loop {
            match self.next_token(Within::Element(element))? {
                Token::Text(piece) => content.push_str(&piece),
                Token::Close => return Ok(content),
                other => {
                    return Err(self.unexpected(
                        Within::Element(element),
                        &format!("text or </{}>", element.name()),
                        &other,
                    ));
                }
            }
        }
    }

    /// The content of a `<value>` whose start tag was just read, and its end tag.
    ///
    /// Untyped content is a string, as in XML-RPC's spec and xapi's own encoding of strings
    /// and 64-bit ints; whitespace around a typed element is layout. `depth` counts the
    /// arrays and structs around this value.
    pub(super) fn value(&mut self, empty: bool, depth: usize) -> Result<Value, RpcCodecError> {
        let mut text = String::new();
        if empty {
            return Ok(Value::String(text));
        }
        loop {
            match self.next_token(Within::Element(Tag::Value))? {
                Token::Text(piece) => text.push_str(&piece),
                Token::Close => return Ok(Value::String(text)),
                Token::Open { tag, empty } if is_xml_whitespace(&text) => {
                    let value = self.typed_value(tag, empty, depth)?;
                    self.close(Tag::Value)?;
                    return Ok(value);
                }
                other => {
                    return Err(self.unexpected(
                        Within::Element(Tag::Value),
                        "either text or one typed element",
                        &other,
                    ));
                }
            }
        }
    }

    fn typed_value(&mut self, tag: Tag, empty: bool, depth: usize) -> Result<Value, RpcCodecError> {
        let start = self.event_start;
        let within = Within::Element(tag);
        let invalid = |reader: &Self, what: &str, text: &str| {
            reader.error_at(start, within, format!("{} is not {what}", excerpt(text)))
        };
        Ok(match tag {
            Tag::String => Value::String(self.text_content(tag, empty)?),
            Tag::Int | Tag::I4 | Tag::I8 => {
                let text = self.text_content(tag, empty)?;
                let number = text.trim().parse();
                Value::Int(number.map_err(|_| invalid(self, "a 64-bit integer", &text))?)
            }
            Tag::Boolean => match self.text_content(tag, empty)?.trim() {
                "1" => Value::Bool(true),
                "0" => Value::Bool(false),
                other => return Err(invalid(self, "a boolean (0 or 1)", other)),
            },
            Tag::Double => {
                let text = self.text_content(tag, empty)?;
                let number = text.trim().parse();
                Value::Double(number.map_err(|_| invalid(self, "a double", &text))?)
            }
            Tag::DateTime => Value::DateTime(self.text_content(tag, empty)?.trim().to_owned()),
            Tag::Nil => match self.text_content(tag, empty)? {
                text if is_xml_whitespace(&text) => Value::Nil,
                text => return Err(invalid(self, "empty, as <nil/> must be", &text)),
            },
            Tag::Array => self.array(empty, depth)?,
            Tag::Struct => self.structure(empty, depth)?,
            Tag::Base64 => {
                return Err(self.error_at(
                    start,
                    within,
                    "XAPI never sends <base64>; it is not supported",
                ));
            }
            other => {
                return Err(self.error_at(
                    start,
                    Within::Element(Tag::Value),
                    format!("<{}> is not a value type", other.name()),
                ));
            }
        })
    }

    fn enter_container(&self, tag: Tag, depth: usize) -> Result<(), RpcCodecError> {
        if depth >= MAX_NESTING_DEPTH {
            return Err(self.error(
                Within::Element(tag),
                format!("values nested deeper than {MAX_NESTING_DEPTH} arrays and structs"),
            ));
        }
        Ok(())
    }

    /// `<array><data><value>…</value>…</data></array>`; `<array/>` is accepted as empty, as xapi does.
    fn array(&mut self, empty: bool, depth: usize) -> Result<Value, RpcCodecError> {
        let mut items = Vec::new();
        if empty {
            return Ok(Value::Array(items));
        }
        self.enter_container(Tag::Array, depth)?;
        if !self.open(Within::Element(Tag::Array), Tag::Data)? {
            loop {
                match self.next_child(Tag::Data)? {
                    Token::Open {
                        tag: Tag::Value,
                        empty,
                    } => items.push(self.value(empty, depth + 1)?),
                    Token::Close => break,
                    other => {
                        return Err(self.unexpected(
                            Within::Element(Tag::Data),
                            "<value> or </data>",
                            &other,
                        ));
                    }
                }
            }
        }
        self.close(Tag::Array)?;
        Ok(Value::Array(items))
    }

    /// `<struct><member><name>…</name><value>…</value></member>…</struct>`.
    /// A repeated name keeps the last value, as Python's and JavaScript's decoders do.
    fn structure(&mut self, empty: bool, depth: usize) -> Result<Value, RpcCodecError> {
        let mut members = BTreeMap::new();
        if empty {
            return Ok(Value::Struct(members));
        }
        self.enter_container(Tag::Struct, depth)?;
        loop {
            match self.next_child(Tag::Struct)? {
                Token::Open {
                    tag: Tag::Member,
                    empty: false,
                } => {
                    let member = Within::Element(Tag::Member);
                    let name_empty = self.open(member, Tag::Name)?;
                    let name = self.text_content(Tag::Name, name_empty)?;
                    let value_empty = self.open(member, Tag::Value)?;
                    let value = self.value(value_empty, depth + 1)?;
                    self.close(Tag::Member)?;
                    members.insert(name, value);
                }
                Token::Close => return Ok(Value::Struct(members)),
                other => {
                    return Err(self.unexpected(
                        Within::Element(Tag::Struct),
                        "<member> with a name and a value, or </struct>",
                        &other,
                    ));
                }
            }
        }
    }
}

/// quick-xml positions are `u64`; the document is in memory, so they fit a `usize`.
fn offset(position: u64) -> usize {
    usize::try_from(position).unwrap_or(usize::MAX)
}

/// XML's whitespace (space, tab, CR, LF): the layout allowed between elements.
fn is_xml_whitespace(text: &str) -> bool {
    text.bytes()
        .all(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
}
