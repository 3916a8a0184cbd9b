//! A tiny ACPI Machine Language encoder (ACPI 6.3 §20): just what irvmm's DSDT needs.
//!
//! Every AML object implements [`Aml`], which appends its encoding to a byte vector. Names and
//! strings are validated when they are constructed; encoding can still fail when a package
//! outgrows what PkgLength or NumElements can express.

use thiserror::Error;

/// Errors of the AML encoder.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum AmlError {
    /// A name segment is not 1-4 characters of `[A-Z_][A-Z0-9_]*`.
    #[error("invalid AML name segment {0:?}")]
    InvalidNameSeg(String),
    /// A name path is malformed (empty segment, or only parent/root prefixes where not allowed).
    #[error("invalid AML name path {0:?}")]
    InvalidPath(String),
    /// A string contains a character outside ASCII 0x01-0x7f.
    #[error("AML string {0:?} contains a character outside ASCII 0x01-0x7f")]
    InvalidString(String),
    /// An EISA ID is not three uppercase letters and four hex digits.
    #[error("invalid EISA ID {0:?}")]
    InvalidEisaId(String),
    /// An IRQ number does not fit an IRQ descriptor's 16-bit mask.
    #[error("IRQ {0} does not fit an IRQ descriptor (0-15)")]
    InvalidIrq(u8),
    /// An object's body is too long for a PkgLength (at most 2^28 - 1 bytes).
    #[error("AML package body of {0} bytes is too long for a PkgLength")]
    PackageTooLong(usize),
    /// A Package has more elements than its 8-bit NumElements can count.
    #[error("AML package with {0} elements (at most 255)")]
    TooManyElements(usize),
    /// A method argument number or count above 6 (`Arg0`..`Arg6`, at most 7 arguments).
    #[error("AML method argument {0} out of range (Arg0-Arg6)")]
    InvalidArg(u8),
    /// A local variable number above 7 (`Local0`..`Local7`).
    #[error("AML local {0} out of range (Local0-Local7)")]
    InvalidLocal(u8),
    /// A UUID string is not of the form `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` (hex digits).
    #[error("invalid UUID {0:?}")]
    InvalidUuid(String),
}

const ZERO_OP: u8 = 0x00;
const ONE_OP: u8 = 0x01;
const NAME_OP: u8 = 0x08;
const BYTE_PREFIX: u8 = 0x0a;
const WORD_PREFIX: u8 = 0x0b;
const DWORD_PREFIX: u8 = 0x0c;
const STRING_PREFIX: u8 = 0x0d;
const QWORD_PREFIX: u8 = 0x0e;
const SCOPE_OP: u8 = 0x10;
const BUFFER_OP: u8 = 0x11;
const PACKAGE_OP: u8 = 0x12;
const EXT_OP_PREFIX: u8 = 0x5b;
const DEVICE_OP: u8 = 0x82;
const ROOT_CHAR: u8 = b'\\';
const DUAL_NAME_PREFIX: u8 = 0x2e;
const MULTI_NAME_PREFIX: u8 = 0x2f;
const NULL_NAME: u8 = 0x00;
const NAME_PAD: u8 = b'_';
const NAME_SEG_LEN: usize = 4;
const PATH_SEPARATOR: char = '.';

/// Largest total length of each PkgLength form, indexed by the number of follow bytes (0-3).
const PKG_LENGTH_MAX: [usize; 4] = [0x3f, 0xfff, 0xf_ffff, 0xfff_ffff];
/// Bit position of the follow-byte count in a PkgLength lead byte.
const PKG_LENGTH_COUNT_SHIFT: u32 = 6;
/// Low bits of the length held in a multi-byte PkgLength lead byte.
const PKG_LENGTH_LEAD_MASK: usize = 0xf;
const PKG_LENGTH_LEAD_BITS: u32 = 4;
const BITS_PER_BYTE: u32 = 8;

/// Something with an AML encoding.
pub trait Aml {
    /// Appends the encoding to `out`.
    fn append_aml(&self, out: &mut Vec<u8>) -> Result<(), AmlError>;

    /// The encoding as a new vector.
    fn to_aml_bytes(&self) -> Result<Vec<u8>, AmlError> {
        let mut out = Vec::new();
        self.append_aml(&mut out)?;
        Ok(out)
    }
}

/// Appends the PkgLength for a body of `body_len` bytes. The encoded length counts the
/// PkgLength bytes themselves; the shortest form that fits is used.
pub fn append_pkg_length(body_len: usize, out: &mut Vec<u8>) -> Result<(), AmlError> {
    for (follow, max) in PKG_LENGTH_MAX.iter().enumerate() {
        let total = body_len
            .checked_add(1 + follow)
            .ok_or(AmlError::PackageTooLong(body_len))?;
        if total > *max {
            continue;
        }
        if follow == 0 {
            // total <= 0x3f: fits the single-byte form.
            out.push(total as u8);
        } else {
            let lead =
                ((follow as u8) << PKG_LENGTH_COUNT_SHIFT) | (total & PKG_LENGTH_LEAD_MASK) as u8;
            out.push(lead);
            for i in 0..follow as u32 {
                out.push((total >> (PKG_LENGTH_LEAD_BITS + i * BITS_PER_BYTE)) as u8);
            }
        }
        return Ok(());
    }
    Err(AmlError::PackageTooLong(body_len))
}

/// Appends `opcode`, the PkgLength of `body`, then `body`.
fn append_with_pkg_length(opcode: &[u8], body: &[u8], out: &mut Vec<u8>) -> Result<(), AmlError> {
    out.extend_from_slice(opcode);
    append_pkg_length(body.len(), out)?;
    out.extend_from_slice(body);
    Ok(())
}

/// Appends an integer in its shortest encoding (ZeroOp, OneOp, Byte/Word/DWord/QWord prefix).
pub fn append_integer(v: u64, out: &mut Vec<u8>) {
    if v == 0 {
        out.push(ZERO_OP);
    } else if v == 1 {
        out.push(ONE_OP);
    } else if let Ok(b) = u8::try_from(v) {
        out.extend_from_slice(&[BYTE_PREFIX, b]);
    } else if let Ok(w) = u16::try_from(v) {
        out.push(WORD_PREFIX);
        out.extend_from_slice(&w.to_le_bytes());
    } else if let Ok(d) = u32::try_from(v) {
        out.push(DWORD_PREFIX);
        out.extend_from_slice(&d.to_le_bytes());
    } else {
        out.push(QWORD_PREFIX);
        out.extend_from_slice(&v.to_le_bytes());
    }
}

macro_rules! impl_aml_integer {
    ($($t:ty),*) => {$(
        impl Aml for $t {
            fn append_aml(&self, out: &mut Vec<u8>) -> Result<(), AmlError> {
                append_integer(u64::from(*self), out);
                Ok(())
            }
        }
    )*};
}
impl_aml_integer!(u8, u16, u32, u64);

/// An AML string constant (StringPrefix, ASCII bytes, NUL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmlString(String);

impl AmlString {
    /// A string of ASCII characters 0x01-0x7f.
    pub fn new(s: &str) -> Result<Self, AmlError> {
        if s.bytes().all(|b| (0x01..=0x7f).contains(&b)) {
            Ok(AmlString(s.to_owned()))
        } else {
            Err(AmlError::InvalidString(s.to_owned()))
        }
    }
}

impl Aml for AmlString {
    fn append_aml(&self, out: &mut Vec<u8>) -> Result<(), AmlError> {
        out.push(STRING_PREFIX);
        out.extend_from_slice(self.0.as_bytes());
        out.push(0);
        Ok(())
    }
}

/// A four-character name segment, padded with `_`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameSeg([u8; NAME_SEG_LEN]);

impl NameSeg {
    /// A segment from 1-4 characters: a letter or `_`, then letters, digits or `_`.
    pub fn new(s: &str) -> Result<Self, AmlError> {
        let bytes = s.as_bytes();
        let valid = (1..=NAME_SEG_LEN).contains(&bytes.len())
            && bytes.iter().enumerate().all(|(i, &c)| {
                c.is_ascii_uppercase() || c == NAME_PAD || (i > 0 && c.is_ascii_digit())
            });
        if !valid {
            return Err(AmlError::InvalidNameSeg(s.to_owned()));
        }
        let mut seg = [NAME_PAD; NAME_SEG_LEN];
        seg[..bytes.len()].copy_from_slice(bytes);
        Ok(NameSeg(seg))
    }

    /// The four bytes of the segment.
    pub fn as_bytes(&self) -> &[u8; NAME_SEG_LEN] {
        &self.0
    }
}

/// A name path: an optional root prefix and dot-separated segments, e.g. `\_SB.COM1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path {
    root: bool,
    segs: Vec<NameSeg>,
}

impl Path {
    /// Parses `\`, `\_SB`, `_SB.COM1`, `_HID` and the like (no `^` parent prefixes).
    pub fn new(s: &str) -> Result<Self, AmlError> {
        let (root, rest) = match s.strip_prefix(char::from(ROOT_CHAR)) {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        if rest.is_empty() {
            return if root {
                Ok(Path {
                    root,
                    segs: Vec::new(),
                })
            } else {
                Err(AmlError::InvalidPath(s.to_owned()))
            };
        }
        let segs = rest
            .split(PATH_SEPARATOR)
            .map(NameSeg::new)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Path { root, segs })
    }
}

impl Aml for Path {
    fn append_aml(&self, out: &mut Vec<u8>) -> Result<(), AmlError> {
        if self.root {
            out.push(ROOT_CHAR);
        }
        match self.segs.len() {
            0 => out.push(NULL_NAME),
            1 => {}
            2 => out.push(DUAL_NAME_PREFIX),
            n => {
                let count = u8::try_from(n).map_err(|_| AmlError::TooManyElements(n))?;
                out.extend_from_slice(&[MULTI_NAME_PREFIX, count]);
            }
        }
        for seg in &self.segs {
            out.extend_from_slice(seg.as_bytes());
        }
        Ok(())
    }
}

/// A compressed EISA ID (`EISAID("PNP0501")`), encoded as a DWord integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EisaId(u32);

/// Number of letters (vendor) and hex digits (product) of an EISA ID string.
const EISA_VENDOR_LEN: usize = 3;
const EISA_PRODUCT_LEN: usize = 4;
/// Bits per compressed vendor letter, and the value subtracted from its ASCII code.
const EISA_LETTER_BITS: u32 = 5;
const EISA_LETTER_BASE: u8 = 0x40;
const EISA_PRODUCT_BITS: u32 = 16;
const HEX_RADIX: u32 = 16;

impl EisaId {
    /// Compresses a seven-character ID: three uppercase letters and four hex digits.
    pub fn new(id: &str) -> Result<Self, AmlError> {
        let err = || AmlError::InvalidEisaId(id.to_owned());
        let bytes = id.as_bytes();
        if bytes.len() != EISA_VENDOR_LEN + EISA_PRODUCT_LEN {
            return Err(err());
        }
        let (vendor, product) = bytes.split_at(EISA_VENDOR_LEN);
        let mut v: u32 = 0;
        for &c in vendor {
            if !c.is_ascii_uppercase() {
                return Err(err());
            }
            v = (v << EISA_LETTER_BITS) | u32::from(c - EISA_LETTER_BASE);
        }
        let product = std::str::from_utf8(product).map_err(|_| err())?;
        if !product.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(err());
        }
        let p = u32::from_str_radix(product, HEX_RADIX).map_err(|_| err())?;
        // The compressed ID is stored big-endian; the integer is its little-endian reading.
        Ok(EisaId(((v << EISA_PRODUCT_BITS) | p).swap_bytes()))
    }

    /// The integer value, as `_HID` evaluates to (e.g. 0x0105d041 for PNP0501).
    pub fn value(&self) -> u32 {
        self.0
    }
}

impl Aml for EisaId {
    fn append_aml(&self, out: &mut Vec<u8>) -> Result<(), AmlError> {
        out.push(DWORD_PREFIX);
        out.extend_from_slice(&self.0.to_le_bytes());
        Ok(())
    }
}

/// `Name(path, value)`.
pub struct Name {
    path: Path,
    value: Box<dyn Aml>,
}

impl Name {
    /// Declares `path` with a data value.
    pub fn new(path: &str, value: impl Aml + 'static) -> Result<Self, AmlError> {
        Ok(Name {
            path: Path::new(path)?,
            value: Box::new(value),
        })
    }
}

impl Aml for Name {
    fn append_aml(&self, out: &mut Vec<u8>) -> Result<(), AmlError> {
        out.push(NAME_OP);
        self.path.append_aml(out)?;
        self.value.append_aml(out)
    }
}

/// `Package(){...}` with at most 255 elements.
pub struct Package {
    elements: Vec<Box<dyn Aml>>,
}

impl Package {
    /// A package of `elements`.
    pub fn new(elements: Vec<Box<dyn Aml>>) -> Self {
        Package { elements }
    }
}

impl Aml for Package {
    fn append_aml(&self, out: &mut Vec<u8>) -> Result<(), AmlError> {
        let n = self.elements.len();
        let mut body = vec![u8::try_from(n).map_err(|_| AmlError::TooManyElements(n))?];
        for e in &self.elements {
            e.append_aml(&mut body)?;
        }
        append_with_pkg_length(&[PACKAGE_OP], &body, out)
    }
}

/// `Buffer(){...}` holding raw bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Buffer(pub Vec<u8>);

impl Aml for Buffer {
    fn append_aml(&self, out: &mut Vec<u8>) -> Result<(), AmlError> {
        let mut body = Vec::with_capacity(self.0.len() + 1 + std::mem::size_of::<u64>());
        append_integer(self.0.len() as u64, &mut body);
        body.extend_from_slice(&self.0);
        append_with_pkg_length(&[BUFFER_OP], &body, out)
    }
}

/// A named container of objects: `Scope(path){...}` or `Device(path){...}`.
fn append_container(
    opcode: &[u8],
    path: &Path,
    children: &[Box<dyn Aml>],
    out: &mut Vec<u8>,
) -> Result<(), AmlError> {
    let mut body = path.to_aml_bytes()?;
    for c in children {
        c.append_aml(&mut body)?;
    }
    append_with_pkg_length(opcode, &body, out)
}

/// `Scope(path){...}`.
pub struct Scope {
    path: Path,
    children: Vec<Box<dyn Aml>>,
}

impl Scope {
    /// A scope opened at `path` containing `children`.
    pub fn new(path: &str, children: Vec<Box<dyn Aml>>) -> Result<Self, AmlError> {
        Ok(Scope {
            path: Path::new(path)?,
            children,
        })
    }
}

impl Aml for Scope {
    fn append_aml(&self, out: &mut Vec<u8>) -> Result<(), AmlError> {
        append_container(&[SCOPE_OP], &self.path, &self.children, out)
    }
}

/// `Device(path){...}`.
pub struct Device {
    path: Path,
    children: Vec<Box<dyn Aml>>,
}

impl Device {
    /// A device named `path` containing `children`.
    pub fn new(path: &str, children: Vec<Box<dyn Aml>>) -> Result<Self, AmlError> {
        Ok(Device {
            path: Path::new(path)?,
            children,
        })
    }
}

impl Aml for Device {
    fn append_aml(&self, out: &mut Vec<u8>) -> Result<(), AmlError> {
        append_container(&[EXT_OP_PREFIX, DEVICE_OP], &self.path, &self.children, out)
    }
}

/// Small resource descriptor tags with their lengths folded in (ACPI 6.3 §6.4.2):
/// I/O port (type 0x08, 7 bytes), IRQ without flags (type 0x04, 2 bytes), end tag
/// (type 0x0f, 1 byte).
const IO_PORT_DESCRIPTOR: u8 = 0x47;
const IRQ_NO_FLAGS_DESCRIPTOR: u8 = 0x22;
const END_TAG_DESCRIPTOR: u8 = 0x79;
/// I/O port descriptor information byte: the device decodes 16 address bits.
const IO_DECODE16: u8 = 0x01;
/// Number of IRQs an IRQ descriptor's mask can name.
const IRQ_DESCRIPTOR_IRQS: u8 = 16;

/// `ResourceTemplate(){...}`: a buffer of resource descriptors closed by an end tag whose
/// checksum makes the descriptors sum to zero.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResourceTemplate {
    descriptors: Vec<u8>,
}

impl ResourceTemplate {
    /// An empty template.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `IO(Decode16, min, max, alignment, length)`.
    pub fn io_decode16(mut self, min: u16, max: u16, alignment: u8, length: u8) -> Self {
        self.descriptors
            .extend_from_slice(&[IO_PORT_DESCRIPTOR, IO_DECODE16]);
        self.descriptors.extend_from_slice(&min.to_le_bytes());
        self.descriptors.extend_from_slice(&max.to_le_bytes());
        self.descriptors.extend_from_slice(&[alignment, length]);
        self
    }

    /// Adds an already encoded descriptor (see [`super::resources`] for the large ones).
    pub fn descriptor(mut self, bytes: &[u8]) -> Self {
        self.descriptors.extend_from_slice(bytes);
        self
    }

    /// Adds `IRQNoFlags(){irq}`: an ISA-style edge-triggered, active-high interrupt.
    pub fn irq_no_flags(mut self, irq: u8) -> Result<Self, AmlError> {
        if irq >= IRQ_DESCRIPTOR_IRQS {
            return Err(AmlError::InvalidIrq(irq));
        }
        let mask = 1u16 << irq;
        self.descriptors.push(IRQ_NO_FLAGS_DESCRIPTOR);
        self.descriptors.extend_from_slice(&mask.to_le_bytes());
        Ok(self)
    }
}

impl Aml for ResourceTemplate {
    fn append_aml(&self, out: &mut Vec<u8>) -> Result<(), AmlError> {
        let mut bytes = self.descriptors.clone();
        bytes.push(END_TAG_DESCRIPTOR);
        bytes.push(super::sdt::checksum(&bytes));
        Buffer(bytes).append_aml(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkg_len(n: usize) -> Vec<u8> {
        let mut v = Vec::new();
        append_pkg_length(n, &mut v).unwrap();
        v
    }

    #[test]
    fn pkg_length_forms() {
        // One byte: total (body + 1) up to 63.
        assert_eq!(pkg_len(0), [0x01]);
        assert_eq!(pkg_len(62), [0x3f]);
        // Two bytes: total = 63 + 2 = 65 = 0x41.
        assert_eq!(pkg_len(63), [0x41, 0x04]);
        assert_eq!(pkg_len(0xfff - 2), [0x4f, 0xff]);
        // Three bytes: total = 0xffe + 3 = 0x1001.
        assert_eq!(pkg_len(0xfff - 1), [0x81, 0x00, 0x01]);
        assert_eq!(pkg_len(0xf_ffff - 3), [0x8f, 0xff, 0xff]);
        // Four bytes.
        assert_eq!(pkg_len(0xf_ffff - 2), [0xc1, 0x00, 0x00, 0x01]);
        assert_eq!(pkg_len(0xfff_ffff - 4), [0xcf, 0xff, 0xff, 0xff]);
        assert_eq!(
            append_pkg_length(0xfff_ffff - 3, &mut Vec::new()),
            Err(AmlError::PackageTooLong(0xfff_ffff - 3))
        );
        assert!(append_pkg_length(usize::MAX, &mut Vec::new()).is_err());
    }

    #[test]
    fn integers() {
        let enc = |v: u64| v.to_aml_bytes().unwrap();
        assert_eq!(enc(0), [0x00]);
        assert_eq!(enc(1), [0x01]);
        assert_eq!(enc(5), [0x0a, 0x05]);
        assert_eq!(enc(0xff), [0x0a, 0xff]);
        assert_eq!(enc(0x3f8), [0x0b, 0xf8, 0x03]);
        assert_eq!(enc(0x1_0000), [0x0c, 0, 0, 1, 0]);
        assert_eq!(enc(1 << 32), [0x0e, 0, 0, 0, 0, 1, 0, 0, 0]);
    }

    #[test]
    fn strings() {
        let s = AmlString::new("ACPI0007").unwrap().to_aml_bytes().unwrap();
        assert_eq!(s, b"\x0dACPI0007\0");
        assert!(AmlString::new("a\0b").is_err());
        assert!(AmlString::new("é").is_err());
    }

    #[test]
    fn names_and_paths() {
        assert_eq!(NameSeg::new("_S5").unwrap().as_bytes(), b"_S5_");
        assert!(NameSeg::new("").is_err());
        assert!(NameSeg::new("1ABC").is_err());
        assert!(NameSeg::new("ABCDE").is_err());
        assert!(NameSeg::new("abc").is_err());
        let enc = |p: &str| Path::new(p).unwrap().to_aml_bytes().unwrap();
        assert_eq!(enc("\\"), b"\\\0");
        assert_eq!(enc("\\_SB"), b"\\_SB_");
        assert_eq!(enc("_SB.COM1"), b"\x2e_SB_COM1");
        assert_eq!(enc("\\_SB.PCI0.S00"), b"\\\x2f\x03_SB_PCI0S00_");
        assert!(Path::new("").is_err());
        assert!(Path::new("_SB..X").is_err());
    }

    #[test]
    fn eisa_id() {
        let id = EisaId::new("PNP0501").unwrap();
        assert_eq!(id.value(), 0x0105_d041);
        assert_eq!(id.to_aml_bytes().unwrap(), [0x0c, 0x41, 0xd0, 0x05, 0x01]);
        assert_eq!(EisaId::new("PNP0A08").unwrap().value(), 0x080a_d041);
        for bad in ["PNP050", "pnp0501", "PNP05G1", "PNP05011", "PN10501"] {
            assert!(EisaId::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn s5_package() {
        let pkg = Package::new(vec![
            Box::new(5u8),
            Box::new(0u8),
            Box::new(0u8),
            Box::new(0u8),
        ]);
        let name = Name::new("_S5", pkg).unwrap().to_aml_bytes().unwrap();
        assert_eq!(
            name,
            [0x08, b'_', b'S', b'5', b'_', 0x12, 0x07, 0x04, 0x0a, 0x05, 0x00, 0x00, 0x00]
        );
    }

    #[test]
    fn too_many_package_elements() {
        let elements: Vec<Box<dyn Aml>> = (0..256).map(|_| Box::new(0u8) as _).collect();
        assert_eq!(
            Package::new(elements).to_aml_bytes(),
            Err(AmlError::TooManyElements(256))
        );
    }

    #[test]
    fn com1_resource_template() {
        let crs = ResourceTemplate::new()
            .io_decode16(0x3f8, 0x3f8, 0, 8)
            .irq_no_flags(4)
            .unwrap()
            .to_aml_bytes()
            .unwrap();
        let descriptors = [
            0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x00, 0x08, // IO
            0x22, 0x10, 0x00, // IRQNoFlags {4}
            0x79, // end tag, then its checksum
        ];
        let mut expected = vec![0x11, 0x10, 0x0a, 0x0d];
        expected.extend_from_slice(&descriptors);
        expected.push(super::super::sdt::checksum(&descriptors));
        assert_eq!(crs, expected);
        assert_eq!(crs[4..].iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        assert_eq!(
            ResourceTemplate::new().irq_no_flags(16),
            Err(AmlError::InvalidIrq(16))
        );
    }

    #[test]
    fn device_in_scope() {
        let dev = Device::new("COM1", vec![Box::new(Name::new("_UID", 0u8).unwrap())]).unwrap();
        let scope = Scope::new("\\_SB", vec![Box::new(dev)]).unwrap();
        let bytes = scope.to_aml_bytes().unwrap();
        let expected: &[u8] = &[
            // Scope(\_SB): PkgLength = 1 + 4 + 1 + 13 (the device) = 19.
            0x10, 0x13, b'\\', b'_', b'S', b'B', b'_',
            // Device(COM1): PkgLength = 1 + 4 + 6 = 11.
            0x5b, 0x82, 0x0b, b'C', b'O', b'M', b'1', 0x08, b'_', b'U', b'I', b'D',
            0x00, // Name(_UID, Zero)
        ];
        assert_eq!(bytes, expected);
    }

    #[test]
    fn large_device_uses_multibyte_pkg_length() {
        let children: Vec<Box<dyn Aml>> = (0..100)
            .map(|i| Box::new(Name::new("_UID", i as u32).unwrap()) as _)
            .collect();
        let bytes = Device::new("BIG", children)
            .unwrap()
            .to_aml_bytes()
            .unwrap();
        assert_eq!(&bytes[..2], &[0x5b, 0x82]);
        // Lead byte announces one follow byte; decode and check it spans the rest.
        assert_eq!(bytes[2] >> 6, 1);
        let len = usize::from(bytes[2] & 0xf) | usize::from(bytes[3]) << 4;
        assert_eq!(len, bytes.len() - 2);
    }
}
