//! UpdateKernelStack: the ring-0 stack the CPU switches to on entry into
//! the guest kernel.

use super::machine::{EINVAL, Fail, GuestMemory, Inner, Outcome, VmiHypervisor, fail};
use super::state::Update;
use pvops::Selector;

impl<M: GuestMemory> VmiHypervisor<M> {
    /// UpdateKernelStack(selector, sp0). The first argument: Linux's
    /// vmi_load_sp0 (vmi_load_esp0 before 2.6.25) passes __KERNEL_DS, the
    /// kernel's stack segment, the value of the TSS's ss0; the 64-bit
    /// convention of pvops-vmi passes the TSS selector. Either is accepted;
    /// the value is recorded, the hypervisor's own stack segment is what
    /// the CPU uses. sp0 must be a valid guest address.
    pub(super) fn update_kernel_stack(&self, inner: &mut Inner, a0: u64, sp0: u64) -> Outcome {
        let k = self.kind;
        if a0 > 0xFFFF {
            return Err(fail(
                EINVAL,
                format!("UpdateKernelStack: {a0:#x} is not a selector"),
            ));
        }
        let sel = Selector(a0 as u16);
        let tr = inner.guest.tr;
        let is_tr =
            !tr.is_null() && sel.with_rpl(pvops::Ring::Ring0) == tr.with_rpl(pvops::Ring::Ring0);
        if !is_tr {
            self.stack_segment(inner, sel)?;
        }
        if !self.addr_ok(sp0) {
            return Err(fail(
                EINVAL,
                format!(
                    "UpdateKernelStack: sp0 {sp0:#x} is not a valid {} address",
                    k.name()
                ),
            ));
        }
        inner.guest.kernel_stack = Some((sel, sp0));
        Ok((0, vec![Update::KernelStack { sp0 }]))
    }

    /// UpdateKernelStack's first argument when it is not the loaded TR: a
    /// stack segment, which must name a present writable data segment among
    /// the guest's entries of the GDT it set (Linux's `__KERNEL_DS` always
    /// does: cpu_init loads the GDT before its first load_sp0).
    ///
    /// Deliberately stricter than Linux's client needs (it never sends
    /// anything else): a selector that is not a writable data segment could
    /// not serve as the kernel's stack segment on the next entry into the
    /// guest kernel (#TS during delivery, inside the hypervisor's world
    /// switch), and the hypervisor's reserved entries, which follow the
    /// guest's, are not the guest's to name. Refusing here names the rule.
    fn stack_segment(&self, inner: &Inner, sel: Selector) -> Result<(), Fail> {
        let what = format!(
            "UpdateKernelStack: selector {sel} is not the loaded TR {}, so it must be the kernel's stack segment (Linux passes __KERNEL_DS)",
            inner.guest.tr
        );
        if sel.is_null() || sel.ti() != pvops::TableIndicator::Gdt {
            return Err(fail(
                EINVAL,
                format!("{what}: a GDT selector (not null, TI=0)"),
            ));
        }
        let Some(p) = inner.guest.gdtr else {
            return Err(fail(
                EINVAL,
                format!("{what}, but no GDT is loaded (SetGDT first)"),
            ));
        };
        let n = (p.limit as u64 + 1) / 8;
        let index = sel.index() as u64;
        if index >= n {
            return Err(fail(
                EINVAL,
                format!(
                    "{what}: GDT[{index}] is past the guest's {n} entries (the hypervisor's reserved entries follow them)"
                ),
            ));
        }
        let d = self.read_u64(p.base.wrapping_add(index * 8), "the GDT")?;
        // Present (47), S (44), data (type bit 3 clear), writable (bit 1).
        let data_rw = d & (1 << 47) != 0 && d & (1 << 44) != 0 && (d >> 40) & 0xA == 0x2;
        if !data_rw {
            return Err(fail(
                EINVAL,
                format!("{what}: GDT[{index}] = {d:#018x} is not a present writable data segment"),
            ));
        }
        Ok(())
    }
}
