#!/usr/bin/env python3
"""Pull the uncompressed ELF kernel (vmlinux) out of an x86 bzImage.

Usage:
  bzimage.py info BZIMAGE             print the setup-header facts and the payload's compression
  bzimage.py extract BZIMAGE OUT      write the ELF kernel to OUT (verified: ELF64 x86-64 with a
                                      Xen PHYS32_ENTRY note, i.e. bootable through PVH)
  bzimage.py pvh ELF                  check an ELF for the PVH entry note, print the entry point

How it works (x86 boot protocol, Documentation/arch/x86/boot.rst): the real-mode setup code
occupies (setup_sects + 1) * 512 bytes (setup_sects at 0x1f1, 0 meaning 4); the protected-mode
image follows.  Since protocol 2.08 the header holds payload_offset (0x248) and payload_length
(0x24c), relative to the start of that protected-mode image, locating the compressed kernel.
The compression is recognised by its magic bytes and undone by the matching command-line tool
(xz, zstd, gzip, lz4, bzip2, lzma, lzop).  Kernel builds append the uncompressed size as a
little-endian u32 after most formats; that trailer is tried both stripped and kept.
"""

import struct
import subprocess
import sys

# magic prefix -> (name, decompress command reading stdin and writing stdout)
FORMATS = [
    (b"\xfd7zXZ\x00", "xz", ["xz", "-dc", "--single-stream"]),
    (b"\x28\xb5\x2f\xfd", "zstd", ["zstd", "-dc"]),
    (b"\x1f\x8b", "gzip", ["gzip", "-dc"]),
    (b"\x02\x21\x4c\x18", "lz4", ["lz4", "-dc"]),
    (b"BZh", "bzip2", ["bzip2", "-dc"]),
    (b"\x89LZO", "lzo", ["lzop", "-dc"]),
    (b"\x5d\x00\x00", "lzma", ["xz", "-dc", "--format=lzma"]),
]

PT_NOTE = 4
XEN_ELFNOTE_PHYS32_ENTRY = 18


class Error(Exception):
    pass


def parse_bzimage(data):
    if len(data) < 0x250 or data[0x202:0x206] != b"HdrS":
        raise Error("not a bzImage: no 'HdrS' signature at 0x202")
    version = struct.unpack_from("<H", data, 0x206)[0]
    if version < 0x208:
        raise Error(f"boot protocol {version >> 8}.{version & 0xff:02} has no payload fields (need >= 2.08)")
    setup_sects = data[0x1F1] or 4
    pm_start = (setup_sects + 1) * 512
    payload_offset, payload_length = struct.unpack_from("<II", data, 0x248)
    start = pm_start + payload_offset
    end = start + payload_length
    if payload_length == 0 or end > len(data):
        raise Error(f"payload [{start:#x}, {end:#x}) does not fit in the {len(data)}-byte file")
    payload = data[start:end]
    for magic, name, cmd in FORMATS:
        if payload.startswith(magic):
            break
    else:
        raise Error(f"unknown compression, payload starts with {payload[:8].hex()}")
    return {
        "protocol": f"{version >> 8}.{version & 0xff:02}",
        "setup_sects": setup_sects,
        "pm_start": pm_start,
        "payload_offset": start,
        "payload_length": payload_length,
        "compression": name,
        "command": cmd,
        "payload": payload,
    }


def decompress(info):
    payload = info["payload"]
    trailer = struct.unpack_from("<I", payload, len(payload) - 4)[0]
    attempts = []
    for candidate in (payload[:-4], payload):
        try:
            proc = subprocess.run(info["command"], input=candidate, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, check=False)
        except FileNotFoundError:
            raise Error(f"'{info['command'][0]}' is not installed (needed for {info['compression']})")
        out = proc.stdout
        # gzip exits 2 on "trailing garbage ignored": a warning, the output is complete.
        ok = proc.returncode == 0 or (info["compression"] == "gzip" and proc.returncode == 2)
        if ok and out[:4] == b"\x7fELF":
            return out, trailer == len(out)
        attempts.append(f"rc={proc.returncode} {proc.stderr.decode(errors='replace').strip()[:200]}")
    raise Error(f"{info['compression']} decompression failed: " + "; ".join(attempts))


def pvh_entry(elf):
    """Return the PVH (Xen PHYS32_ENTRY) entry address of an ELF64 image, or None."""
    if elf[:4] != b"\x7fELF":
        raise Error("not an ELF file")
    if elf[4] != 2 or elf[5] != 1:
        raise Error("not a little-endian ELF64 file")
    machine = struct.unpack_from("<H", elf, 0x12)[0]
    if machine != 0x3E:
        raise Error(f"ELF machine {machine:#x} is not x86-64")
    phoff = struct.unpack_from("<Q", elf, 0x20)[0]
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for i in range(phnum):
        ph = phoff + i * phentsize
        p_type = struct.unpack_from("<I", elf, ph)[0]
        if p_type != PT_NOTE:
            continue
        p_offset = struct.unpack_from("<Q", elf, ph + 8)[0]
        p_filesz = struct.unpack_from("<Q", elf, ph + 32)[0]
        pos, end = p_offset, p_offset + p_filesz
        while pos + 12 <= end:
            namesz, descsz, n_type = struct.unpack_from("<III", elf, pos)
            name_at = pos + 12
            desc_at = name_at + ((namesz + 3) & ~3)
            name = elf[name_at:name_at + namesz].rstrip(b"\0")
            if name == b"Xen" and n_type == XEN_ELFNOTE_PHYS32_ENTRY:
                desc = elf[desc_at:desc_at + descsz]
                if descsz == 4:
                    return struct.unpack("<I", desc)[0]
                if descsz == 8:
                    return struct.unpack("<Q", desc)[0]
                raise Error(f"PHYS32_ENTRY note has a {descsz}-byte descriptor")
            pos = desc_at + ((descsz + 3) & ~3)
    return None


def main(argv):
    if len(argv) < 3 or argv[1] not in ("info", "extract", "pvh"):
        print(__doc__.strip().split("\n\n")[1], file=sys.stderr)
        return 2
    cmd, path = argv[1], argv[2]
    with open(path, "rb") as f:
        data = f.read()
    if cmd == "pvh":
        entry = pvh_entry(data)
        if entry is None:
            raise Error(f"{path}: no Xen PHYS32_ENTRY (PVH) note")
        print(f"pvh_entry={entry:#x}")
        return 0
    info = parse_bzimage(data)
    if cmd == "info":
        for key in ("protocol", "setup_sects", "pm_start", "payload_offset", "payload_length", "compression"):
            value = info[key]
            print(f"{key}={value:#x}" if isinstance(value, int) and key != "setup_sects" else f"{key}={value}")
        print(f"tool={info['command'][0]}")
        return 0
    if len(argv) != 4:
        raise Error("extract needs BZIMAGE and OUT")
    elf, size_matches = decompress(info)
    entry = pvh_entry(elf)
    if entry is None:
        raise Error("the decompressed kernel has no Xen PHYS32_ENTRY (PVH) note (CONFIG_PVH=n?)")
    with open(argv[3], "wb") as f:
        f.write(elf)
    print(f"compression={info['compression']} payload={info['payload_length']} bytes "
          f"vmlinux={len(elf)} bytes size_trailer={'ok' if size_matches else 'absent'} "
          f"pvh_entry={entry:#x}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except (Error, OSError) as e:
        print(f"bzimage.py: error: {e}", file=sys.stderr)
        sys.exit(1)
