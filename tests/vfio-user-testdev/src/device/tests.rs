//! Register semantics of the device model, driven without a socket.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use super::*;
use crate::config::{MSIX_CONTROL, MSIX_CONTROL_ENABLE, MSIX_CONTROL_FUNCTION_MASK};
use crate::dma::tests::backing;
use crate::irq::tests::{eventfd, take};
use crate::options::Layout;

fn device(vectors: u32, direct_msix: bool, layout: Layout) -> Device {
    Device::new(DeviceOptions {
        vectors,
        direct_msix,
        layout,
    })
    .unwrap()
}

fn read(d: &mut Device, offset: usize) -> u32 {
    let mut b = [0u8; 4];
    d.region_read(REGION_BAR0, offset as u64, &mut b, Instant::now())
        .unwrap();
    u32::from_le_bytes(b)
}

fn write(d: &mut Device, offset: usize, value: u32) {
    d.region_write(
        REGION_BAR0,
        offset as u64,
        &value.to_le_bytes(),
        Instant::now(),
    )
    .unwrap();
}

fn write_config16(d: &mut Device, offset: usize, value: u16) {
    d.region_write(
        REGION_CONFIG,
        offset as u64,
        &value.to_le_bytes(),
        Instant::now(),
    )
    .unwrap();
}

/// Gives vectors `0..n` eventfds; returns the readers.
fn msix_fds(d: &mut Device, n: u32) -> Vec<File> {
    (0..n)
        .map(|v| {
            let (fd, reader) = eventfd();
            d.set_irqs(irq::MSIX, 0x24, v, 1, vec![fd]).unwrap();
            reader
        })
        .collect()
}

fn doorbell(first: u32, count: u32) -> u32 {
    DOORBELL_GO | ((count - 1) << DOORBELL_COUNT_SHIFT) | first
}

fn entry_control(vector: usize) -> usize {
    MSIX_TABLE_OFFSET as usize + vector * MSIX_ENTRY_SIZE + MSIX_ENTRY_VECTOR_CONTROL
}

#[test]
fn identity_and_reset_state() {
    let mut d = device(256, false, Layout::Normal);
    assert_eq!(read(&mut d, ID), ID_VALUE);
    assert_eq!(read(&mut d, VECTORS), 256);
    assert_eq!(read(&mut d, FLAGS), 0);
    assert_eq!(read(&mut d, entry_control(0)), 1);
    assert_eq!(read(&mut d, entry_control(255)), 1);
    assert_eq!(read(&mut d, MSIX_TABLE_OFFSET as usize), 0);
    assert_eq!(read(&mut d, MSIX_PBA_OFFSET as usize), 0);
    assert_eq!(read(&mut device(8, true, Layout::Normal), FLAGS), 1);
}

#[test]
fn scratch_reads_back() {
    let mut d = device(8, false, Layout::Normal);
    write(&mut d, SCRATCH, 0xfeed_f00d);
    assert_eq!(read(&mut d, SCRATCH), 0xfeed_f00d);
}

#[test]
fn doorbell_fires_a_burst_in_order_and_clears() {
    let mut d = device(8, false, Layout::Normal);
    let readers = msix_fds(&mut d, 8);
    write(&mut d, DOORBELL, doorbell(1, 3));
    assert_eq!(read(&mut d, DOORBELL), 0);
    let counts: Vec<u64> = readers.iter().map(take).collect();
    assert_eq!(counts, [0, 1, 1, 1, 0, 0, 0, 0]);
    assert_eq!(read(&mut d, SIGNALS), 3);
    assert_eq!(read(&mut d, DROPPED), 0);
    // Without GO the value is only stored.
    write(&mut d, DOORBELL, 5);
    assert_eq!(read(&mut d, DOORBELL), 5);
    assert_eq!(read(&mut d, SIGNALS), 3);
}

#[test]
fn fires_without_eventfd_or_past_n_are_dropped() {
    let mut d = device(4, false, Layout::Normal);
    let readers = msix_fds(&mut d, 2);
    write(&mut d, DOORBELL, doorbell(1, 5));
    assert_eq!(take(&readers[1]), 1);
    assert_eq!(read(&mut d, SIGNALS), 1);
    assert_eq!(read(&mut d, DROPPED), 4);
    d.set_irqs(irq::MSIX, 0x21, 0, 0, vec![]).unwrap();
    write(&mut d, DOORBELL, doorbell(0, 1));
    assert_eq!(take(&readers[0]), 0);
    assert_eq!(read(&mut d, DROPPED), 5);
}

#[test]
fn writes_through_the_mapping_are_noticed_by_service() {
    let mut d = device(4, false, Layout::Normal);
    let readers = msix_fds(&mut d, 4);
    d.bar.store32(DOORBELL, doorbell(2, 1));
    d.service(Instant::now());
    assert_eq!(take(&readers[2]), 1);
    assert_eq!(d.bar.reg(DOORBELL), 0);
    assert_eq!(d.bar.reg(SIGNALS), 1);
}

#[test]
fn normal_mode_ignores_table_and_enable() {
    let mut d = device(4, false, Layout::Normal);
    let readers = msix_fds(&mut d, 4);
    // Entries are masked after reset and MSI-X is disabled in config.
    write(&mut d, DOORBELL, doorbell(0, 1));
    assert_eq!(take(&readers[0]), 1);
    assert_eq!(read(&mut d, MASKED), 0);
    assert_eq!(read(&mut d, MSIX_PBA_OFFSET as usize), 0);
}

#[test]
fn direct_mode_disabled_drops() {
    let mut d = device(4, true, Layout::Normal);
    let readers = msix_fds(&mut d, 4);
    write(&mut d, entry_control(0), 0);
    write(&mut d, DOORBELL, doorbell(0, 1));
    assert_eq!(take(&readers[0]), 0);
    assert_eq!(read(&mut d, DROPPED), 1);
}

#[test]
fn direct_mode_masked_entry_latches_pba_and_delivers_on_unmask() {
    let mut d = device(70, true, Layout::Normal);
    let readers = msix_fds(&mut d, 70);
    write_config16(&mut d, MSIX_CONTROL, MSIX_CONTROL_ENABLE);
    write(&mut d, DOORBELL, doorbell(65, 1));
    write(&mut d, DOORBELL, doorbell(65, 1));
    assert_eq!(take(&readers[65]), 0);
    assert_eq!(read(&mut d, MASKED), 2);
    assert_eq!(read(&mut d, MSIX_PBA_OFFSET as usize + 8), 1 << 1);
    assert!(d.msix.is_pending(65));
    // Unmasking the entry delivers it once and clears the bit.
    write(&mut d, entry_control(65), 0);
    assert_eq!(take(&readers[65]), 1);
    assert_eq!(read(&mut d, MSIX_PBA_OFFSET as usize + 8), 0);
    assert_eq!(read(&mut d, SIGNALS), 1);
    // Unmasked: delivered at once.
    write(&mut d, DOORBELL, doorbell(65, 1));
    assert_eq!(take(&readers[65]), 1);
}

#[test]
fn direct_mode_unmask_through_the_mapping() {
    let mut d = device(4, true, Layout::Normal);
    let readers = msix_fds(&mut d, 4);
    write_config16(&mut d, MSIX_CONTROL, MSIX_CONTROL_ENABLE);
    write(&mut d, DOORBELL, doorbell(3, 1));
    assert_eq!(d.bar.reg(MSIX_PBA_OFFSET as usize), 1 << 3);
    d.bar.store32(entry_control(3), 0);
    d.service(Instant::now());
    assert_eq!(take(&readers[3]), 1);
    assert_eq!(d.bar.reg(MSIX_PBA_OFFSET as usize), 0);
}

#[test]
fn direct_mode_function_mask() {
    let mut d = device(4, true, Layout::Normal);
    let readers = msix_fds(&mut d, 4);
    write_config16(
        &mut d,
        MSIX_CONTROL,
        MSIX_CONTROL_ENABLE | MSIX_CONTROL_FUNCTION_MASK,
    );
    write(&mut d, entry_control(1), 0);
    write(&mut d, DOORBELL, doorbell(1, 1));
    assert_eq!(take(&readers[1]), 0);
    assert_eq!(read(&mut d, MASKED), 1);
    assert_eq!(read(&mut d, MSIX_PBA_OFFSET as usize), 1 << 1);
    write_config16(&mut d, MSIX_CONTROL, MSIX_CONTROL_ENABLE);
    assert_eq!(take(&readers[1]), 1);
    assert_eq!(read(&mut d, MSIX_PBA_OFFSET as usize), 0);
}

#[test]
fn intx_automask_and_unmask() {
    let mut d = device(4, false, Layout::Normal);
    let (fd, reader) = eventfd();
    d.set_irqs(irq::INTX, 0x24, 0, 1, vec![fd]).unwrap();
    write(&mut d, INTX, 1);
    assert_eq!(take(&reader), 1);
    assert_eq!(read(&mut d, INTX), 1);
    assert_eq!(read(&mut d, INTX_SIGNALS), 1);
    // Masked: a new edge does nothing until the unmask, which re-signals the held level.
    write(&mut d, INTX, 0);
    write(&mut d, INTX, 1);
    assert_eq!(take(&reader), 0);
    d.set_irqs(irq::INTX, 0x11, 0, 1, vec![]).unwrap();
    assert_eq!(take(&reader), 1);
    assert_eq!(read(&mut d, INTX_SIGNALS), 2);
    // The guest deasserts before EOI; the unmask then stays quiet.
    write(&mut d, INTX, 0);
    d.set_irqs(irq::INTX, 0x11, 0, 1, vec![]).unwrap();
    assert_eq!(take(&reader), 0);
    // Explicit mask holds back an assert.
    d.set_irqs(irq::INTX, 0x09, 0, 1, vec![]).unwrap();
    d.bar.store32(INTX, 1);
    d.service(Instant::now());
    assert_eq!(take(&reader), 0);
    d.set_irqs(irq::INTX, 0x11, 0, 1, vec![]).unwrap();
    assert_eq!(take(&reader), 1);
    assert_eq!(read(&mut d, INTX_SIGNALS), 3);
}

#[test]
fn msi_doorbell() {
    let mut d = device(4, false, Layout::Normal);
    write(&mut d, MSI_DOORBELL, MSI_DOORBELL_GO);
    assert_eq!(read(&mut d, MSI_DOORBELL), 0);
    assert_eq!(read(&mut d, MSI_SIGNALS), 0);
    let (fd, reader) = eventfd();
    d.set_irqs(irq::MSI, 0x24, 0, 1, vec![fd]).unwrap();
    write(&mut d, MSI_DOORBELL, MSI_DOORBELL_GO);
    assert_eq!(take(&reader), 1);
    assert_eq!(read(&mut d, MSI_SIGNALS), 1);
}

fn start_dma(d: &mut Device, src: u64, dst: u64, count: u32, cmd: u32) {
    for (reg, v) in [
        (DMA_SRC, src as u32),
        (DMA_SRC + 4, (src >> 32) as u32),
        (DMA_DST, dst as u32),
        (DMA_DST + 4, (dst >> 32) as u32),
        (DMA_COUNT, count),
    ] {
        write(d, reg, v);
    }
    write(d, DMA_CMD, cmd | DMA_CMD_START);
    assert_eq!(read(d, DMA_CMD) & DMA_CMD_START, 0);
}

#[test]
fn dma_both_ways() {
    let mut d = device(4, false, Layout::Normal);
    let readers = msix_fds(&mut d, 4);
    let f: File = backing(0x10000);
    d.dma_map(
        0x1_0000_0000,
        0x10000,
        Some(f.try_clone().unwrap()),
        0,
        true,
        true,
    )
    .unwrap();
    let pattern: Vec<u8> = (0..0x100u32).map(|i| (i * 7) as u8).collect();
    f.write_at(&pattern, 0x2000).unwrap();
    start_dma(&mut d, 0x1_0000_2000, 0x40010, 0x100, 0);
    assert_eq!(read(&mut d, DMA_STATUS), DMA_STATUS_DONE);
    assert_eq!(read(&mut d, DMA_DONE), 1);
    let mut got = vec![0u8; 0x100];
    d.region_read(REGION_BAR0, 0xc010, &mut got, Instant::now())
        .unwrap();
    assert_eq!(got, pattern);
    // Back out to another place in guest memory, with a completion interrupt.
    write(&mut d, DMA_VECTOR, 2);
    start_dma(
        &mut d,
        0x40010,
        0x1_0000_8000,
        0x100,
        DMA_CMD_TO_GUEST | DMA_CMD_IRQ,
    );
    assert_eq!(read(&mut d, DMA_STATUS), DMA_STATUS_DONE);
    assert_eq!(read(&mut d, DMA_DONE), 2);
    f.read_at(&mut got, 0x8000).unwrap();
    assert_eq!(got, pattern);
    assert_eq!(take(&readers[2]), 1);
    // Whole buffer, both ends.
    start_dma(&mut d, 0x1_0000_0000, 0x40000, 0x4000, 0);
    assert_eq!(read(&mut d, DMA_STATUS), DMA_STATUS_DONE);
}

#[test]
fn dma_failures_copy_nothing() {
    let mut d = device(4, false, Layout::Normal);
    let f: File = backing(0x2000);
    d.dma_map(0x10000, 0x1000, Some(f.try_clone().unwrap()), 0, true, true)
        .unwrap();
    let cases = [
        // Runs past the mapping.
        (0x10f00u64, 0x40000u64, 0x200u32, 0u32),
        // Unmapped guest destination.
        (0x40000, 0x20000, 0x10, DMA_CMD_TO_GUEST),
        // Buffer range past the buffer.
        (0x10000, 0x43ff0, 0x20, 0),
        // Below the buffer.
        (0x10000, 0x3fff0, 0x10, 0),
        // Too long.
        (0x10000, 0x40000, 0x4001, 0),
    ];
    for (src, dst, count, cmd) in cases {
        start_dma(&mut d, src, dst, count, cmd);
        assert_eq!(
            read(&mut d, DMA_STATUS),
            DMA_STATUS_FAILED,
            "{src:#x}->{dst:#x}"
        );
    }
    assert_eq!(read(&mut d, DMA_DONE), 0);
    let mut buf = vec![0u8; 0x4000];
    d.region_read(REGION_BAR0, 0xc000, &mut buf, Instant::now())
        .unwrap();
    assert!(buf.iter().all(|b| *b == 0));
    // After an unmap the same transfer fails.
    start_dma(&mut d, 0x10000, 0x40000, 0x10, 0);
    assert_eq!(read(&mut d, DMA_STATUS), DMA_STATUS_DONE);
    d.dma_unmap(0x10000, 0x1000, false, false).unwrap();
    start_dma(&mut d, 0x10000, 0x40000, 0x10, 0);
    assert_eq!(read(&mut d, DMA_STATUS), DMA_STATUS_FAILED);
}

#[test]
fn timer_back_to_back_and_periodic() {
    let mut d = device(4, false, Layout::Normal);
    let readers = msix_fds(&mut d, 4);
    write(&mut d, TIMER_VECTOR, 1);
    write(&mut d, TIMER_COUNT, 5);
    assert_eq!(take(&readers[1]), 5);
    assert_eq!(read(&mut d, TIMER_FIRED), 5);
    assert_eq!(read(&mut d, TIMER_COUNT), 0);

    let t0 = Instant::now();
    write(&mut d, TIMER_VECTOR, 3);
    write(&mut d, TIMER_PERIOD, 1000);
    d.region_write(REGION_BAR0, TIMER_COUNT as u64, &3u32.to_le_bytes(), t0)
        .unwrap();
    d.service(t0);
    assert_eq!(take(&readers[3]), 0);
    assert_eq!(d.bar.reg(TIMER_COUNT), 3);
    assert_eq!(d.next_deadline(), Some(t0 + Duration::from_millis(1)));
    d.service(t0 + Duration::from_millis(1));
    assert_eq!(take(&readers[3]), 1);
    assert_eq!(d.bar.reg(TIMER_COUNT), 2);
    d.service(t0 + Duration::from_millis(5));
    assert_eq!(take(&readers[3]), 2);
    assert_eq!(d.bar.reg(TIMER_COUNT), 0);
    assert_eq!(d.bar.reg(TIMER_FIRED), 8);
    assert_eq!(d.next_deadline(), None);
}

#[test]
fn timer_count_written_through_the_mapping_and_cancelled() {
    let mut d = device(4, false, Layout::Normal);
    let readers = msix_fds(&mut d, 4);
    let t0 = Instant::now();
    d.bar.store32(TIMER_PERIOD, 100);
    d.bar.store32(TIMER_COUNT, 4);
    d.service(t0);
    assert!(d.next_deadline().is_some());
    d.bar.store32(TIMER_COUNT, 0);
    d.service(t0);
    assert_eq!(d.next_deadline(), None);
    d.service(t0 + Duration::from_secs(1));
    assert_eq!(take(&readers[0]), 0);
}

#[test]
fn read_only_registers_are_restored() {
    let mut d = device(4, true, Layout::Normal);
    for reg in READ_ONLY {
        d.bar.store32(reg, 0xdead_beef);
    }
    d.service(Instant::now());
    assert_eq!(d.bar.reg(ID), ID_VALUE);
    assert_eq!(d.bar.reg(VECTORS), 4);
    assert_eq!(d.bar.reg(FLAGS), 1);
    assert_eq!(d.bar.reg(SIGNALS), 0);
    assert_eq!(d.bar.reg(DMA_STATUS), 0);
    write(&mut d, ID, 0);
    write(&mut d, SIGNALS, 9);
    assert_eq!(read(&mut d, ID), ID_VALUE);
    assert_eq!(read(&mut d, SIGNALS), 0);
}

#[test]
fn reset_clears_state_but_keeps_eventfds() {
    let mut d = device(8, true, Layout::Normal);
    let readers = msix_fds(&mut d, 8);
    write_config16(&mut d, MSIX_CONTROL, MSIX_CONTROL_ENABLE);
    write(&mut d, SCRATCH, 1);
    write(&mut d, DOORBELL, doorbell(2, 1));
    write(&mut d, entry_control(3), 0);
    write(&mut d, MSIX_TABLE_OFFSET as usize + 3 * 16, 0xfee0_0000);
    write(&mut d, DMA_BUFFER_OFFSET, 0x1234);
    write(&mut d, TIMER_PERIOD, 1_000_000);
    write(&mut d, TIMER_COUNT, 10);
    assert_eq!(read(&mut d, MASKED), 1);
    d.reset();
    assert_eq!(read(&mut d, SCRATCH), 0);
    assert_eq!(read(&mut d, MASKED), 0);
    assert_eq!(read(&mut d, TIMER_COUNT), 0);
    assert_eq!(read(&mut d, MSIX_PBA_OFFSET as usize), 0);
    assert_eq!(read(&mut d, DMA_BUFFER_OFFSET), 0);
    assert_eq!(read(&mut d, entry_control(3)), 1);
    assert_eq!(read(&mut d, MSIX_TABLE_OFFSET as usize + 3 * 16), 0);
    assert_eq!(read(&mut d, ID), ID_VALUE);
    assert!(!d.msix.is_pending(2));
    assert_eq!(d.next_deadline(), None);
    assert!(d.msix.has_fd(7));
    write(&mut d, entry_control(7), 0);
    write(&mut d, DOORBELL, doorbell(7, 1));
    assert_eq!(take(&readers[7]), 1);
}

#[test]
fn control_register() {
    let mut d = device(4, false, Layout::Normal);
    write(&mut d, CONTROL, 0x1234);
    assert_eq!(read(&mut d, CONTROL), 0);
    assert_eq!(d.take_control(), None);
    write(&mut d, CONTROL, CONTROL_EXIT);
    assert_eq!(d.take_control(), Some(Control::Exit));
    d.bar.store32(CONTROL, CONTROL_HANG);
    d.service(Instant::now());
    assert_eq!(d.take_control(), Some(Control::Hang));
    assert_eq!(d.bar.reg(CONTROL), 0);
}

#[test]
fn region_bounds_and_rom() {
    let mut d = device(4, false, Layout::Normal);
    let now = Instant::now();
    let mut b = [0u8; 4];
    assert!(d.region_read(REGION_BAR0, 0xfffd, &mut b, now).is_err());
    assert!(d.region_read(REGION_BAR0, u64::MAX, &mut b, now).is_err());
    assert!(d.region_write(REGION_BAR0, 0x10000, &b, now).is_err());
    assert!(d.region_read(1, 0, &mut b, now).is_err());
    assert!(d.region_read(8, 0, &mut b, now).is_err());
    assert!(d.region_read(9, 0, &mut b, now).is_err());
    assert!(d.region_write(9, 0, &b, now).is_err());
    assert!(d.region_write(REGION_ROM, 0, &b, now).is_err());
    assert!(d.region_read(REGION_CONFIG, 0xfe, &mut b, now).is_err());
    let mut rom = vec![0u8; ROM_SIZE];
    d.region_read(REGION_ROM, 0, &mut rom, now).unwrap();
    assert_eq!(rom[..2], [0x55, 0xaa]);
    assert_eq!(&rom[0x10..0x21], b"IRVMM-TESTDEV-ROM");
    assert!(rom[0x21..].iter().all(|b| *b == 0));
    assert!(d.region_read(REGION_ROM, 0xfff, &mut b, now).is_err());
    d.region_read(REGION_CONFIG, 0, &mut b, now).unwrap();
    assert_eq!(u32::from_le_bytes(b), 0x11ea_1234);
}

/// Broken layouts and vector counts must never panic, whatever the guest does.
#[test]
fn bad_layouts_do_not_panic() {
    for (vectors, layout) in [
        (0, Layout::Normal),
        (4096, Layout::Normal),
        (2049, Layout::Normal),
        (256, Layout::Beyond),
        (4096, Layout::Beyond),
        (256, Layout::Overlap),
        (4096, Layout::Overlap),
    ] {
        for direct in [false, true] {
            let mut d = device(vectors, direct, layout);
            let _readers = msix_fds(&mut d, vectors.min(64));
            write_config16(&mut d, MSIX_CONTROL, MSIX_CONTROL_ENABLE);
            for first in [0u32, 60, 127, 200, 2047, 4000, 0xffff] {
                write(&mut d, DOORBELL, doorbell(first, 0x8000));
            }
            // Unmask everything the BAR holds, then reset twice.
            let mut ctrl = layout.table_offset() as usize + MSIX_ENTRY_VECTOR_CONTROL;
            while ctrl < BAR0_SIZE {
                d.bar.store32(ctrl, 0);
                ctrl += MSIX_ENTRY_SIZE;
            }
            d.service(Instant::now());
            d.reset();
            d.reset();
            assert_eq!(read(&mut d, VECTORS), vectors);
        }
    }
}
