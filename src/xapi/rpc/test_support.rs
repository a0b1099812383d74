//! Value generators shared by the codecs' property tests.

use proptest::prelude::*;

use super::value::Value;
use super::xmlrpc::is_xml_char;

/// Any Unicode text, which JSON carries entirely.
pub(crate) fn any_text() -> BoxedStrategy<String> {
    proptest::collection::vec(any::<char>(), 0..12)
        .prop_map(String::from_iter)
        .boxed()
}

/// Text XML 1.0 can carry (everything but most control characters); markup characters,
/// `\r` and non-ASCII come up often.
pub(crate) fn xml_text() -> BoxedStrategy<String> {
    let ch = prop_oneof![
        any::<char>().prop_map(|ch| if is_xml_char(ch) { ch } else { '?' }),
        proptest::sample::select(vec![
            '<', '>', '&', '"', '\'', '\r', '\n', '\t', ' ', ';', '#'
        ]),
    ];
    proptest::collection::vec(ch, 0..12)
        .prop_map(String::from_iter)
        .boxed()
}

/// Every finite double; Rust's XML double formatting and parsing round-trip exactly.
pub(crate) fn any_finite_double() -> BoxedStrategy<f64> {
    use proptest::num::f64::{NEGATIVE, NORMAL, POSITIVE, SUBNORMAL, ZERO};
    (POSITIVE | NEGATIVE | NORMAL | SUBNORMAL | ZERO).boxed()
}

/// Doubles with at most ten significant digits. `serde_json`'s default float parser is exact
/// only for such short decimals (exact round-trips need its `float_roundtrip` feature).
pub(crate) fn short_decimal_double() -> BoxedStrategy<f64> {
    (any::<i32>(), 0..=10i32)
        .prop_map(|(mantissa, scale)| f64::from(mantissa) / 10f64.powi(scale))
        .boxed()
}

/// Values of every kind, a few levels deep.
pub(crate) fn any_value(
    text: BoxedStrategy<String>,
    double: BoxedStrategy<f64>,
) -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        text.clone().prop_map(Value::String),
        any::<i64>().prop_map(Value::Int),
        double.prop_map(Value::Double),
        any::<bool>().prop_map(Value::Bool),
        "[0-9]{8}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z".prop_map(Value::DateTime),
        Just(Value::Nil),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(text.clone(), inner, 0..6).prop_map(Value::Struct),
        ]
    })
    .boxed()
}

/// Maps every leaf of `value` through `leaf`, to state what a lossy encoding turns it into.
pub(crate) fn map_leaves(value: Value, leaf: &impl Fn(Value) -> Value) -> Value {
    match value {
        Value::Array(items) => Value::Array(
            items
                .into_iter()
                .map(|item| map_leaves(item, leaf))
                .collect(),
        ),
        Value::Struct(members) => Value::Struct(
            members
                .into_iter()
                .map(|(name, member)| (name, map_leaves(member, leaf)))
                .collect(),
        ),
        scalar => leaf(scalar),
    }
}

/// `depth` levels of arrays around an empty string, built iteratively.
pub(crate) fn nested_arrays(depth: usize) -> Value {
    (0..depth).fold(Value::void(), |inner, _| Value::Array(vec![inner]))
}
