#!/usr/bin/env python3
"""Packs the probe ELF into a bzImage (Linux x86 boot protocol 2.12) for boot-protocol tests.

Usage: mkbzimage.py PROBE_ELF OUT_BZIMAGE

The result is an uncompressed, non-relocatable bzImage:

  file offset 0x000  boot sector, all zero up to the setup header (in the real-mode protocol
                     this block doubles as boot_params, so its e820_entries, acpi_rsdp_addr
                     and ext_cmd_line_ptr must read 0)
              0x1f1  setup header (Documentation/arch/x86/boot.rst), version 2.12: the jump at
                     0x200 lands just past its last field (handover_offset) at 0x268
              0x268  real-mode setup code: the ELF section .bzimage.realmode (src/entry.rs),
                     which enters protected mode and jumps into the image
                     then the NUL-terminated version string (kernel_version)
              0x400  protected-mode image (setup_sects = 1): the ELF's file-backed PT_LOAD
                     contents from 0x100000, zero-filled between segments, padded and ended
                     with the boot protocol's CRC-32 (syssize * 16 bytes in all)

Entry points in the image (checked against the ELF's symbols): 0x100000 (code32_start) is
the 32-bit boot protocol entry, 0x100200 the 64-bit one (XLF_KERNEL_64). init_size covers the
image up to __image_end (bss, stacks), which a 64-bit loader must identity-map.

Only the Python standard library is used; the ELF is parsed here.
"""

import struct
import sys
import zlib

# Image placement.
LOAD_ADDR = 0x100000  # protected-mode load address; the kernel is not relocatable
LINUX64_OFFSET = 0x200  # 64-bit entry offset from the load address
PAGE = 0x1000

# Real-mode block: the boot sector plus SETUP_SECTS sectors of setup.
SECTOR = 512
SETUP_SECTS = 1
SETUP_SIZE = (SETUP_SECTS + 1) * SECTOR
LEGACY_SETUP_SECTS = 4  # what setup_sects = 0 means

# Setup header fields: (offset, struct format).
HDR_SETUP_SECTS = (0x1F1, "<B")
HDR_SYSSIZE = (0x1F4, "<I")
HDR_VID_MODE = (0x1FA, "<H")
HDR_BOOT_FLAG = (0x1FE, "<H")
HDR_JUMP = (0x200, "<BB")
HDR_HEADER = (0x202, "<4s")
HDR_VERSION = (0x206, "<H")
HDR_START_SYS_SEG = (0x20C, "<H")
HDR_KERNEL_VERSION = (0x20E, "<H")
HDR_LOADFLAGS = (0x211, "<B")
HDR_SETUP_MOVE_SIZE = (0x212, "<H")
HDR_CODE32_START = (0x214, "<I")
HDR_INITRD_ADDR_MAX = (0x22C, "<I")
HDR_KERNEL_ALIGNMENT = (0x230, "<I")
HDR_RELOCATABLE_KERNEL = (0x234, "<B")
HDR_MIN_ALIGNMENT = (0x235, "<B")
HDR_XLOADFLAGS = (0x236, "<H")
HDR_CMDLINE_SIZE = (0x238, "<I")
HDR_PAYLOAD_OFFSET = (0x248, "<I")
HDR_PAYLOAD_LENGTH = (0x24C, "<I")
HDR_PREF_ADDRESS = (0x258, "<Q")
HDR_INIT_SIZE = (0x260, "<I")
HDR_HANDOVER_OFFSET = (0x264, "<I")
# First byte after the 2.12 header (handover_offset is its last field): the jump target.
HDR_END = 0x268
# The boot_params fields the probe reads in the real-mode protocol, where the block above is
# boot_params: they must stay zero (offset, size).
ZERO_PAGE_FIELDS_READ = [(0x070, 8), (0x0C8, 4), (0x1E8, 1)]

# Header values.
BOOT_FLAG = 0xAA55
JMP_SHORT = 0xEB  # `jmp rel8`, relative to the byte after it (0x202)
HEADER_MAGIC = b"HdrS"
PROTOCOL = 0x020C  # 2.12: the first with xloadflags
MIN_PROTOCOL = 0x020C  # what a 64-bit loader (irvmm) requires
START_SYS_SEG = 0x1000  # obsolete, conventional value
VID_MODE_NORMAL = 0xFFFF  # "normal" VGA mode
LOADED_HIGH = 1 << 0  # loadflags: protected-mode code at 0x100000
SETUP_MOVE_SIZE = 0x8000  # protocols 2.00-2.01 only; the conventional value
INITRD_ADDR_MAX = 0x7FFFFFFF  # the probe ignores initrds; the usual Linux limit
KERNEL_ALIGNMENT = LOAD_ADDR  # not relocatable: the load address itself is the alignment
MIN_ALIGNMENT = KERNEL_ALIGNMENT.bit_length() - 1  # log2
XLF_KERNEL_64 = 1 << 0  # xloadflags: 64-bit entry at load address + 0x200
CMDLINE_SIZE = 4095  # the probe reads up to 4096 bytes including the NUL (src/pvh.rs)
VERSION_STRING = b"irvmm probe guest (bzImage flavour)\0"

# ELF constants.
ELF_MAGIC = b"\x7fELF"
ELFCLASS64 = 2
ELFDATA2LSB = 1
EM_X86_64 = 62
PT_LOAD = 1
SHT_SYMTAB = 2
SHF_ALLOC = 0x2
ELF_HEADER = "<16sHHIQQQIHHHHHH"
ELF_PHDR = "<IIQQQQQQ"
ELF_SHDR = "<IIQQQQIIQQ"
ELF_SYM = "<IBBHQQ"

# The ELF section holding the real-mode setup code, and the symbols checked.
REALMODE_SECTION = ".bzimage.realmode"
SYM_IMAGE_START = "__image_start"
SYM_IMAGE_END = "__image_end"
SYM_LINUX32 = "probe_linux32_start"
SYM_LINUX64 = "probe_linux64_start"

# CRC-32 trailer (boot.rst "The Image Checksum"): polynomial 0x04C11DB7, initial remainder
# 0xffffffff, no final inversion; zlib's crc32 inverts, so its result is inverted back.
CRC_BYTES = 4
CRC_INVERT = 0xFFFFFFFF
PARAGRAPH = 16  # syssize unit


class Error(Exception):
    """A problem with the input ELF or the result; the message says which."""


def cstr(table, offset):
    """The NUL-terminated string at `offset` of a string table, decoded."""
    end = table.index(b"\0", offset)
    return table[offset:end].decode("ascii", "replace")


def parse_elf(data):
    """Returns (load segments, sections by name, symbols by name) of an x86-64 ELF.

    Load segments are (paddr, file bytes, memsz); sections are (flags, file bytes)."""
    if len(data) < struct.calcsize(ELF_HEADER) or data[:4] != ELF_MAGIC:
        raise Error("not an ELF file")
    (ident, _type, machine, _version, _entry, phoff, shoff, _flags, _ehsize, phentsize,
     phnum, shentsize, shnum, shstrndx) = struct.unpack_from(ELF_HEADER, data, 0)
    if ident[4] != ELFCLASS64 or ident[5] != ELFDATA2LSB or machine != EM_X86_64:
        raise Error("not a little-endian ELF64 for x86-64")

    segments = []
    for i in range(phnum):
        (p_type, _f, p_offset, _vaddr, p_paddr, p_filesz, p_memsz, _align) = \
            struct.unpack_from(ELF_PHDR, data, phoff + i * phentsize)
        if p_type == PT_LOAD:
            segments.append((p_paddr, data[p_offset:p_offset + p_filesz], p_memsz))

    headers = [struct.unpack_from(ELF_SHDR, data, shoff + i * shentsize) for i in range(shnum)]
    if shstrndx >= len(headers):
        raise Error("no section name table")
    shstr = headers[shstrndx]
    names = data[shstr[4]:shstr[4] + shstr[5]]
    sections = {}
    symbols = {}
    for h in headers:
        (sh_name, sh_type, sh_flags, _addr, sh_offset, sh_size, sh_link, _info, _al,
         sh_entsize) = h
        sections[cstr(names, sh_name)] = (sh_flags, data[sh_offset:sh_offset + sh_size])
        if sh_type == SHT_SYMTAB:
            strtab = headers[sh_link]
            strings = data[strtab[4]:strtab[4] + strtab[5]]
            for off in range(sh_offset, sh_offset + sh_size, sh_entsize):
                st_name, _i, _o, _shndx, st_value, _size = struct.unpack_from(ELF_SYM, data, off)
                if st_name:
                    symbols[cstr(strings, st_name)] = st_value
    return segments, sections, symbols


def symbol(symbols, name):
    """The value of symbol `name`, which must exist."""
    if name not in symbols:
        raise Error(f"symbol {name} not found (stripped ELF?)")
    return symbols[name]


def protected_mode_image(segments, image_end):
    """The file-backed contents of all load segments as one block starting at LOAD_ADDR."""
    loaded = [(paddr, body) for paddr, body, _memsz in segments if body]
    if not loaded:
        raise Error("no file-backed PT_LOAD segment")
    for paddr, body, memsz in segments:
        if paddr < LOAD_ADDR:
            raise Error(f"segment at {paddr:#x} below the load address {LOAD_ADDR:#x}")
        if paddr + memsz > image_end:
            raise Error(f"segment at {paddr:#x} ends past {SYM_IMAGE_END} ({image_end:#x})")
    end = max(paddr + len(body) for paddr, body in loaded)
    image = bytearray(end - LOAD_ADDR)
    filled = LOAD_ADDR
    for paddr, body in sorted(loaded):
        if paddr < filled:
            raise Error(f"segments overlap at {paddr:#x}")
        image[paddr - LOAD_ADDR:paddr - LOAD_ADDR + len(body)] = body
        filled = paddr + len(body)
    return image


def linux_crc(data):
    """The boot protocol's CRC-32 of `data` (no final inversion)."""
    return zlib.crc32(data) ^ CRC_INVERT


def put(block, field, *values):
    """Writes `values` into the header `field` (offset, format) of `block`."""
    offset, fmt = field
    struct.pack_into(fmt, block, offset, *values)


def get(block, field):
    """Reads the header `field` (offset, format) of `block` (first value)."""
    offset, fmt = field
    return struct.unpack_from(fmt, block, offset)[0]


def build(elf):
    """The bzImage for the probe ELF `elf` (bytes)."""
    segments, sections, symbols = parse_elf(elf)
    image_start = symbol(symbols, SYM_IMAGE_START)
    image_end = symbol(symbols, SYM_IMAGE_END)
    if image_start != LOAD_ADDR:
        raise Error(f"{SYM_IMAGE_START} is {image_start:#x}, expected {LOAD_ADDR:#x}")
    if symbol(symbols, SYM_LINUX32) != LOAD_ADDR:
        raise Error(f"{SYM_LINUX32} is not at the load address {LOAD_ADDR:#x}")
    if symbol(symbols, SYM_LINUX64) != LOAD_ADDR + LINUX64_OFFSET:
        raise Error(f"{SYM_LINUX64} is not at {LOAD_ADDR + LINUX64_OFFSET:#x}")
    if REALMODE_SECTION not in sections:
        raise Error(f"section {REALMODE_SECTION} not found")
    realmode_flags, realmode = sections[REALMODE_SECTION]
    if realmode_flags & SHF_ALLOC:
        raise Error(f"section {REALMODE_SECTION} must not be allocated")

    # Protected-mode part: padded so that with the CRC it is a whole number of paragraphs.
    payload = protected_mode_image(segments, image_end)
    syssize = -(-(len(payload) + CRC_BYTES) // PARAGRAPH)
    payload += bytes(syssize * PARAGRAPH - CRC_BYTES - len(payload))
    init_size = -(-(image_end - LOAD_ADDR) // PAGE) * PAGE

    setup = bytearray(SETUP_SIZE)
    version_at = HDR_END + len(realmode)
    if version_at + len(VERSION_STRING) > SETUP_SIZE:
        raise Error(f"real-mode code ({len(realmode)} bytes) does not fit the setup sector")
    setup[HDR_END:version_at] = realmode
    setup[version_at:version_at + len(VERSION_STRING)] = VERSION_STRING

    put(setup, HDR_SETUP_SECTS, SETUP_SECTS)
    put(setup, HDR_SYSSIZE, syssize)
    put(setup, HDR_VID_MODE, VID_MODE_NORMAL)
    put(setup, HDR_BOOT_FLAG, BOOT_FLAG)
    put(setup, HDR_JUMP, JMP_SHORT, HDR_END - (HDR_JUMP[0] + 2))
    put(setup, HDR_HEADER, HEADER_MAGIC)
    put(setup, HDR_VERSION, PROTOCOL)
    put(setup, HDR_START_SYS_SEG, START_SYS_SEG)
    put(setup, HDR_KERNEL_VERSION, version_at - SECTOR)
    put(setup, HDR_LOADFLAGS, LOADED_HIGH)
    put(setup, HDR_SETUP_MOVE_SIZE, SETUP_MOVE_SIZE)
    put(setup, HDR_CODE32_START, LOAD_ADDR)
    put(setup, HDR_INITRD_ADDR_MAX, INITRD_ADDR_MAX)
    put(setup, HDR_KERNEL_ALIGNMENT, KERNEL_ALIGNMENT)
    put(setup, HDR_RELOCATABLE_KERNEL, 0)
    put(setup, HDR_MIN_ALIGNMENT, MIN_ALIGNMENT)
    put(setup, HDR_XLOADFLAGS, XLF_KERNEL_64)
    put(setup, HDR_CMDLINE_SIZE, CMDLINE_SIZE)
    put(setup, HDR_PAYLOAD_OFFSET, 0)  # no compressed ELF payload inside
    put(setup, HDR_PAYLOAD_LENGTH, 0)
    put(setup, HDR_PREF_ADDRESS, LOAD_ADDR)
    put(setup, HDR_INIT_SIZE, init_size)
    put(setup, HDR_HANDOVER_OFFSET, 0)  # no EFI handover entry

    body = bytes(setup) + bytes(payload)
    result = body + struct.pack("<I", linux_crc(body))
    check(result, realmode, image_end)
    return result


def check(bz, realmode, image_end):
    """Re-reads the result the way a loader does and checks the promises made above."""
    if get(bz, HDR_BOOT_FLAG) != BOOT_FLAG or get(bz, HDR_HEADER) != HEADER_MAGIC:
        raise Error("boot flag or header magic missing")
    if get(bz, HDR_VERSION) < MIN_PROTOCOL or not get(bz, HDR_LOADFLAGS) & LOADED_HIGH:
        raise Error("not a 2.12+ bzImage")
    sects = get(bz, HDR_SETUP_SECTS) or LEGACY_SETUP_SECTS
    pm = bz[(sects + 1) * SECTOR:]
    if len(pm) != get(bz, HDR_SYSSIZE) * PARAGRAPH:
        raise Error("syssize does not match the protected-mode part")
    if linux_crc(bz) != 0:
        raise Error("CRC-32 of the whole file is not 0")
    jump_end = HDR_JUMP[0] + 2
    if jump_end + bz[HDR_JUMP[0] + 1] != HDR_END or bz[HDR_END:HDR_END + len(realmode)] != realmode:
        raise Error("the header jump does not land on the real-mode code")
    if LOAD_ADDR + get(bz, HDR_INIT_SIZE) < image_end:
        raise Error("init_size does not cover the image")
    for offset, size in ZERO_PAGE_FIELDS_READ:
        if any(bz[offset:offset + size]):
            raise Error(f"boot sector bytes {offset:#x}+{size} must be zero")


def main(argv):
    if len(argv) != 3:
        sys.stderr.write(__doc__.split("\n\n")[1] + "\n")
        return 2
    try:
        with open(argv[1], "rb") as f:
            elf = f.read()
        bz = build(elf)
    except (Error, OSError, ValueError, struct.error) as e:
        sys.stderr.write(f"mkbzimage: {argv[1]}: {e}\n")
        return 1
    with open(argv[2], "wb") as f:
        f.write(bz)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
