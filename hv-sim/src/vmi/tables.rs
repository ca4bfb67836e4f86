//! The table calls: SetGDT, SetIDT, SetLDT, SetTR, GetGDT, GetIDT (GetLDT
//! and GetTR answer from the guest's view in the dispatch). Each checks the
//! whole table it loads, and the gates that will be in effect against the
//! tables that will be in effect ([`super::gates`]), before it changes
//! anything.

use super::gates::{self, Tables};
use super::machine::{
    EFFECTIVE_GDT_32, EFFECTIVE_GDT_64, EFFECTIVE_IDT_32, EFFECTIVE_IDT_64, EINVAL, Fail,
    GuestMemory, Inner, Outcome, VmiHypervisor, fail,
};
use super::policy::{self, GuestKind, Reject};
use super::state::Update;
use pvops::Selector;

/// The refusal for GDT slot `i` whose descriptor broke rule `r`: an upper
/// half's rule names the upper half's own slot, `i + 1`.
pub(super) fn gdt_refusal(op: &str, i: u64, r: Reject) -> Fail {
    match r {
        Reject::UpperHalf { .. } => fail(
            EINVAL,
            format!(
                "{op}: GDT[{}], the upper half of the 16-byte descriptor at GDT[{i}]: {r}",
                i + 1
            ),
        ),
        _ => fail(EINVAL, format!("{op}: GDT[{i}]: {r}")),
    }
}

impl<M: GuestMemory> VmiHypervisor<M> {
    /// SetGDT(&dtr): every slot of the new table is checked as the CPU can
    /// read it (a present 16-byte descriptor with its upper half; every
    /// other slot on its own, since any selector can name it), and the
    /// gates in effect must not reach the reserved entries that will follow
    /// the new table's.
    pub(super) fn set_gdt(&self, inner: &mut Inner, dtr: u64) -> Outcome {
        let k = self.kind;
        let p = self.read_dtr(dtr)?;
        let bytes = p.limit as u64 + 1;
        if !bytes.is_multiple_of(8) {
            return Err(fail(
                EINVAL,
                format!("SetGDT: limit {:#x} is not 8n-1", p.limit),
            ));
        }
        if !self.addr_ok(p.base)
            || !p
                .base
                .checked_add(bytes - 1)
                .is_some_and(|end| self.addr_ok(end))
        {
            return Err(fail(
                EINVAL,
                format!("SetGDT: base {:#x} is not a valid guest address", p.base),
            ));
        }
        let n = (bytes / 8) as usize;
        let mut raw = vec![0u8; n * 8];
        self.read(p.base, &mut raw, "the GDT")?;
        let raw: Vec<u64> = raw
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
            .collect();
        let mut eff = raw.clone();
        let mut i = 0;
        while i < n {
            if policy::is_double(k, raw[i]) && raw[i] & (1 << 47) != 0 {
                if i + 1 >= n {
                    return Err(fail(
                        EINVAL,
                        format!(
                            "SetGDT: GDT[{i}] is a 16-byte descriptor but the GDT ends at entry {}",
                            n - 1
                        ),
                    ));
                }
                let (lo, hi) = policy::check_gdt_entry(k, raw[i], Some(raw[i + 1]))
                    .map_err(|r| gdt_refusal("SetGDT", i as u64, r))?;
                eff[i] = lo;
                eff[i + 1] = hi.unwrap_or(raw[i + 1]);
                i += 2;
            } else {
                let (lo, _) = policy::check_gdt_entry(k, raw[i], None)
                    .map_err(|r| gdt_refusal("SetGDT", i as u64, r))?;
                eff[i] = lo;
                i += 1;
            }
        }
        let future = inner.future();
        let t = Tables {
            gdt: Some(&eff),
            ldt: &future.ldt,
            patch: &[],
        };
        gates::check_idt(k, &future.idt, &t, true).map_err(|(v, e)| {
            fail(
                EINVAL,
                format!("SetGDT: with this GDT of {n} entries, IDT[{v}]'s {e}"),
            )
        })?;
        // The loaded TR and LDTR must still name entries of the new GDT: the
        // effective tables are rebuilt from the guest's, so a selector past
        // its end would name nothing (or hv-sim's reserved entries). A CPU
        // keeps its cached TR; this is a deliberate addition
        // (VMI-SEMANTICS.md), found by the fuzzer.
        let tr_slots = if k == GuestKind::Vmi64 { 2 } else { 1 };
        if !future.tr.is_null() && future.tr.index() as usize + tr_slots > n {
            return Err(fail(
                EINVAL,
                format!(
                    "SetGDT: the loaded TR {} would fall outside a GDT of {n} entries; load another TR first",
                    future.tr
                ),
            ));
        }
        if !future.ldtr.is_null() && future.ldtr.index() as usize >= n {
            return Err(fail(
                EINVAL,
                format!(
                    "SetGDT: the loaded LDTR {} would fall outside a GDT of {n} entries; load another LDT first",
                    future.ldtr
                ),
            ));
        }
        inner.guest.gdtr = Some(p);
        let base = match (inner.eff_bases, k) {
            (Some((gdt, _)), _) => gdt,
            (None, GuestKind::Vmi64) => EFFECTIVE_GDT_64,
            (None, GuestKind::Vmi32) => EFFECTIVE_GDT_32,
        };
        Ok((0, vec![Update::Gdt { base, entries: eff }]))
    }

    /// SetIDT(&dtr): every gate checked, and its target against the GDT
    /// and LDT in effect.
    pub(super) fn set_idt(&self, inner: &mut Inner, dtr: u64) -> Outcome {
        let k = self.kind;
        let p = self.read_dtr(dtr)?;
        let gs = k.gate_size();
        let bytes = p.limit as u64 + 1;
        if !bytes.is_multiple_of(gs) || bytes / gs > 256 {
            return Err(fail(
                EINVAL,
                format!("SetIDT: limit {:#x} is not {gs}n-1 with n <= 256", p.limit),
            ));
        }
        if !self.addr_ok(p.base) {
            return Err(fail(
                EINVAL,
                format!("SetIDT: base {:#x} is not a valid guest address", p.base),
            ));
        }
        let mut raw = vec![0u8; bytes as usize];
        self.read(p.base, &mut raw, "the IDT")?;
        let future = inner.future();
        let t = Tables::of(future);
        let mut gates = Vec::with_capacity((bytes / gs) as usize);
        for (v, g) in raw.chunks_exact(gs as usize).enumerate() {
            let lo = u64::from_le_bytes(g[..8].try_into().unwrap_or_default());
            let hi = if gs == 16 {
                u64::from_le_bytes(g[8..].try_into().unwrap_or_default())
            } else {
                0
            };
            let g = policy::check_gate(k, lo, hi)
                .map_err(|r| fail(EINVAL, format!("SetIDT: IDT[{v}]: {r}")))?;
            gates::check_gate(k, g.0, &t)
                .map_err(|e| fail(EINVAL, format!("SetIDT: IDT[{v}]: {e}")))?;
            gates.push(g);
        }
        inner.guest.idtr = Some(p);
        let base = match (inner.eff_bases, k) {
            (Some((_, idt)), _) => idt,
            (None, GuestKind::Vmi64) => EFFECTIVE_IDT_64,
            (None, GuestKind::Vmi32) => EFFECTIVE_IDT_32,
        };
        Ok((0, vec![Update::Idt { base, gates }]))
    }

    /// SetLDT(selector): null unloads the LDT; otherwise the selector names
    /// a present LDT descriptor in the guest's GDT, whose entries are
    /// checked one by one, and the gates that name the LDT are re-checked
    /// against them.
    pub(super) fn set_ldt(&self, inner: &mut Inner, a0: u64) -> Outcome {
        let k = self.kind;
        if a0 > 0xFFFF {
            return Err(fail(EINVAL, format!("SetLDT: {a0:#x} is not a selector")));
        }
        let sel = Selector(a0 as u16);
        if sel.is_null() && sel.ti() == pvops::TableIndicator::Gdt {
            inner.guest.ldtr = Selector::NULL;
            inner.guest.ldt = None;
            return Ok((
                0,
                vec![Update::Ldt {
                    sel: Selector::NULL,
                    base: 0,
                    entries: Vec::new(),
                }],
            ));
        }
        let (lo, hi) = self.system_descriptor(inner, "SetLDT", sel)?;
        if (lo >> 40) & 0x1F != 0x2 {
            return Err(fail(
                EINVAL,
                format!(
                    "SetLDT: selector {sel} names a descriptor of type {:#x} (S<<4|type), expected an LDT (type 2)",
                    (lo >> 40) & 0x1F
                ),
            ));
        }
        let d = pvops::Descriptor(lo);
        let base = d.base() as u64 | (hi << 32);
        let entries = ((d.effective_limit() as u64 + 1) / 8).min(8192) as u32;
        let mut raw = vec![0u8; entries as usize * 8];
        self.read(base, &mut raw, "the LDT")?;
        let mut eff = Vec::with_capacity(entries as usize);
        for (i, c) in raw.chunks_exact(8).enumerate() {
            let d = u64::from_le_bytes(c.try_into().unwrap_or_default());
            eff.push(
                policy::check_ldt_entry(k, d)
                    .map_err(|r| fail(EINVAL, format!("SetLDT: LDT[{i}]: {r}")))?,
            );
        }
        let future = inner.future();
        let t = Tables {
            ldt: &eff,
            ..Tables::of(future)
        };
        gates::check_idt(k, &future.idt, &t, true)
            .map_err(|(v, e)| fail(EINVAL, format!("SetLDT: with this LDT, IDT[{v}]'s {e}")))?;
        inner.guest.ldtr = sel;
        inner.guest.ldt = Some((base, entries));
        Ok((
            0,
            vec![Update::Ldt {
                sel,
                base,
                entries: eff,
            }],
        ))
    }

    /// SetTR(selector): an available TSS among the guest's GDT entries,
    /// both halves checked, with a limit of at least 0x67.
    pub(super) fn set_tr(&self, inner: &mut Inner, a0: u64) -> Outcome {
        if a0 > 0xFFFF {
            return Err(fail(EINVAL, format!("SetTR: {a0:#x} is not a selector")));
        }
        let sel = Selector(a0 as u16);
        let (lo, hi) = self.system_descriptor(inner, "SetTR", sel)?;
        let st = (lo >> 40) & 0x1F;
        if st != 0x9 {
            let why = if st == 0xB {
                "this one is busy (0xb)"
            } else {
                "expected an available TSS (type 9)"
            };
            return Err(fail(
                EINVAL,
                format!(
                    "SetTR: selector {sel} names a descriptor of type {st:#x} (S<<4|type): {why}"
                ),
            ));
        }
        let d = pvops::Descriptor(lo);
        let limit = d.effective_limit();
        if limit < 0x67 {
            return Err(fail(
                EINVAL,
                format!("SetTR: TSS limit {limit:#x} is below 0x67, too small for a TSS"),
            ));
        }
        inner.guest.tr = sel;
        Ok((
            0,
            vec![Update::Tr {
                sel,
                base: d.base() as u64 | (hi << 32),
                limit,
            }],
        ))
    }

    /// GetGDT(&dtr): the guest's GDTR, as it set it.
    pub(super) fn get_gdt(&self, inner: &mut Inner, dtr: u64) -> Outcome {
        self.write_dtr(dtr, inner.guest.gdtr)?;
        Ok((0, Vec::new()))
    }

    /// GetIDT(&dtr): the guest's IDTR, as it set it.
    pub(super) fn get_idt(&self, inner: &mut Inner, dtr: u64) -> Outcome {
        self.write_dtr(dtr, inner.guest.idtr)?;
        Ok((0, Vec::new()))
    }

    /// Read the system descriptor `sel` names in the guest's GDT (both
    /// halves for a 64-bit guest) and check it against the policy.
    pub(super) fn system_descriptor(
        &self,
        inner: &Inner,
        op: &str,
        sel: Selector,
    ) -> Result<(u64, u64), Fail> {
        if sel.is_null() || sel.ti() != pvops::TableIndicator::Gdt {
            return Err(fail(
                EINVAL,
                format!("{op}: selector {sel} must name a GDT entry (not null, TI=0)"),
            ));
        }
        let Some(p) = inner.guest.gdtr else {
            return Err(fail(EINVAL, format!("{op}: no GDT loaded (SetGDT first)")));
        };
        let n = (p.limit as u64 + 1) / 8;
        let index = sel.index() as u64;
        let slots = if self.kind == GuestKind::Vmi64 { 2 } else { 1 };
        if index + slots > n {
            return Err(fail(
                EINVAL,
                format!(
                    "{op}: selector {sel} names GDT[{index}] but its {}-byte descriptor does not fit in the GDT ({n} entries)",
                    slots * 8
                ),
            ));
        }
        let lo = self.read_u64(p.base.wrapping_add(index * 8), "the GDT")?;
        let hi = if slots == 2 {
            self.read_u64(p.base.wrapping_add(index * 8 + 8), "the GDT")?
        } else {
            0
        };
        if lo & (1 << 47) == 0 {
            return Err(fail(
                EINVAL,
                format!("{op}: selector {sel} names a not-present descriptor"),
            ));
        }
        policy::check_gdt_entry(self.kind, lo, (slots == 2).then_some(hi))
            .map_err(|r| gdt_refusal(op, index, r))?;
        Ok((lo, hi))
    }
}
