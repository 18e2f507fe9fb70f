//! Packet loads and stores of 2 and 4 bytes as single instructions, at a
//! constant offset from a bounds-checked pointer. The verifier accepts
//! unaligned packet access here (x86-64 has efficient unaligned access and
//! the program is not loaded with `BPF_F_STRICT_ALIGNMENT`), but Rust's
//! `read_unaligned` and byte-array fields compile to one load per byte plus
//! shifts and ors in BPF: three to four times the instructions, and the
//! register pressure that spills to the stack. Values are the wire bytes in
//! native order (`from_ne_bytes` of them): compare with constants built the
//! same way.

/// The two bytes at `base + OFF`.
///
/// # Safety
/// `base + OFF .. base + OFF + 2` is inside the packet (bounds-checked).
#[inline(always)]
pub unsafe fn load16<const OFF: usize>(base: *const u8) -> u16 {
    let value: u64;
    // SAFETY: the caller guarantees the bytes are in bounds; a load has no
    // other effect.
    unsafe {
        core::arch::asm!(
            "{v} = *(u16 *)({p} + {off})",
            v = out(reg) value,
            p = in(reg) base,
            off = const OFF,
            options(pure, readonly, nostack, preserves_flags),
        );
    }
    value as u16
}

/// The four bytes at `base + OFF`.
///
/// # Safety
/// As `load16`, for four bytes.
#[inline(always)]
pub unsafe fn load32<const OFF: usize>(base: *const u8) -> u32 {
    let value: u64;
    // SAFETY: as in `load16`.
    unsafe {
        core::arch::asm!(
            "{v} = *(u32 *)({p} + {off})",
            v = out(reg) value,
            p = in(reg) base,
            off = const OFF,
            options(pure, readonly, nostack, preserves_flags),
        );
    }
    value as u32
}

/// Writes two bytes at `base + OFF`.
///
/// # Safety
/// As `load16`, and the packet is writable (XDP).
#[inline(always)]
pub unsafe fn store16<const OFF: usize>(base: *mut u8, value: u16) {
    // SAFETY: the caller guarantees the bytes are in bounds.
    unsafe {
        core::arch::asm!(
            "*(u16 *)({p} + {off}) = {v}",
            v = in(reg) u64::from(value),
            p = in(reg) base,
            off = const OFF,
            options(nostack, preserves_flags),
        );
    }
}

/// Writes four bytes at `base + OFF`.
///
/// # Safety
/// As `store16`, for four bytes.
#[inline(always)]
pub unsafe fn store32<const OFF: usize>(base: *mut u8, value: u32) {
    // SAFETY: as in `store16`.
    unsafe {
        core::arch::asm!(
            "*(u32 *)({p} + {off}) = {v}",
            v = in(reg) u64::from(value),
            p = in(reg) base,
            off = const OFF,
            options(nostack, preserves_flags),
        );
    }
}

/// The 16-byte address at `base + OFF`, as two word loads.
///
/// # Safety
/// As `load16`, for sixteen bytes.
#[inline(always)]
pub unsafe fn load_addr6<const OFF: usize>(base: *const u8) -> [u8; 16] {
    let (high, low): (u64, u64);
    // SAFETY: as in `load16`.
    unsafe {
        core::arch::asm!(
            "{h} = *(u64 *)({p} + {off})",
            "{l} = *(u64 *)({p} + {off2})",
            h = out(reg) high,
            l = out(reg) low,
            p = in(reg) base,
            off = const OFF,
            off2 = const OFF + 8,
            options(pure, readonly, nostack, preserves_flags),
        );
    }
    // SAFETY: two words are sixteen bytes, in memory order.
    unsafe { core::mem::transmute::<[u64; 2], [u8; 16]>([high, low]) }
}

/// Writes the 16-byte address `addr` at `base + OFF`, as two word stores.
///
/// # Safety
/// As `store16`, for sixteen bytes.
#[inline(always)]
pub unsafe fn store_addr6<const OFF: usize>(base: *mut u8, addr: [u8; 16]) {
    // SAFETY: sixteen bytes are two words, in memory order.
    let [high, low] = unsafe { core::mem::transmute::<[u8; 16], [u64; 2]>(addr) };
    // SAFETY: as in `store16`.
    unsafe {
        core::arch::asm!(
            "*(u64 *)({p} + {off}) = {h}",
            "*(u64 *)({p} + {off2}) = {l}",
            h = in(reg) high,
            l = in(reg) low,
            p = in(reg) base,
            off = const OFF,
            off2 = const OFF + 8,
            options(nostack, preserves_flags),
        );
    }
}
