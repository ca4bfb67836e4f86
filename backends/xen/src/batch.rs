//! The multicall queue of lazy CPU mode (Linux `arch/x86/xen/multicalls.c`).
//!
//! A fixed buffer of [`MC_BATCH`] calls plus an arena for the argument
//! structures they point at (only `mmuext_op` here), kept in the backend's
//! own state. Nothing is written to guest memory until the flush, which lays
//! the batch out in the platform's scratch buffer:
//!
//! | scratch offset | contents |
//! |---|---|
//! | 0 .. 2048 | up to 32 `multicall_entry` (64 bytes each) |
//! | 2048 .. 2816 | up to 32 `mmuext_op` (24 bytes each) |
//!
//! so the buffer (at least 4096 bytes by the `XenPlatform` contract) always
//! holds a full batch.

pub(crate) use crate::abi::MC_BATCH;
use crate::abi::{MMUEXT_OP_SIZE, MULTICALL_ENTRY_SIZE, MmuextOp};
use pvops::Slot;

/// Scratch offset of the entry array.
pub(crate) const ENTRIES_OFFSET: usize = 0;
/// Scratch offset of the argument arena.
pub(crate) const ARENA_OFFSET: usize = MC_BATCH * MULTICALL_ENTRY_SIZE;
/// Scratch bytes a full batch needs.
pub(crate) const SCRATCH_NEEDED: usize = ARENA_OFFSET + MC_BATCH * MMUEXT_OP_SIZE;

const _: () = assert!(SCRATCH_NEEDED <= 4096);

/// What a queued call updates in the backend's own bookkeeping, so a failure
/// reported at flush time can undo it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tag {
    /// Nothing.
    None,
    /// The TLS shadow slot `i` (invalidated if the call fails, so the next
    /// `load_tls` sends it again).
    Tls(usize),
}

/// One queued hypercall.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Queued {
    /// Hypercall name for errors.
    pub name: &'static str,
    /// Hypercall number.
    pub nr: u32,
    /// Arguments. When `arena` is set, `args[0]` is replaced at flush time
    /// by the guest address of that arena slot.
    pub args: [u64; 6],
    /// Index of this call's `mmuext_op` in the arena.
    pub arena: Option<usize>,
    /// Bookkeeping to undo on failure.
    pub tag: Tag,
    /// The slot or vector the call is about (for errors).
    pub at: Slot,
}

impl Queued {
    const EMPTY: Queued = Queued {
        name: "",
        nr: 0,
        args: [0; 6],
        arena: None,
        tag: Tag::None,
        at: Slot::None,
    };

    /// A call with scalar arguments only.
    pub const fn new(name: &'static str, nr: u32, args: [u64; 6], tag: Tag) -> Queued {
        Queued {
            name,
            nr,
            args,
            arena: None,
            tag,
            at: Slot::None,
        }
    }

    /// The same call, about `at`.
    pub const fn about(self, at: Slot) -> Queued {
        Queued { at, ..self }
    }
}

/// The fixed-capacity queue.
pub(crate) struct Batch {
    entries: [Queued; MC_BATCH],
    len: usize,
    arena: [MmuextOp; MC_BATCH],
    arena_len: usize,
}

impl Batch {
    pub const fn new() -> Batch {
        Batch {
            entries: [Queued::EMPTY; MC_BATCH],
            len: 0,
            arena: [MmuextOp {
                cmd: 0,
                arg1: 0,
                arg2: 0,
            }; MC_BATCH],
            arena_len: 0,
        }
    }

    /// Calls queued.
    pub const fn len(&self) -> usize {
        self.len
    }

    /// Room for `calls` more calls (each with at most one arena struct)?
    pub const fn has_room(&self, calls: usize) -> bool {
        self.len + calls <= MC_BATCH && self.arena_len + calls <= MC_BATCH
    }

    /// Queue a call; `false` (nothing queued) when full.
    pub fn push(&mut self, q: Queued) -> bool {
        match self.entries.get_mut(self.len) {
            Some(slot) => {
                *slot = Queued { arena: None, ..q };
                self.len += 1;
                true
            }
            None => false,
        }
    }

    /// Queue a call whose first argument points at `op`; `false` when full.
    pub fn push_with_op(&mut self, q: Queued, op: MmuextOp) -> bool {
        if !self.has_room(1) {
            return false;
        }
        let k = self.arena_len;
        let (Some(slot), Some(a)) = (self.entries.get_mut(self.len), self.arena.get_mut(k)) else {
            return false;
        };
        *a = op;
        *slot = Queued {
            arena: Some(k),
            ..q
        };
        self.arena_len += 1;
        self.len += 1;
        true
    }

    /// The queued calls and arena, in order.
    pub fn calls(&self) -> &[Queued] {
        self.entries.get(..self.len).unwrap_or(&[])
    }

    /// The arena in use.
    pub fn arena(&self) -> &[MmuextOp] {
        self.arena.get(..self.arena_len).unwrap_or(&[])
    }

    /// Forget everything queued.
    pub fn clear(&mut self) {
        self.len = 0;
        self.arena_len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_and_arena() {
        let mut b = Batch::new();
        assert!(b.has_room(MC_BATCH));
        for i in 0..MC_BATCH - 1 {
            assert!(b.push(Queued::new("x", 10, [i as u64, 0, 0, 0, 0, 0], Tag::None)));
        }
        assert!(b.push_with_op(
            Queued::new("mmuext_op", 26, [0, 1, 0, 0x7ff0, 0, 0], Tag::None),
            MmuextOp::set_ldt(0x1000, 1)
        ));
        assert_eq!(b.len(), MC_BATCH);
        assert!(!b.has_room(1));
        assert!(!b.push(Queued::new("x", 10, [0; 6], Tag::None)));
        assert_eq!(b.calls()[MC_BATCH - 1].arena, Some(0));
        assert_eq!(b.arena(), &[MmuextOp::set_ldt(0x1000, 1)]);
        b.clear();
        assert_eq!(b.len(), 0);
        assert!(b.arena().is_empty());
    }
}
