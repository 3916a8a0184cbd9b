//! The inverse of `arbitrary`'s decoding, for writing seed inputs.
//!
//! `arbitrary` 1.x decodes integers as little-endian bytes, `bool` as the low bit of a
//! byte, `Option<T>` as a `bool` then the value, `Vec<T>` as a sequence of elements each
//! preceded by a `true` byte and ended by a `false` byte, arrays element by element, and a
//! derived enum as a `u32` tag `t` selecting variant `(t * variants) >> 32` followed by the
//! variant's fields. [`Encode`] writes those bytes; [`fuzz_type!`] declares a struct or
//! enum with both `Arbitrary` and `Encode`, so the two cannot drift apart (the seed
//! generator also checks that every seed decodes back to the value it encoded).

/// Writes the bytes `arbitrary` decodes into `self`.
pub trait Encode {
    /// Appends this value's encoding to `out`.
    fn encode(&self, out: &mut Vec<u8>);

    /// This value's encoding.
    fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }
}

macro_rules! encode_int {
    ($($t:ty),*) => {
        $(impl Encode for $t {
            fn encode(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
        })*
    };
}
encode_int!(u8, u16, u32, u64, i8, i16, i32, i64);

impl Encode for bool {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(u8::from(*self));
    }
}

impl<T: Encode> Encode for Option<T> {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Some(v) => {
                true.encode(out);
                v.encode(out);
            }
            None => false.encode(out),
        }
    }
}

impl<T: Encode> Encode for Vec<T> {
    fn encode(&self, out: &mut Vec<u8>) {
        for v in self {
            true.encode(out);
            v.encode(out);
        }
        false.encode(out);
    }
}

impl<T: Encode, const N: usize> Encode for [T; N] {
    fn encode(&self, out: &mut Vec<u8>) {
        for v in self {
            v.encode(out);
        }
    }
}

/// Appends the `u32` tag that makes a derived `Arbitrary` enum with `count` variants pick
/// variant `index`: the smallest `t` with `(t * count) >> 32 == index`.
pub fn encode_variant(index: usize, count: usize, out: &mut Vec<u8>) {
    assert!(index < count, "variant {index} of {count}");
    let tag = ((index as u64) << 32).div_ceil(count as u64);
    // `index < count` keeps the tag below 2^32.
    (tag as u32).encode(out);
}

/// Declares a struct (named fields) or an enum (every variant written with braces, `V {}`
/// for a variant without fields) deriving `Arbitrary`, `Clone`, `Debug` and `PartialEq`,
/// and implements [`Encode`] for it to match.
#[macro_export]
macro_rules! fuzz_type {
    (
        $(#[$meta:meta])*
        pub struct $name:ident { $( $(#[$fmeta:meta])* pub $field:ident : $fty:ty ),* $(,)? }
    ) => {
        $(#[$meta])*
        #[derive(arbitrary::Arbitrary, Clone, Debug, PartialEq, Eq)]
        pub struct $name { $( $(#[$fmeta])* pub $field: $fty ),* }

        impl $crate::encode::Encode for $name {
            fn encode(&self, out: &mut Vec<u8>) {
                $( $crate::encode::Encode::encode(&self.$field, out); )*
            }
        }
    };
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident { $( $field:ident : $fty:ty ),* $(,)? } ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(arbitrary::Arbitrary, Clone, Debug, PartialEq, Eq)]
        pub enum $name { $( $(#[$vmeta])* $variant { $( $field: $fty ),* } ),* }

        impl $crate::encode::Encode for $name {
            #[allow(unused_assignments, unused_variables)]
            fn encode(&self, out: &mut Vec<u8>) {
                let count = [$(stringify!($variant)),*].len();
                let mut index = 0usize;
                let mut i = 0usize;
                $(
                    if matches!(self, $name::$variant { .. }) {
                        index = i;
                    }
                    i += 1;
                )*
                $crate::encode::encode_variant(index, count, out);
                match self {
                    $( $name::$variant { $( $field ),* } => {
                        $( $crate::encode::Encode::encode($field, out); )*
                    } )*
                }
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use arbitrary::{Arbitrary, Unstructured};

    crate::fuzz_type! {
        /// A test enum.
        pub enum Sample {
            A {},
            B { x: u16, y: bool },
            C { v: Vec<u8>, o: Option<u32>, a: [u8; 3] },
        }
    }

    #[test]
    fn round_trips() {
        for s in [
            Sample::A {},
            Sample::B { x: 0x1234, y: true },
            Sample::C {
                v: vec![1, 2, 3],
                o: Some(7),
                a: [9, 8, 7],
            },
            Sample::C {
                v: vec![],
                o: None,
                a: [0; 3],
            },
        ] {
            let bytes = s.to_bytes();
            let mut u = Unstructured::new(&bytes);
            assert_eq!(Sample::arbitrary(&mut u).unwrap(), s);
            assert!(u.is_empty());
        }
    }

    #[test]
    fn variant_tags_select_their_variant() {
        for count in 1..40usize {
            for index in 0..count {
                let mut out = Vec::new();
                encode_variant(index, count, &mut out);
                let tag = u32::from_le_bytes(out.try_into().unwrap());
                assert_eq!(((u64::from(tag) * count as u64) >> 32) as usize, index);
            }
        }
    }
}
