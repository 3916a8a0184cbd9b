//! Executable AML (ACPI 6.3 §20.2.5): control methods, `If`/`Else`, and the handful of
//! operators a method such as the PCI host bridge's `_OSC` needs, built on the data objects
//! of [`super::aml`].
//!
//! Operands are anything that implements [`Aml`]: integers, [`Buffer`]s, [`Path`]s (a name
//! used as a reference, e.g. a buffer field created earlier), [`Arg`]s and [`Local`]s.
//! Targets (`SuperName`s) are [`Path`]s or [`Local`]s.
//!
//! [`Buffer`]: super::aml::Buffer
//! [`Path`]: super::aml::Path

use super::aml::{append_pkg_length, Aml, AmlError, Buffer, NameSeg, Path};

const METHOD_OP: u8 = 0x14;
const LOCAL0_OP: u8 = 0x60;
const ARG0_OP: u8 = 0x68;
const STORE_OP: u8 = 0x70;
const AND_OP: u8 = 0x7b;
const OR_OP: u8 = 0x7d;
const CREATE_DWORD_FIELD_OP: u8 = 0x8a;
const LNOT_OP: u8 = 0x92;
const LEQUAL_OP: u8 = 0x93;
const IF_OP: u8 = 0xa0;
const ELSE_OP: u8 = 0xa1;
const RETURN_OP: u8 = 0xa4;

/// Number of method arguments AML can name (`Arg0`..`Arg6`).
pub const MAX_ARGS: u8 = 7;
/// Number of method locals AML can name (`Local0`..`Local7`).
pub const MAX_LOCALS: u8 = 8;
/// MethodFlags bit 3: the method is serialized.
const METHOD_SERIALIZED: u8 = 1 << 3;

/// Appends `opcode`, a PkgLength for `body`, then `body`.
fn append_package(opcode: u8, body: &[u8], out: &mut Vec<u8>) -> Result<(), AmlError> {
    out.push(opcode);
    append_pkg_length(body.len(), out)?;
    out.extend_from_slice(body);
    Ok(())
}

/// Appends every term of `terms` to `out`.
fn append_terms(terms: &[Box<dyn Aml>], out: &mut Vec<u8>) -> Result<(), AmlError> {
    terms.iter().try_for_each(|t| t.append_aml(out))
}

/// A method argument, `Arg0`..`Arg6`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arg(u8);

impl Arg {
    /// `Arg<n>`, n below [`MAX_ARGS`].
    pub fn new(n: u8) -> Result<Self, AmlError> {
        if n < MAX_ARGS {
            Ok(Arg(n))
        } else {
            Err(AmlError::InvalidArg(n))
        }
    }
}

impl Aml for Arg {
    fn append_aml(&self, out: &mut Vec<u8>) -> Result<(), AmlError> {
        out.push(ARG0_OP + self.0);
        Ok(())
    }
}

/// A method local variable, `Local0`..`Local7`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Local(u8);

impl Local {
    /// `Local<n>`, n below [`MAX_LOCALS`].
    pub fn new(n: u8) -> Result<Self, AmlError> {
        if n < MAX_LOCALS {
            Ok(Local(n))
        } else {
            Err(AmlError::InvalidLocal(n))
        }
    }
}

impl Aml for Local {
    fn append_aml(&self, out: &mut Vec<u8>) -> Result<(), AmlError> {
        out.push(LOCAL0_OP + self.0);
        Ok(())
    }
}

/// `Method(path, args, NotSerialized|Serialized){...}` (sync level 0).
pub struct Method {
    path: Path,
    args: u8,
    serialized: bool,
    body: Vec<Box<dyn Aml>>,
}

impl Method {
    /// A method named `path` taking `args` arguments (at most [`MAX_ARGS`]).
    pub fn new(
        path: &str,
        args: u8,
        serialized: bool,
        body: Vec<Box<dyn Aml>>,
    ) -> Result<Self, AmlError> {
        if args > MAX_ARGS {
            return Err(AmlError::InvalidArg(args));
        }
        Ok(Method {
            path: Path::new(path)?,
            args,
            serialized,
            body,
        })
    }
}

impl Aml for Method {
    fn append_aml(&self, out: &mut Vec<u8>) -> Result<(), AmlError> {
        let mut body = self.path.to_aml_bytes()?;
        let flags = self.args
            | if self.serialized {
                METHOD_SERIALIZED
            } else {
                0
            };
        body.push(flags);
        append_terms(&self.body, &mut body)?;
        append_package(METHOD_OP, &body, out)
    }
}

/// `If(predicate){...}`, optionally followed by `Else{...}`.
pub struct If {
    predicate: Box<dyn Aml>,
    then: Vec<Box<dyn Aml>>,
    otherwise: Option<Vec<Box<dyn Aml>>>,
}

impl If {
    /// `If(predicate){then}`.
    pub fn new(predicate: impl Aml + 'static, then: Vec<Box<dyn Aml>>) -> Self {
        If {
            predicate: Box::new(predicate),
            then,
            otherwise: None,
        }
    }

    /// Adds `Else{otherwise}`.
    pub fn with_else(mut self, otherwise: Vec<Box<dyn Aml>>) -> Self {
        self.otherwise = Some(otherwise);
        self
    }
}

impl Aml for If {
    fn append_aml(&self, out: &mut Vec<u8>) -> Result<(), AmlError> {
        let mut body = self.predicate.to_aml_bytes()?;
        append_terms(&self.then, &mut body)?;
        append_package(IF_OP, &body, out)?;
        if let Some(otherwise) = &self.otherwise {
            let mut body = Vec::new();
            append_terms(otherwise, &mut body)?;
            append_package(ELSE_OP, &body, out)?;
        }
        Ok(())
    }
}

/// An operator with a fixed opcode and operands, encoded as the opcode then each operand.
struct Op {
    opcode: u8,
    operands: Vec<Box<dyn Aml>>,
}

impl Aml for Op {
    fn append_aml(&self, out: &mut Vec<u8>) -> Result<(), AmlError> {
        out.push(self.opcode);
        append_terms(&self.operands, out)
    }
}

/// `LEqual(a, b)`: integers, strings or buffers.
pub fn lequal(a: impl Aml + 'static, b: impl Aml + 'static) -> impl Aml {
    Op {
        opcode: LEQUAL_OP,
        operands: vec![Box::new(a), Box::new(b)],
    }
}

/// `LNot(a)`.
pub fn lnot(a: impl Aml + 'static) -> impl Aml {
    Op {
        opcode: LNOT_OP,
        operands: vec![Box::new(a)],
    }
}

/// `And(a, b, target)`: bitwise and, stored in `target`.
pub fn and(a: impl Aml + 'static, b: impl Aml + 'static, target: impl Aml + 'static) -> impl Aml {
    Op {
        opcode: AND_OP,
        operands: vec![Box::new(a), Box::new(b), Box::new(target)],
    }
}

/// `Or(a, b, target)`: bitwise or, stored in `target`.
pub fn or(a: impl Aml + 'static, b: impl Aml + 'static, target: impl Aml + 'static) -> impl Aml {
    Op {
        opcode: OR_OP,
        operands: vec![Box::new(a), Box::new(b), Box::new(target)],
    }
}

/// `Store(value, target)`.
pub fn store(value: impl Aml + 'static, target: impl Aml + 'static) -> impl Aml {
    Op {
        opcode: STORE_OP,
        operands: vec![Box::new(value), Box::new(target)],
    }
}

/// `Return(value)`.
pub fn ret(value: impl Aml + 'static) -> impl Aml {
    Op {
        opcode: RETURN_OP,
        operands: vec![Box::new(value)],
    }
}

/// `CreateDWordField(buffer, byte_index, name)`: names the 32 bits at `byte_index` of
/// `buffer`.
pub struct CreateDWordField {
    buffer: Box<dyn Aml>,
    byte_index: u64,
    name: NameSeg,
}

impl CreateDWordField {
    /// A field `name` over bytes `byte_index..byte_index + 4` of `buffer`.
    pub fn new(buffer: impl Aml + 'static, byte_index: u64, name: &str) -> Result<Self, AmlError> {
        Ok(CreateDWordField {
            buffer: Box::new(buffer),
            byte_index,
            name: NameSeg::new(name)?,
        })
    }
}

impl Aml for CreateDWordField {
    fn append_aml(&self, out: &mut Vec<u8>) -> Result<(), AmlError> {
        out.push(CREATE_DWORD_FIELD_OP);
        self.buffer.append_aml(out)?;
        self.byte_index.append_aml(out)?;
        out.extend_from_slice(self.name.as_bytes());
        Ok(())
    }
}

/// Length of a UUID in bytes.
pub const UUID_LEN: usize = 16;
/// Hex digits in each dash-separated group of a UUID string.
const UUID_GROUPS: [usize; 5] = [8, 4, 4, 4, 12];
/// The groups whose bytes `ToUUID` stores little-endian (the first three); the last two are
/// stored in the order written.
const UUID_LITTLE_ENDIAN_GROUPS: usize = 3;

/// `ToUUID("aabbccdd-eeff-gghh-iijj-kkllmmnnoopp")`: the 16-byte buffer ASL's `ToUUID`
/// produces (ACPI 6.3 §19.6.142): `dd cc bb aa ff ee hh gg ii jj kk ll mm nn oo pp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Uuid([u8; UUID_LEN]);

impl Uuid {
    /// Parses the 36-character form, hex digits in either case.
    pub fn parse(s: &str) -> Result<Self, AmlError> {
        let err = || AmlError::InvalidUuid(s.to_owned());
        let groups: Vec<&str> = s.split('-').collect();
        if groups.len() != UUID_GROUPS.len() {
            return Err(err());
        }
        let mut bytes = Vec::with_capacity(UUID_LEN);
        for (index, (group, &digits)) in groups.iter().zip(&UUID_GROUPS).enumerate() {
            if group.len() != digits || !group.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(err());
            }
            let mut group_bytes = (0..digits)
                .step_by(2)
                .map(|i| u8::from_str_radix(&group[i..i + 2], 16).map_err(|_| err()))
                .collect::<Result<Vec<u8>, _>>()?;
            if index < UUID_LITTLE_ENDIAN_GROUPS {
                group_bytes.reverse();
            }
            bytes.extend_from_slice(&group_bytes);
        }
        bytes.try_into().map(Uuid).map_err(|_| err())
    }

    /// The 16 bytes, in buffer order.
    pub fn bytes(&self) -> [u8; UUID_LEN] {
        self.0
    }
}

impl Aml for Uuid {
    fn append_aml(&self, out: &mut Vec<u8>) -> Result<(), AmlError> {
        Buffer(self.0.to_vec()).append_aml(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(a: &dyn Aml) -> Vec<u8> {
        a.to_aml_bytes().unwrap()
    }

    #[test]
    fn args_and_locals() {
        assert_eq!(enc(&Arg::new(0).unwrap()), [0x68]);
        assert_eq!(enc(&Arg::new(6).unwrap()), [0x6e]);
        assert_eq!(Arg::new(7), Err(AmlError::InvalidArg(7)));
        assert_eq!(enc(&Local::new(0).unwrap()), [0x60]);
        assert_eq!(enc(&Local::new(7).unwrap()), [0x67]);
        assert_eq!(Local::new(8), Err(AmlError::InvalidLocal(8)));
    }

    #[test]
    fn operators() {
        let a0 = || Arg::new(0).unwrap();
        let l0 = || Local::new(0).unwrap();
        let cdw1 = || Path::new("CDW1").unwrap();
        assert_eq!(enc(&lequal(a0(), 1u8)), [0x93, 0x68, 0x01]);
        assert_eq!(enc(&lnot(lequal(a0(), 1u8))), [0x92, 0x93, 0x68, 0x01]);
        assert_eq!(
            enc(&and(l0(), 0x1fu8, l0())),
            [0x7b, 0x60, 0x0a, 0x1f, 0x60]
        );
        assert_eq!(
            enc(&or(cdw1(), 4u8, cdw1())),
            [0x7d, b'C', b'D', b'W', b'1', 0x0a, 0x04, b'C', b'D', b'W', b'1']
        );
        assert_eq!(
            enc(&store(cdw1(), l0())),
            [0x70, b'C', b'D', b'W', b'1', 0x60]
        );
        assert_eq!(enc(&ret(Arg::new(3).unwrap())), [0xa4, 0x6b]);
        assert_eq!(
            enc(&CreateDWordField::new(Arg::new(3).unwrap(), 8, "CDW3").unwrap()),
            [0x8a, 0x6b, 0x0a, 0x08, b'C', b'D', b'W', b'3']
        );
    }

    #[test]
    fn if_else_and_method() {
        let m = Method::new(
            "_OSC",
            4,
            false,
            vec![Box::new(
                If::new(lequal(Arg::new(1).unwrap(), 1u8), vec![Box::new(ret(0u8))])
                    .with_else(vec![Box::new(ret(1u8))]),
            )],
        )
        .unwrap();
        let expected: &[u8] = &[
            // Method: PkgLength = 1 + 4 (name) + 1 (flags) + 7 (If) + 4 (Else) = 17.
            0x14, 0x11, b'_', b'O', b'S', b'C', 0x04,
            // If(LEqual(Arg1, One)){Return(Zero)}: PkgLength = 1 + 3 + 2.
            0xa0, 0x06, 0x93, 0x69, 0x01, 0xa4, 0x00,
            // Else{Return(One)}: PkgLength = 1 + 2.
            0xa1, 0x03, 0xa4, 0x01,
        ];
        assert_eq!(enc(&m), expected);
        let serialized = Method::new("FOO", 8, true, vec![]);
        assert!(matches!(serialized, Err(AmlError::InvalidArg(8))));
        let s = Method::new("FOO", 2, true, vec![]).unwrap();
        assert_eq!(enc(&s), [0x14, 0x06, b'F', b'O', b'O', b'_', 0x0a]);
    }

    #[test]
    fn uuid_byte_order() {
        let u = Uuid::parse("33DB4D5B-1FF7-401C-9657-7441C03DD766").unwrap();
        assert_eq!(
            u.bytes(),
            [
                0x5b, 0x4d, 0xdb, 0x33, 0xf7, 0x1f, 0x1c, 0x40, 0x96, 0x57, 0x74, 0x41, 0xc0, 0x3d,
                0xd7, 0x66
            ]
        );
        assert_eq!(
            Uuid::parse("33db4d5b-1ff7-401c-9657-7441c03dd766").unwrap(),
            u
        );
        // Buffer(16){...}: BufferOp, PkgLength 19, BytePrefix 16, the bytes.
        let b = enc(&u);
        assert_eq!(&b[..4], &[0x11, 0x13, 0x0a, 0x10]);
        assert_eq!(&b[4..], &u.bytes());
        for bad in [
            "",
            "33DB4D5B1FF7401C96577441C03DD766",
            "33DB4D5B-1FF7-401C-9657-7441C03DD76",
            "33DB4D5B-1FF7-401C-9657-7441C03DD76G",
            "33DB4D5B-1FF7-401C-9657-7441C03DD766-",
            "+3DB4D5B-1FF7-401C-9657-7441C03DD766",
        ] {
            assert!(Uuid::parse(bad).is_err(), "{bad}");
        }
    }
}
