//! [`XenOps`]: the descriptor ops as 64-bit Xen PV hypercalls.
//!
//! See the [crate documentation](crate) for the op-by-op mapping.

use spin::Mutex;

use pvops::descriptor::SystemType;
use pvops::validate::{self, IstSupport, TableView, VectorSet};
use pvops::{
    Descriptor, DescriptorOps, DescriptorTablePointer, Errno, Gate64, Gdt, GdtEntry, GdtLayout,
    Idt, IdtGate, Ldt, PvError, Result, Selector, Slot, TLS_ENTRIES, TableKind,
};

use pvops::gate::IDT_ENTRY_SIZE;

use crate::abi::{
    DOMID_SELF, KERNEL_DS, MMUEXT_OP_SIZE, MULTICALL_ENTRY_SIZE, MmuextOp, MulticallEntry,
    PAGE_SIZE, PTE_PRESENT, PTE_RW, TRAP_INFO_SIZE, TrapInfo, UVMF_NONE,
};
use crate::batch::{ARENA_OFFSET, Batch, ENTRIES_OFFSET, MC_BATCH, Queued, SCRATCH_NEEDED, Tag};
use crate::{XenPlatform, nr};

/// Most pages a GDT or LDT spans (64 KiB, plus one when not page aligned).
const MAX_TABLE_PAGES: usize = 17;

/// Smallest scratch buffer the backend works with (the platform contract).
const MIN_SCRATCH: usize = 4096;

/// The Xen PV backend for one vCPU over platform `P`.
///
/// All state (the guest's view of GDTR/IDTR/LDTR/TR, the TLS shadow, the
/// lazy-mode queue) lives in a [`spin::Mutex`] inside the instance, so a
/// kernel keeps one `XenOps` per vCPU, like Linux's per-CPU `mc_buffer`,
/// `idt_desc` and `shadow_tls_desc`.
pub struct XenOps<P: XenPlatform> {
    platform: P,
    layout: GdtLayout,
    /// Vectors whose IST the kernel accepted to lose.
    ist_dropped: VectorSet,
    state: Mutex<State>,
}

/// First GDT entry Xen reserves for itself (`FIRST_RESERVED_GDT_ENTRY`:
/// 14 pages of 512 entries); selectors from `0xe000` up are Xen's.
pub const FIRST_RESERVED_GDT_ENTRY: u16 = 14 * 512;

/// How a kernel opts into Xen's IST dropping (for error messages).
const IST_OPT_IN: &str = "Xen's trap_info has no IST field; to take this vector on the kernel stack, opt in with XenOps::with_ist_dropped_on (e.g. VectorSet::LINUX_IST_OKAY)";

/// Slots of the shadow of TSS/LDT descriptors the backend dropped.
const SYS_SHADOW: usize = 4;

/// Per-vCPU bookkeeping.
struct State {
    /// The GDT last loaded through this backend (what `sgdt` would show on
    /// bare metal).
    gdt: Option<Gdt>,
    /// The IDT last loaded.
    idt: Option<Idt>,
    /// The LDT last loaded.
    ldt: Option<Ldt>,
    /// The selector last given to `load_tr`.
    /// What each TLS slot of the loaded GDT holds as far as we know (the
    /// value the guest asked for); `None` = unknown, send it next time.
    tls: [Option<Descriptor>; TLS_ENTRIES],
    /// Inside enter_lazy_cpu .. leave_lazy_cpu.
    lazy: bool,
    /// Deferred calls.
    batch: Batch,
    /// TSS and LDT descriptors `write_gdt_entry` was given and (as Linux)
    /// did not send, as (GDT index, low, high): the guest's view of those
    /// slots, which `load_tr` is validated against.
    sys: [Option<(u32, u64, u64)>; SYS_SHADOW],
}

impl State {
    const fn new() -> State {
        State {
            gdt: None,
            idt: None,
            ldt: None,
            tls: [None; TLS_ENTRIES],
            lazy: false,
            batch: Batch::new(),
            sys: [None; SYS_SHADOW],
        }
    }

    /// Remember a dropped TSS/LDT descriptor (replacing the one at
    /// `index`, else the oldest).
    fn shadow_sys(&mut self, index: u32, low: u64, high: u64) {
        let pos = self
            .sys
            .iter()
            .position(|s| matches!(s, Some((i, ..)) if *i == index))
            .or_else(|| self.sys.iter().position(Option::is_none));
        match pos.and_then(|p| self.sys.get_mut(p)) {
            Some(slot) => *slot = Some((index, low, high)),
            None => {
                self.sys.rotate_left(1);
                if let Some(last) = self.sys.last_mut() {
                    *last = Some((index, low, high));
                }
            }
        }
    }

    /// Forget shadowed descriptors overwritten by a sent entry at
    /// `index` (`slots` wide).
    fn unshadow_sys(&mut self, index: u32, slots: u32) {
        for s in self.sys.iter_mut() {
            if let Some((i, ..)) = *s
                && (index..index + slots).contains(&i)
            {
                *s = None;
            }
        }
    }

    /// This vCPU's view of its tables for the validation layer.
    fn view(&self) -> View {
        View {
            gdt: self.gdt,
            ldt: self.ldt,
            sys: self.sys,
        }
    }

    /// Undo the bookkeeping of a call that failed.
    fn undo(&mut self, tag: Tag) {
        match tag {
            Tag::None => {}
            Tag::Tls(i) => {
                if let Some(s) = self.tls.get_mut(i) {
                    *s = None;
                }
            }
        }
    }
}

/// The guest's view of the tables this vCPU loaded, for
/// [`pvops::validate`]: the GDT and LDT shadows read from guest memory
/// (the GDT frames are read-only, not unreadable), overlaid with the
/// TSS/LDT descriptors Xen was never sent. Xen's own selectors are Xen's
/// to judge.
struct View {
    gdt: Option<Gdt>,
    ldt: Option<Ldt>,
    sys: [Option<(u32, u64, u64)>; SYS_SHADOW],
}

impl TableView for View {
    fn gdt_entries(&self) -> Option<u32> {
        self.gdt.map(|g| g.entries())
    }
    fn gdt_word(&self, index: u32) -> u64 {
        for (i, low, high) in self.sys.iter().flatten() {
            if *i == index {
                return *low;
            }
            if i + 1 == index {
                return *high;
            }
        }
        match self.gdt.map(|g| g.slot_addr(index)) {
            // SAFETY: a slot of the GDT loaded through this backend, valid
            // until the next load through it (the load ops' contract).
            Some(Ok(addr)) => unsafe { read_u64(addr) },
            _ => 0,
        }
    }
    fn ldt_entries(&self) -> Option<u32> {
        self.ldt.map(|l| l.entries())
    }
    fn ldt_word(&self, index: u32) -> u64 {
        match self.ldt.map(|l| l.slot_addr(index)) {
            // SAFETY: a slot of the LDT loaded through this backend (or the
            // one being written), valid by the op contract.
            Some(Ok(addr)) => unsafe { read_u64(addr) },
            _ => 0,
        }
    }
    fn hypervisor_selector(&self, sel: Selector) -> bool {
        sel.index() >= FIRST_RESERVED_GDT_ENTRY
    }
}

/// Turn a hypercall return value into a result.
fn check(call: &'static str, at: Slot, ret: i64) -> Result<i64> {
    if ret < 0 {
        Err(PvError::Hypervisor {
            call,
            errno: Errno::from_return(ret).unwrap_or(Errno(i32::MAX)),
            at,
        })
    } else {
        Ok(ret)
    }
}

/// Read an aligned u64 at linear address `addr` (one relaxed atomic load:
/// the hypervisor or another CPU's op may write a table slot, and
/// [`pvops::TableStorage::read`] may read it, concurrently).
///
/// # Safety
/// `addr` must be valid for an aligned 8-byte read.
unsafe fn read_u64(addr: u64) -> u64 {
    // SAFETY: forwarded contract; concurrent accesses to table slots and
    // the scratch page are atomic words.
    unsafe { pvops::table::load_u64(addr) }
}

/// Write an aligned u64 at linear address `addr` (one relaxed atomic store).
///
/// # Safety
/// `addr` must be valid for an aligned 8-byte write.
unsafe fn write_u64(addr: u64, v: u64) {
    // SAFETY: as for `read_u64`.
    unsafe { pvops::table::store_u64(addr, v) }
}

/// Read the 16-byte IDT gate at `addr`.
///
/// # Safety
/// As [`read_u64`], for both words.
unsafe fn read_gate(addr: u64) -> Gate64 {
    // SAFETY: forwarded contract.
    unsafe {
        Gate64 {
            low: read_u64(addr),
            high: read_u64(addr + 8),
        }
    }
}

/// `gate` with its IST index cleared (what Xen can register).
const fn without_ist(gate: Gate64) -> Gate64 {
    Gate64 {
        low: gate.low & !(7 << 32),
        high: gate.high,
    }
}

/// Write consecutive words starting at `addr`.
///
/// # Safety
/// `addr .. addr + 8 * words.len()` must be valid for aligned writes.
unsafe fn write_words(addr: u64, words: &[u64]) {
    for (i, w) in words.iter().enumerate() {
        // SAFETY: inside the range the caller vouches for.
        unsafe { write_u64(addr + i as u64 * 8, *w) };
    }
}

/// Page-aligned addresses of the pages covering `bytes` bytes at `base`
/// (`bytes` > 0), and how many there are.
fn pages(base: u64, bytes: u64) -> (impl Iterator<Item = u64>, usize) {
    let first = base & !(PAGE_SIZE - 1);
    let last = base.saturating_add(bytes.saturating_sub(1)) & !(PAGE_SIZE - 1);
    let count = ((last - first) / PAGE_SIZE + 1) as usize;
    ((0..count as u64).map(move |i| first + i * PAGE_SIZE), count)
}

/// Is this an 8-byte TSS or LDT descriptor (S = 0, type 1, 2, 3, 9, 0xB)?
/// Linux's `xen_write_gdt_entry` drops writes of `DESC_TSS` / `DESC_LDT`:
/// Xen refuses them (`check_descriptor` only takes call gates among the
/// system types) and installs the guest's TSS and LDT itself.
pub const fn is_tss_or_ldt(d: Descriptor) -> bool {
    !d.is_code_or_data()
        && matches!(
            d.system_type(),
            SystemType::Tss16
                | SystemType::Ldt
                | SystemType::Tss16Busy
                | SystemType::Tss
                | SystemType::TssBusy
        )
}

impl<P: XenPlatform> XenOps<P> {
    /// The backend for the vCPU `platform` stands for. `layout` says where
    /// the TLS slots are (`load_tls`).
    pub const fn new(platform: P, layout: GdtLayout) -> Self {
        XenOps {
            platform,
            layout,
            ist_dropped: VectorSet::EMPTY,
            state: Mutex::new(State::new()),
        }
    }

    /// Accept gates with an IST index on `vectors`, registered with Xen
    /// without it (the handler then runs on the kernel stack).
    ///
    /// Xen's `set_trap_table` has no IST field, so by default a present
    /// gate with an IST index is refused
    /// ([`Rule::IstNotHonoured`](pvops::Rule::IstNotHonoured)) rather than
    /// silently changed or dropped. A kernel whose handlers for those
    /// vectors work on the kernel stack opts in here; Linux's Xen PV guest
    /// does so for [`VectorSet::LINUX_IST_OKAY`] (#DB, NMI, #DF, #MC,
    /// through Xen-specific entry points).
    pub const fn with_ist_dropped_on(mut self, vectors: VectorSet) -> Self {
        self.ist_dropped = vectors;
        self
    }

    /// The `trap_info` for gate `vector`, `None` if Xen is not told
    /// ([`TrapInfo::from_gate`]). The validation layer refused every
    /// present IST gate the kernel did not opt into losing; on the vectors
    /// it opted into, the gate goes to Xen without its IST.
    fn trap_info(&self, vector: u8, gate: Gate64) -> Option<TrapInfo> {
        let gate = if gate.ist() != 0 && self.ist_dropped.contains(vector) {
            without_ist(gate)
        } else {
            gate
        };
        TrapInfo::from_gate(vector, gate)
    }

    /// What this backend does with IST indexes.
    pub const fn ist_support(&self) -> IstSupport {
        IstSupport::DroppedOn {
            vectors: self.ist_dropped,
            opt_in: IST_OPT_IN,
        }
    }

    /// The platform.
    pub fn platform(&self) -> &P {
        &self.platform
    }

    /// The GDT layout it was built with.
    pub fn layout(&self) -> GdtLayout {
        self.layout
    }

    /// Calls queued and not yet sent (lazy mode).
    pub fn queued(&self) -> usize {
        self.state.lock().batch.len()
    }

    /// Inside `enter_lazy_cpu` .. `leave_lazy_cpu`?
    pub fn is_lazy(&self) -> bool {
        self.state.lock().lazy
    }

    /// Capacity of the multicall queue.
    pub const BATCH_CAPACITY: usize = MC_BATCH;

    // ---- helpers -------------------------------------------------------

    fn mfn(&self, op: &'static str, va: u64) -> Result<u64> {
        self.platform
            .virt_to_mfn(va)
            .ok_or(PvError::NoTranslation { op, addr: va })
    }

    /// Machine address of the byte at `va`.
    fn maddr(&self, op: &'static str, va: u64) -> Result<u64> {
        Ok((self.mfn(op, va)? << 12) | (va & (PAGE_SIZE - 1)))
    }

    /// The scratch buffer's address, checking it holds `need` bytes.
    fn scratch(&self, need: usize) -> Result<(u64, usize)> {
        let (va, len) = self.platform.scratch();
        if len < need.max(MIN_SCRATCH) || !va.is_multiple_of(8) || va == 0 {
            return Err(PvError::Unsupported {
                backend: "xen",
                op: "hypercall arguments: XenPlatform::scratch must be an aligned buffer of at least 4096 bytes",
            });
        }
        Ok((va, len))
    }

    /// Issue hypercall `nr` now.
    ///
    /// # Safety
    /// Pointer arguments must point at argument structures laid out as the
    /// hypercall expects (in the scratch buffer).
    unsafe fn call(&self, name: &'static str, at: Slot, nr: u32, args: [u64; 5]) -> Result<i64> {
        // SAFETY: forwarded contract.
        check(name, at, unsafe { self.platform.hypercall(nr, args) })
    }

    /// Send every queued call: one hypercall if there is one (Linux's
    /// singleton bypass in `xen_mc_flush`), else one `multicall`. The queue
    /// is empty afterwards whatever happened. Reports the first call that
    /// failed; every call still ran (Xen runs all entries of a multicall).
    fn flush(&self, st: &mut State) -> Result<()> {
        let n = st.batch.len();
        if n == 0 {
            return Ok(());
        }
        let result = self.send(st, n);
        st.batch.clear();
        result
    }

    fn send(&self, st: &mut State, n: usize) -> Result<()> {
        let base = match self.scratch(SCRATCH_NEEDED) {
            Ok((b, _)) => b,
            Err(e) => {
                for i in 0..n {
                    if let Some(q) = st.batch.calls().get(i).copied() {
                        st.undo(q.tag);
                    }
                }
                return Err(e);
            }
        };
        let arena = base + ARENA_OFFSET as u64;
        for (k, op) in st.batch.arena().iter().enumerate() {
            // SAFETY: the arena area of the scratch buffer (checked to hold
            // SCRATCH_NEEDED bytes), which the `XenPlatform` contract makes
            // valid aligned memory of this address space that only this
            // vCPU uses during the op; the state lock we hold serializes
            // this instance's ops.
            unsafe { write_words(arena + (k * MMUEXT_OP_SIZE) as u64, &op.to_words()) };
        }
        let resolve = |q: &Queued| {
            let mut a = q.args;
            if let Some(k) = q.arena {
                a[0] = arena + (k * MMUEXT_OP_SIZE) as u64;
            }
            a
        };
        if n == 1 {
            let Some(q) = st.batch.calls().first().copied() else {
                return Ok(());
            };
            let a = resolve(&q);
            // SAFETY: arguments as queued; a pointer argument was resolved
            // to its arena slot, written above.
            let r = unsafe { self.call(q.name, q.at, q.nr, [a[0], a[1], a[2], a[3], a[4]]) };
            if r.is_err() {
                st.undo(q.tag);
            }
            return r.map(|_| ());
        }
        let entries = base + ENTRIES_OFFSET as u64;
        for i in 0..n {
            let Some(q) = st.batch.calls().get(i).copied() else {
                break;
            };
            let e = MulticallEntry {
                op: q.nr as u64,
                result: 0,
                args: resolve(&q),
            };
            // SAFETY: entry i of the entry area of the scratch buffer
            // (i < MC_BATCH; see `send`'s first write for ownership).
            unsafe { write_words(entries + (i * MULTICALL_ENTRY_SIZE) as u64, &e.to_words()) };
        }
        // SAFETY: `entries` holds n multicall entries written above.
        let r = unsafe {
            self.call(
                "multicall",
                Slot::None,
                nr::MULTICALL,
                [entries, n as u64, 0, 0, 0],
            )
        };
        if let Err(e) = r {
            for i in 0..n {
                if let Some(q) = st.batch.calls().get(i).copied() {
                    st.undo(q.tag);
                }
            }
            return Err(e);
        }
        let mut first = Ok(());
        for i in 0..n {
            let Some(q) = st.batch.calls().get(i).copied() else {
                break;
            };
            let at = entries + (i * MULTICALL_ENTRY_SIZE + MulticallEntry::RESULT_OFFSET) as u64;
            // SAFETY: inside entry i, written above; the hypervisor wrote
            // the result field.
            let ret = unsafe { read_u64(at) } as i64;
            if let Err(e) = check(q.name, q.at, ret) {
                st.undo(q.tag);
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }

    /// Make room for `calls` deferred calls, flushing a full queue.
    fn reserve(&self, st: &mut State, calls: usize) -> Result<()> {
        if !st.batch.has_room(calls) {
            self.flush(st)?;
        }
        if st.batch.has_room(calls) {
            Ok(())
        } else {
            Err(PvError::Unsupported {
                backend: "xen",
                op: "an op needing more calls than one multicall holds",
            })
        }
    }

    /// Queue a call (room was reserved).
    fn push(st: &mut State, q: Queued) -> Result<()> {
        if st.batch.push(q) {
            Ok(())
        } else {
            Err(PvError::Unsupported {
                backend: "xen",
                op: "queueing past the multicall capacity",
            })
        }
    }

    /// End of an op that queued calls: send them now unless in lazy mode
    /// (Linux `xen_mc_issue(PARAVIRT_LAZY_CPU)`).
    fn issue(&self, st: &mut State) -> Result<()> {
        if st.lazy { Ok(()) } else { self.flush(st) }
    }

    /// Queue `update_va_mapping` for every page of `base .. base+bytes`:
    /// read-only (`writable == false`) or writable.
    fn remap(&self, op: &'static str, base: u64, bytes: u64, writable: bool) -> Result<()> {
        let (iter, count) = pages(base, bytes);
        if count > MAX_TABLE_PAGES {
            return Err(PvError::Unsupported {
                backend: "xen",
                op: "a descriptor table larger than 64 KiB",
            });
        }
        let mut frames = [(0u64, 0u64); MAX_TABLE_PAGES];
        for (slot, va) in frames.iter_mut().zip(iter) {
            *slot = (va, self.mfn(op, va)?);
        }
        let prot = PTE_PRESENT | if writable { PTE_RW } else { 0 };
        let mut st = self.state.lock();
        self.reserve(&mut st, count)?;
        for &(va, mfn) in frames.iter().take(count) {
            Self::push(
                &mut st,
                Queued::new(
                    "update_va_mapping",
                    nr::UPDATE_VA_MAPPING,
                    [va, (mfn << 12) | prot, UVMF_NONE, 0, 0, 0],
                    Tag::None,
                )
                .about(Slot::Table(TableKind::Ldt)),
            )?;
        }
        self.issue(&mut st)
    }

    /// `update_descriptor(maddr, desc)` now, after sending anything queued
    /// (Linux's `xen_write_gdt_entry` / `xen_write_ldt_entry` flush first
    /// and call directly).
    fn update_descriptor_now(
        &self,
        st: &mut State,
        at: Slot,
        maddr: u64,
        d: Descriptor,
    ) -> Result<()> {
        self.flush(st)?;
        // SAFETY: scalar arguments only.
        unsafe {
            self.call(
                "update_descriptor",
                at,
                nr::UPDATE_DESCRIPTOR,
                [maddr, d.0, 0, 0, 0],
            )
        }
        .map(|_| ())
    }

    /// The TLS shadow index of GDT slot address `addr` in the loaded GDT.
    fn tls_index(&self, st: &State, addr: u64) -> Option<usize> {
        let gdt = st.gdt?;
        (0..TLS_ENTRIES)
            .find(|&i| gdt.slot_addr(self.layout.tls_first as u32 + i as u32) == Ok(addr))
    }
}

impl<P: XenPlatform> DescriptorOps for XenOps<P> {
    fn name(&self) -> &'static str {
        "xen"
    }

    unsafe fn load_gdt(&self, gdt: &Gdt) -> Result<()> {
        let base = gdt.base();
        if !base.is_multiple_of(PAGE_SIZE) {
            // Xen takes whole frames: the GDT must start a page.
            return Err(PvError::MisalignedTable {
                table: TableKind::Gdt,
                base,
                align: PAGE_SIZE,
            });
        }
        let bytes = gdt.entries() as u64 * 8;
        let (iter, count) = pages(base, bytes);
        let mut frames = [(0u64, 0u64); MAX_TABLE_PAGES];
        for (slot, va) in frames.iter_mut().zip(iter) {
            *slot = (va, self.mfn("load_gdt", va)?);
        }
        let frames = frames.get(..count).unwrap_or(&[]);
        // The guest's own TLS descriptors, before Xen validates (and maybe
        // rewrites) the page.
        let mut tls = [None; TLS_ENTRIES];
        for (i, t) in tls.iter_mut().enumerate() {
            if let Ok(addr) = gdt.slot_addr(self.layout.tls_first as u32 + i as u32) {
                // SAFETY: inside the GDT, valid memory by the op contract.
                *t = Some(Descriptor(unsafe { read_u64(addr) }));
            }
        }
        let mut st = self.state.lock();
        // Each page read-only (Xen refuses a GDT frame mapped writable),
        // queued so several pages go in one multicall...
        self.reserve(&mut st, count)?;
        for &(va, mfn) in frames {
            Self::push(
                &mut st,
                Queued::new(
                    "update_va_mapping",
                    nr::UPDATE_VA_MAPPING,
                    [va, (mfn << 12) | PTE_PRESENT, UVMF_NONE, 0, 0, 0],
                    Tag::None,
                )
                .about(Slot::Table(TableKind::Gdt)),
            )?;
        }
        // ...and sent before set_gdt, which is never deferred.
        self.flush(&mut st)?;
        let (scratch, _) = self.scratch(count * 8)?;
        for (i, &(_, mfn)) in frames.iter().enumerate() {
            // SAFETY: slot i < 17 of the scratch buffer (>= 4096 bytes),
            // ours for this op (state lock held).
            unsafe { write_u64(scratch + i as u64 * 8, mfn) };
        }
        // SAFETY: arg 0 points at `count` frame numbers written above.
        unsafe {
            self.call(
                "set_gdt",
                Slot::Table(TableKind::Gdt),
                nr::SET_GDT,
                [scratch, gdt.entries() as u64, 0, 0, 0],
            )?
        };
        st.gdt = Some(*gdt);
        st.tls = tls;
        Ok(())
    }

    fn store_gdt(&self) -> Result<DescriptorTablePointer> {
        Ok(self
            .state
            .lock()
            .gdt
            .map(|g| g.pointer())
            .unwrap_or_default())
    }

    unsafe fn load_idt(&self, idt: &Idt) -> Result<()> {
        let mut st = self.state.lock();
        validate::idt(
            "load_idt",
            idt.entries(),
            // SAFETY: v < entries: gate v is inside the IDT, valid memory
            // by the op contract.
            |v| unsafe { read_gate(idt.base() + v as u64 * IDT_ENTRY_SIZE as u64) },
            self.ist_support(),
            "xen",
            &st.view(),
        )?;
        self.flush(&mut st)?;
        let (scratch, len) = self.scratch(MIN_SCRATCH)?;
        // Entries per call, leaving room for the terminator: 255 in a 4 KiB
        // buffer, so a full 256-gate IDT takes two calls (additive in Xen).
        let cap = (len / TRAP_INFO_SIZE - 1).min(256);
        let mut n = 0usize;
        let mut sent = false;
        let send = |n: usize| -> Result<()> {
            let end = scratch + (n * TRAP_INFO_SIZE) as u64;
            // SAFETY: n <= cap, so the terminator slot is inside the buffer.
            unsafe { write_words(end, &TrapInfo::TERMINATOR.to_words()) };
            // SAFETY: arg 0 points at n trap_info entries and a terminator.
            unsafe {
                self.call(
                    "set_trap_table",
                    Slot::Table(TableKind::Idt),
                    nr::SET_TRAP_TABLE,
                    [scratch, 0, 0, 0, 0],
                )
            }
            .map(|_| ())
        };
        for v in 0..idt.entries() {
            let addr = idt.base() + v as u64 * IDT_ENTRY_SIZE as u64;
            // SAFETY: gate v is inside the IDT, valid by the op contract.
            let gate = unsafe { read_gate(addr) };
            let Some(t) = self.trap_info(v as u8, gate) else {
                continue;
            };
            // SAFETY: n < cap, inside the buffer.
            unsafe { write_words(scratch + (n * TRAP_INFO_SIZE) as u64, &t.to_words()) };
            n += 1;
            if n == cap {
                send(n)?;
                sent = true;
                n = 0;
            }
        }
        if n > 0 || !sent {
            send(n)?;
        }
        st.idt = Some(*idt);
        Ok(())
    }

    fn store_idt(&self) -> Result<DescriptorTablePointer> {
        Ok(self
            .state
            .lock()
            .idt
            .map(|i| i.pointer())
            .unwrap_or_default())
    }

    /// Validated as on every backend (against the GDT shadow and the TSS
    /// descriptors `write_gdt_entry` kept from Xen), then nothing: Xen
    /// owns the TSS (Linux's `load_tr_desc` is a no-op under Xen PV).
    unsafe fn load_tr(&self, tss: Selector) -> Result<()> {
        let st = self.state.lock();
        validate::tss_selector("load_tr", tss, &st.view())?;
        Ok(())
    }

    /// 0, as Linux's `xen_store_tr`: a PV guest has no TR of its own (the
    /// CPU's `str` shows Xen's TSS selector).
    fn store_tr(&self) -> Result<Selector> {
        Ok(Selector::NULL)
    }

    unsafe fn load_ldt(&self, ldt: Option<&Ldt>) -> Result<()> {
        let (addr, ents) = match ldt {
            Some(l) => {
                if !l.base().is_multiple_of(PAGE_SIZE) {
                    // Xen maps LDT pages one by one: it must start a page.
                    return Err(PvError::MisalignedTable {
                        table: TableKind::Ldt,
                        base: l.base(),
                        align: PAGE_SIZE,
                    });
                }
                (l.base(), l.entries())
            }
            None => (0, 0),
        };
        let mut st = self.state.lock();
        self.reserve(&mut st, 1)?;
        let q = Queued::new(
            "mmuext_op",
            nr::MMUEXT_OP,
            // ops (resolved to the arena at flush), count, done, foreigndom.
            [0, 1, 0, DOMID_SELF, 0, 0],
            Tag::None,
        )
        .about(Slot::Table(TableKind::Ldt));
        if !st.batch.push_with_op(q, MmuextOp::set_ldt(addr, ents)) {
            return Err(PvError::Unsupported {
                backend: "xen",
                op: "queueing past the multicall capacity",
            });
        }
        if st.lazy {
            st.ldt = ldt.copied();
            return Ok(());
        }
        self.flush(&mut st)?;
        st.ldt = ldt.copied();
        Ok(())
    }

    fn store_ldt(&self) -> Result<Option<Ldt>> {
        Ok(self.state.lock().ldt)
    }

    unsafe fn write_gdt_entry(&self, gdt: &Gdt, index: u32, entry: GdtEntry) -> Result<()> {
        let addr = gdt.entry_addr(index, &entry)?;
        validate::gdt_entry("write_gdt_entry", index, entry, &self.state.lock().view())?;
        // (slot address, value) pairs, upper half of a 16-byte entry first
        // so the descriptor only becomes present (P is in the low half)
        // once complete.
        let (slots, n) = match entry {
            // A TSS or LDT descriptor: not sent, as Linux does (Xen refuses
            // them); kept as the guest's view of the slot for `load_tr`.
            GdtEntry::Single(d) if is_tss_or_ldt(d) => {
                self.state.lock().shadow_sys(index, d.0, 0);
                return Ok(());
            }
            GdtEntry::Single(d) => ([(addr, d), (0, Descriptor::NULL)], 1),
            GdtEntry::Double(sd) if is_tss_or_ldt(Descriptor(sd.low)) => {
                self.state.lock().shadow_sys(index, sd.low, sd.high);
                return Ok(());
            }
            // Anything else 16 bytes wide (a 64-bit call gate): both halves,
            // each checked by Xen (the upper half is a type-0 slot).
            GdtEntry::Double(sd) => (
                [(addr + 8, Descriptor(sd.high)), (addr, Descriptor(sd.low))],
                2,
            ),
        };
        let mut maddrs = [0u64; 2];
        for (m, (a, _)) in maddrs.iter_mut().zip(slots.iter()).take(n) {
            *m = self.maddr("write_gdt_entry", *a)?;
        }
        let mut st = self.state.lock();
        st.unshadow_sys(index, entry.slots());
        for ((a, d), m) in slots.iter().zip(maddrs).take(n) {
            let at = Slot::Entry(TableKind::Gdt, ((*a - gdt.base()) / 8) as u32);
            self.update_descriptor_now(&mut st, at, m, *d)?;
            if let Some(i) = self.tls_index(&st, *a)
                && let Some(s) = st.tls.get_mut(i)
            {
                *s = Some(*d);
            }
        }
        Ok(())
    }

    unsafe fn write_ldt_entry(&self, ldt: &Ldt, index: u32, entry: Descriptor) -> Result<()> {
        let addr = ldt.slot_addr(index)?;
        {
            let st = self.state.lock();
            // TI=1 targets resolve in the LDT being written.
            let view = View {
                ldt: Some(*ldt),
                ..st.view()
            };
            validate::ldt_entry("write_ldt_entry", index, entry, &view)?;
        }
        let maddr = self.maddr("write_ldt_entry", addr)?;
        let mut st = self.state.lock();
        self.update_descriptor_now(&mut st, Slot::Entry(TableKind::Ldt, index), maddr, entry)
    }

    unsafe fn write_idt_entry(&self, idt: &Idt, vector: u8, gate: IdtGate) -> Result<()> {
        let addr = idt.slot_addr(vector)?;
        let mut st = self.state.lock();
        validate::idt_gate(
            "write_idt_entry",
            vector,
            gate,
            self.ist_support(),
            "xen",
            &st.view(),
        )?;
        self.flush(&mut st)?;
        // SAFETY: `slot_addr` checked the 16-byte slot is inside `idt`,
        // writable by the op contract. High half first: P is in the low half.
        unsafe {
            write_u64(addr + 8, gate.high);
            write_u64(addr, gate.low);
        }
        // Tell Xen only if the slot is a gate of the loaded IDT (Linux
        // compares the address with the loaded range).
        let Some(loaded) = st.idt else {
            return Ok(());
        };
        let off = addr.wrapping_sub(loaded.base());
        // IDT slots are gates (IDT_ENTRY_SIZE), not trap_info records.
        let gate_size = IDT_ENTRY_SIZE as u64;
        let size = loaded.entries() as u64 * gate_size;
        if addr < loaded.base() || off >= size || !off.is_multiple_of(gate_size) {
            return Ok(());
        }
        let Some(t) = self.trap_info((off / gate_size) as u8, gate) else {
            // Not forwardable: Xen keeps its previous entry for the vector
            // (it has no per-vector clear), as in Linux.
            return Ok(());
        };
        let (scratch, _) = self.scratch(MIN_SCRATCH)?;
        // SAFETY: two entries (32 bytes) of the scratch buffer, ours for
        // this op (state lock held).
        unsafe {
            write_words(scratch, &t.to_words());
            write_words(scratch + 16, &TrapInfo::TERMINATOR.to_words());
        }
        // SAFETY: arg 0 points at one trap_info and a terminator.
        unsafe {
            self.call(
                "set_trap_table",
                Slot::Vector(vector),
                nr::SET_TRAP_TABLE,
                [scratch, 0, 0, 0, 0],
            )
        }
        .map(|_| ())
    }

    unsafe fn load_tls(&self, tls: &[Descriptor; TLS_ENTRIES]) -> Result<()> {
        validate::tls("load_tls", self.layout.tls_first as u32, tls)?;
        let mut st = self.state.lock();
        let gdt = st.gdt.ok_or(PvError::NoTableLoaded {
            op: "load_tls",
            table: TableKind::Gdt,
        })?;
        let first = self.layout.tls_first as u32;
        // All three slots inside the GDT, or nothing is sent.
        gdt.slot_addr(first + TLS_ENTRIES as u32 - 1)?;
        let mut sends = [None; TLS_ENTRIES];
        for (i, (send, d)) in sends.iter_mut().zip(tls).enumerate() {
            if st.tls.get(i).copied().flatten() != Some(*d) {
                let addr = gdt.slot_addr(first + i as u32)?;
                *send = Some(self.maddr("load_tls", addr)?);
            }
        }
        let count = sends.iter().filter(|s| s.is_some()).count();
        if count == 0 {
            return Ok(());
        }
        self.reserve(&mut st, count)?;
        for (i, (send, d)) in sends.iter().zip(tls).enumerate() {
            let Some(maddr) = *send else { continue };
            Self::push(
                &mut st,
                Queued::new(
                    "update_descriptor",
                    nr::UPDATE_DESCRIPTOR,
                    [maddr, d.0, 0, 0, 0, 0],
                    Tag::Tls(i),
                )
                .about(Slot::Entry(TableKind::Gdt, first + i as u32)),
            )?;
            if let Some(s) = st.tls.get_mut(i) {
                *s = Some(*d);
            }
        }
        self.issue(&mut st)
    }

    unsafe fn alloc_ldt(&self, ldt: &Ldt) -> Result<()> {
        self.remap("alloc_ldt", ldt.base(), ldt.entries() as u64 * 8, false)
    }

    unsafe fn free_ldt(&self, ldt: &Ldt) -> Result<()> {
        self.remap("free_ldt", ldt.base(), ldt.entries() as u64 * 8, true)
    }

    unsafe fn load_kernel_stack(&self, sp0: u64) -> Result<()> {
        validate::kernel_stack("load_kernel_stack", sp0)?;
        let mut st = self.state.lock();
        self.reserve(&mut st, 1)?;
        Self::push(
            &mut st,
            Queued::new(
                "stack_switch",
                nr::STACK_SWITCH,
                [KERNEL_DS, sp0, 0, 0, 0, 0],
                Tag::None,
            )
            .about(Slot::KernelStack),
        )?;
        self.issue(&mut st)
    }

    fn enter_lazy_cpu(&self) -> Result<()> {
        let mut st = self.state.lock();
        if st.lazy {
            return Err(PvError::LazyModeMismatch {
                op: "enter_lazy_cpu",
            });
        }
        st.lazy = true;
        Ok(())
    }

    fn leave_lazy_cpu(&self) -> Result<()> {
        let mut st = self.state.lock();
        if !st.lazy {
            return Err(PvError::LazyModeMismatch {
                op: "leave_lazy_cpu",
            });
        }
        st.lazy = false;
        self.flush(&mut st)
    }

    fn flush_lazy(&self) -> Result<()> {
        let mut st = self.state.lock();
        self.flush(&mut st)
    }
}
