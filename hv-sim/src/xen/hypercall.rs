//! `arch/x86/pv/hypercall.c`: the hypercall dispatcher, with the trace
//! event each call leaves.

use super::pagetables::ERESTART;
use super::*;

/// Name of hypercall `nr` (`"?"` when Xen has none).
pub fn hypercall_name(nr: u64) -> &'static str {
    match nr {
        0 => "set_trap_table",
        1 => "mmu_update",
        2 => "set_gdt",
        3 => "stack_switch",
        4 => "set_callbacks",
        5 => "fpu_taskswitch",
        6 => "sched_op_compat",
        7 => "platform_op",
        8 => "set_debugreg",
        9 => "get_debugreg",
        10 => "update_descriptor",
        12 => "memory_op",
        13 => "multicall",
        14 => "update_va_mapping",
        15 => "set_timer_op",
        16 => "event_channel_op_compat",
        17 => "xen_version",
        18 => "console_io",
        19 => "physdev_op_compat",
        20 => "grant_table_op",
        21 => "vm_assist",
        22 => "update_va_mapping_otherdomain",
        23 => "iret",
        24 => "vcpu_op",
        25 => "set_segment_base",
        26 => "mmuext_op",
        27 => "xsm_op",
        28 => "nmi_op",
        29 => "sched_op",
        30 => "callback_op",
        32 => "event_channel_op",
        33 => "physdev_op",
        34 => "hvm_op",
        35 => "sysctl",
        36 => "domctl",
        37 => "kexec_op",
        39 => "argo_op",
        40 => "xenpmu_op",
        41 => "dm_op",
        42 => "hypfs_op",
        _ => "?",
    }
}

/// Units of work (trap-table entries, multicall entries, `mmu_update`
/// requests, `mmuext_op` ops, page-table entries validated or released)
/// one invocation of a hypercall does before it is preempted with a
/// continuation: more than any bounded call needs (a 256-entry trap table,
/// a 1,024-entry multicall, a few tables), so only calls whose length the
/// guest's memory decides are cut.
pub const PREEMPT_BUDGET: u64 = 2048;

/// What the last [`XenDomain::hypercall`](super::XenDomain::hypercall)
/// cost, per invocation (the first call and each continuation the guest
/// re-executes): the measure the bounded-cost tests check (issue 10).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallCost {
    /// Invocations: 1, plus one per continuation.
    pub invocations: u64,
    /// The most units of work (entries, requests, ops, trap-table and
    /// page-table entries examined) one invocation did.
    pub max_units: u64,
    /// The most 8-byte words of guest RAM one invocation read or wrote
    /// (every RAM access of the model counts, whatever its purpose).
    pub max_ram_words: u64,
}

impl Inner {
    /// Record one finished top-level invocation in [`CallCost`].
    fn cost_invocation(&mut self, words_before: u64) {
        let words = self.ram.accesses().wrapping_sub(words_before);
        let c = &mut self.cost;
        c.invocations += 1;
        c.max_units = c.max_units.max(self.work);
        c.max_ram_words = c.max_ram_words.max(words);
    }

    /// `hypercall_preempt_check` after one unit of work: true once this
    /// invocation has done [`PREEMPT_BUDGET`] units. Xen preempts on a
    /// pending softirq (time); hv-sim on a fixed budget, so a long call is
    /// cut into bounded invocations at deterministic points.
    pub(super) fn preempt_check(&mut self) -> bool {
        self.work += 1;
        self.work >= PREEMPT_BUDGET
    }

    /// `hypercall_create_continuation(op, args)`: the guest will re-execute
    /// hypercall `op` with `args` (in a multicall: the entry's arguments
    /// are rewritten instead). Returns `op`, the call's return value.
    pub(super) fn continuation(&mut self, op: u64, args: [u64; 6]) -> i64 {
        self.preempted = Some((op, args));
        self.note(Change::Preempted { op, args });
        op as i64
    }

    pub(crate) fn dispatch(&mut self, v: usize, nr: u64, a: [u64; 6], depth: u32) -> i64 {
        let seq = self.seq;
        self.seq += 1;
        // The event goes in first (a multicall's sub-calls follow it); its
        // result and changes are filled in when it returns.
        let from = self.trace.next_change();
        let id = self.trace.push(TraceEvent::Call {
            seq,
            vcpu: v,
            depth,
            nr,
            name: hypercall_name(nr),
            abi: self.abi,
            args: a,
            result: 0,
            reason: None,
            changes: ChangeIds::default(),
        });
        let outer = self.owner.replace(id);
        let words = self.ram.accesses();
        let r = match self.run(v, nr, a, depth) {
            // A validation preempted under a call that has no continuation
            // of its own (VCPUOP_initialise's root, `arch_set_info_guest`):
            // Xen re-executes it with the same arguments.
            Err(f) if f.errno == ERESTART => Ok(self.continuation(nr, a)),
            r => r,
        };
        if depth == 0 {
            self.cost_invocation(words);
        }
        self.owner = outer;
        let to = self.trace.next_change();
        let (res, why) = match r {
            Ok(x) => (x, None),
            Err(f) => {
                let res = -f.errno;
                if self.strict {
                    self.strict_failures.push(format!(
                        "{}({}) = -{} ({res}): {}",
                        hypercall_name(nr),
                        decode_args(nr, self.abi, &a),
                        errno_name(res),
                        f.reason
                    ));
                }
                (res, Some(f.reason))
            }
        };
        if let Some(TraceEvent::Call {
            result,
            reason,
            changes,
            ..
        }) = self.trace.get_mut(id)
        {
            *result = res;
            *reason = why;
            *changes = ChangeIds {
                owner: id,
                ids: from..to,
            };
        }
        res
    }

    pub(super) fn run(&mut self, v: usize, nr: u64, a: [u64; 6], depth: u32) -> Hc {
        match nr {
            0 => self.set_trap_table(v, a[0]),
            1 => self.mmu_update(a[0], a[1] as u32, a[2], a[3] as u32),
            2 => self.set_gdt(v, a[0], a[1] as u32),
            3 => self.stack_switch(v, a[0], a[1]),
            10 => match self.abi {
                Abi::Pv64 => self.update_descriptor(a[0], a[1]),
                Abi::Pv32 => self.update_descriptor(a[0] | a[1] << 32, a[2] | a[3] << 32),
            },
            13 => self.multicall(v, a[0], a[1], depth),
            14 => match self.abi {
                Abi::Pv64 => self.update_va_mapping(a[0], a[1], a[2]),
                Abi::Pv32 => self.update_va_mapping(a[0], a[1] | a[2] << 32, a[3]),
            },
            24 => self.vcpu_op(a[0], a[1], a[2]),
            25 => self.set_segment_base(v, a[0] as u32, a[1]),
            26 => self.mmuext_op(v, a[0], a[1] as u32, a[2], a[3] as u32),
            18 => self.console_io(a[0] as u32, a[1] as u32, a[2]),
            29 => self.sched_op(a[0] as u32, a[1]),
            31 if self.version == XenVersion::V4_17 => Err(fail(
                ENOSYS,
                "hv-sim does not model hypercall 31 (xenoprof_op); Xen 4.17 has a handler for it",
            )),
            _ if hypercall_name(nr) != "?" => Err(fail(
                ENOSYS,
                format!(
                    "hv-sim does not model hypercall {nr} ({}); Xen has a handler for it",
                    hypercall_name(nr)
                ),
            )),
            _ => Err(fail(ENOSYS, format!("Xen has no hypercall number {nr:#x}"))),
        }
    }
}

impl XenDomain {
    /// Issue hypercall `nr` on vCPU `vcpu`. pv64: 64-bit number and
    /// arguments (rdi, rsi, rdx, r10, r8, r9). pv32: 32-bit values (ebx, ecx,
    /// edx, esi, edi); upper bits are ignored. Returns 0/positive or -errno.
    ///
    /// # Panics
    /// If `vcpu` is not a vCPU of this domain; in strict mode, on any
    /// rejection or violation (by design).
    pub fn hypercall(&self, vcpu: usize, nr: u64, args: [u64; 6]) -> i64 {
        let mut g = self.lock();
        assert!(vcpu < g.vcpus.len(), "hv-sim: no vCPU {vcpu}");
        g.strict_failures.clear();
        g.enter();
        let (nr, args) = match g.abi {
            Abi::Pv64 => (nr, args),
            Abi::Pv32 => (nr & 0xFFFF_FFFF, args.map(|a| a & 0xFFFF_FFFF)),
        };
        g.work = 0;
        g.cost = CallCost::default();
        let mut r = g.dispatch(vcpu, nr, args, 0);
        // A preempted call returns to the guest, which re-executes the
        // continuation Xen wrote into its registers: other vCPUs may run in
        // between, and each invocation does a bounded amount of work.
        while let Some((op, a)) = g.preempted.take() {
            drop(g);
            g = self.lock();
            g.work = 0;
            let a = match g.abi {
                Abi::Pv64 => a,
                Abi::Pv32 => a.map(|x| x & 0xFFFF_FFFF),
            };
            r = g.dispatch(vcpu, op, a, 0);
        }
        g.audit_if_suspect();
        g.finish_strict().map_or(r, |msg| {
            drop(g);
            panic!("{msg}")
        })
    }

    /// What the last [`XenDomain::hypercall`] cost, per invocation.
    pub fn last_call_cost(&self) -> CallCost {
        self.lock().cost
    }
}
