//! The tuple layer's decoder (`origin/src/store/tuple.rs`) and the key parsers built on it
//! (`tuple::last_str`, `tuple::last_u64`, `keys::log_position`), on any bytes.
//!
//! Checks that nothing panics; that what unpacks packs again (`Key::element`) to bytes no
//! longer than it came in, which unpack to the same elements and pack to the same bytes; that
//! the parsers agree with `unpack`; that `log_position` reads back exactly the keys
//! `log_entry` writes; and the layer's reason to exist: packed byte order is tuple order.
//!
//! Input: byte 0 picks where to split the rest into two tuples for the ordering check.
#![no_main]

use std::cmp::Ordering;

use libfuzzer_sys::fuzz_target;
use selvage_origin::store::keys;
use selvage_origin::store::tuple::{self, Element, Key};

fn pack(elements: &[Element]) -> Vec<u8> {
    elements.iter().fold(Key::new(), |k, e| k.element(e)).finish()
}

/// Tuple order: by type (null, bytes, string, integers, versionstamps), then by value.
fn cmp_element(a: &Element, b: &Element) -> Ordering {
    fn rank(e: &Element) -> u8 {
        match e {
            Element::Null => 0,
            Element::Bytes(_) => 1,
            Element::Str(_) => 2,
            Element::Int(_) | Element::UInt(_) => 3,
            Element::Versionstamp(_) => 4,
        }
    }
    fn int(e: &Element) -> i128 {
        match e {
            Element::Int(v) => i128::from(*v),
            Element::UInt(v) => i128::from(*v),
            _ => 0,
        }
    }
    match (a, b) {
        (Element::Bytes(x), Element::Bytes(y)) => x.cmp(y),
        (Element::Str(x), Element::Str(y)) => x.as_bytes().cmp(y.as_bytes()),
        (Element::Versionstamp(x), Element::Versionstamp(y)) => x.cmp(y),
        _ if rank(a) == rank(b) => int(a).cmp(&int(b)),
        _ => rank(a).cmp(&rank(b)),
    }
}

fn cmp_tuple(a: &[Element], b: &[Element]) -> Ordering {
    for (x, y) in a.iter().zip(b) {
        match cmp_element(x, y) {
            Ordering::Equal => {}
            other => return other,
        }
    }
    a.len().cmp(&b.len())
}

/// Unpacks `bytes` and checks the round trip and the parsers; answers the elements.
fn decode(bytes: &[u8]) -> Option<Vec<Element>> {
    let unpacked = tuple::unpack(bytes);
    let last = unpacked.as_ref().ok().and_then(|e| e.last());
    assert_eq!(tuple::last_str(bytes), last.and_then(Element::as_str).map(str::to_string));
    assert_eq!(tuple::last_u64(bytes), last.and_then(Element::as_u64));
    if let Some(position) = keys::log_position(bytes) {
        assert_eq!(keys::log_entry(&position), bytes, "log_position read a key log_entry does not write");
        let elements = unpacked.as_ref().expect("a log key unpacks");
        assert_eq!(elements.len(), 2);
        assert_eq!(elements[1], Element::Versionstamp(position));
    }
    let elements = unpacked.ok()?;
    let packed = pack(&elements);
    assert!(packed.len() <= bytes.len(), "packing {elements:?} grew it");
    assert_eq!(tuple::unpack(&packed).as_ref(), Ok(&elements), "packed elements unpack differently");
    if let Some(position) = keys::log_position(&packed) {
        assert_eq!(keys::log_entry(&position), packed);
    }
    Some(elements)
}

fuzz_target!(|data: &[u8]| {
    let [split, rest @ ..] = data else { return };
    decode(rest);
    let at = usize::from(*split).min(rest.len());
    let (a, b) = rest.split_at(at);
    if let (Some(x), Some(y)) = (decode(a), decode(b)) {
        assert_eq!(pack(&x).cmp(&pack(&y)), cmp_tuple(&x, &y), "byte order is not tuple order: {x:?} vs {y:?}");
    }
});
